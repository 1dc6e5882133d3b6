"""The sampling engine: one seam between rsmooth's procedures and the user's model.

Every procedure (CERTIFY, PREDICT, the counts, the sequential radius grid, the soft smoothed
classifier) turns inputs into results through the same four parts:

- :mod:`~rsmooth._engine.streams`: every seed rsmooth derives, and the noise of sample ``s`` of an
  input's stream (it depends only on the input's seed, the stream and ``s``);
- :mod:`~rsmooth._engine.sampler`: runs a procedure's per-input jobs over a stream of inputs,
  filling every forward batch across inputs and counting votes on the device;
- :mod:`~rsmooth._engine.batching`: how many rows a forward pass gets (a fixed default per device,
  or the opt-in timed search), and what an out-of-memory error does;
- :mod:`~rsmooth._engine.forward`: the user's model on a batch, as written (layout, compile,
  autocast, output checks, hints for the usual mistakes).

:mod:`~rsmooth._engine.progress` shows the progress of long work. Nothing here knows about
certificates or results files: those belong to :mod:`rsmooth.procedures`,
:mod:`rsmooth.sequential` and :mod:`rsmooth.results`.
"""
