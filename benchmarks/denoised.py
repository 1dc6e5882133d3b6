"""Denoised smoothing on Fashion-MNIST at a CPU budget: an off-the-shelf LeNet behind denoisers.

For each sigma (default 0.25 and 0.5), certifies five base classifiers on the same test images:

1. ``bare``: a LeNet trained **without** noise (the off-the-shelf classifier), smoothed as it is;
2. ``mse``: the same LeNet behind a small DnCNN trained with ``DenoiserMSELoss(sigma)``;
3. ``stability``: the same LeNet behind that DnCNN fine-tuned with
   ``DenoiserStabilityLoss(sigma, lenet)`` (Salman et al.'s MSE-then-stability recipe);
4. ``ddpm``: the same LeNet behind a small DDPM (diffusers' ``UNet2DModel`` and
   ``DDPMScheduler``, 1,000 linear steps) trained on Fashion-MNIST with the standard
   noise-prediction objective (uniform timesteps), one-shot denoised by ``DiffusionDenoiser``;
   one DDPM serves both sigmas;
5. ``gaussian``: for reference, a LeNet trained with Gaussian augmentation at sigma.

Every model is trained here, from a fixed seed, on the first ``--train-limit`` training images
with Adam; the budgets (epochs, samples, CPU and wall seconds) are recorded. Certification is
CERTIFY through :func:`rsmooth.runner.certify_dataset` (resumable TSV files) on every
``10000 // --num-certify``-th test image. Writes into ``--results-dir`` (default
``docs/results/denoised``):

- ``sigma<s>/<model>.tsv`` (and their ``.json`` sidecars): the per-image results;
- ``results.json``: the table (certified accuracy at radii, ACR), budgets and settings;
- ``summary.rst.inc``: the tables included by ``docs/results.rst`` (rendered from
  ``results.json`` by :func:`render_summary`; a test checks that they agree);
- ``certified_accuracy.png``: certified accuracy against radius, one panel per sigma.

Checkpoints are kept in ``--work-dir``, so an interrupted run resumes (finished trainings and
complete results files are reused). The documented run (about 50 minutes on 2 shared CPU cores)::

    nice -n 10 python benchmarks/denoised.py

A smoke run::

    python benchmarks/denoised.py --train-limit 512 --num-certify 4 --n 100 --n0 10 \\
        --results-dir /tmp/dn --work-dir /tmp/dn
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rsmooth import GaussianAugmentationLoss, SmoothedClassifier
from rsmooth.datasets import load_dataset
from rsmooth.denoised import (
    DenoisedClassifier,
    DenoiserMSELoss,
    DenoiserStabilityLoss,
    DiffusionDenoiser,
)
from rsmooth.metrics import average_certified_radius, certified_accuracy, read_results
from rsmooth.models import lenet
from rsmooth.procedures import Certify
from rsmooth.runner import certify_dataset
from rsmooth.stats import max_certified_radius

ROOT = Path(__file__).resolve().parents[1]
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
MODELS = ("bare", "mse", "stability", "ddpm", "gaussian")
LABELS = {
    "bare": "LeNet without noise (off the shelf)",
    "mse": "same LeNet + DnCNN (MSE)",
    "stability": "same LeNet + DnCNN (MSE then stability)",
    "ddpm": "same LeNet + DDPM (one shot)",
    "gaussian": "LeNet with Gaussian augmentation",
}


class DnCNN(nn.Module):
    """A small DnCNN (Zhang et al., 2017), the denoiser family of Salman et al.: residual output."""

    def __init__(self, depth: int = 4, channels: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [
                nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def small_unet() -> nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=28,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )


def ddpm_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")


# ---------------------------------------------------------------------------- training
def _train(
    name: str,
    model: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: TensorDataset,
    *,
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """Adam on ``step(x, y)`` (a scalar loss) for ``epochs``; returns the budget record."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    loader = DataLoader(
        data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            loss = step(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(x), count + len(x)
        print(f"[{name}] epoch {epoch + 1}/{epochs}: loss {total / count:.4f}", flush=True)
    model.eval()
    return {
        "epochs": epochs,
        "samples": epochs * len(data),
        "batch": batch,
        "lr": lr,
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "wall_seconds": round(time.perf_counter() - wall, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _cached(
    work: Path, name: str, build: Callable[[], nn.Module], train: Callable[[nn.Module], dict]
) -> tuple[nn.Module, dict]:
    """Train ``build()`` with ``train`` unless ``work/name.pt`` holds it already."""
    path = work / f"{name}.pt"
    model = build()
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        return model, saved["budget"]
    budget = train(model)
    work.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "budget": budget}, path)
    return model, budget


def train_models(args: argparse.Namespace, train: TensorDataset) -> tuple[dict, dict]:
    """All the models of the comparison, and their training budgets by name."""
    work = Path(args.work_dir)
    seed = args.seed
    models: dict[str, nn.Module] = {}
    budgets: dict[str, dict] = {}
    ce = nn.CrossEntropyLoss()

    def classifier_training(loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]):
        def run(model: nn.Module) -> dict:
            return _train(
                "classifier", model, lambda x, y: loss(model, x, y), train,
                epochs=args.classifier_epochs, lr=1e-3, batch=128, seed=seed,
            )  # fmt: skip

        return run

    def seeded(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            torch.manual_seed(seed)
            return factory()

        return build

    models["lenet"], budgets["lenet"] = _cached(
        work, "lenet", seeded(lenet), classifier_training(lambda m, x, y: ce(m(x), y))
    )
    clean = models["lenet"].eval()
    for sigma in args.sigmas:
        g = torch.Generator().manual_seed(seed + 1)
        gaussian = GaussianAugmentationLoss(sigma, generator=g)
        models[f"gaussian-{sigma}"], budgets[f"gaussian-{sigma}"] = _cached(
            work, f"gaussian-{sigma}", seeded(lenet), classifier_training(gaussian)
        )

        mse = DenoiserMSELoss(sigma, generator=torch.Generator().manual_seed(seed + 2))

        def train_mse(model: nn.Module, mse: DenoiserMSELoss = mse) -> dict:
            return _train(
                f"mse-{sigma}", model, lambda x, y: mse(model, x, y), train,
                epochs=args.denoiser_epochs, lr=1e-3, batch=128, seed=seed,
            )  # fmt: skip

        models[f"mse-{sigma}"], budgets[f"mse-{sigma}"] = _cached(
            work, f"mse-{sigma}", seeded(DnCNN), train_mse
        )
        stab = DenoiserStabilityLoss(
            sigma, clean, generator=torch.Generator().manual_seed(seed + 3)
        )
        mse_state = models[f"mse-{sigma}"].state_dict()

        def from_mse(state: dict = mse_state) -> nn.Module:
            model = DnCNN()
            model.load_state_dict(state)
            return model

        def train_stab(model: nn.Module, stab: DenoiserStabilityLoss = stab) -> dict:
            return _train(
                f"stability-{sigma}", model, lambda x, y: stab(model, x, y), train,
                epochs=args.stability_epochs, lr=1e-3, batch=128, seed=seed,
            )  # fmt: skip

        models[f"stability-{sigma}"], stab_budget = _cached(
            work, f"stability-{sigma}", from_mse, train_stab
        )
        # the stability denoiser's budget includes its MSE pre-training
        mse_budget = budgets[f"mse-{sigma}"]
        budgets[f"stability-{sigma}"] = {
            **stab_budget,
            "pretraining": "the MSE denoiser's",
            "total_cpu_seconds": round(stab_budget["cpu_seconds"] + mse_budget["cpu_seconds"], 1),
            "total_wall_seconds": round(
                stab_budget["wall_seconds"] + mse_budget["wall_seconds"], 1
            ),
        }

    scheduler = ddpm_scheduler()
    alphas = scheduler.alphas_cumprod

    def train_ddpm(unet: nn.Module) -> dict:
        g = torch.Generator().manual_seed(seed + 4)

        def step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = torch.randint(0, len(alphas), (len(x),), generator=g)
            eps = torch.randn(x.shape, generator=g)
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * (2 * x - 1) + (1 - a).sqrt() * eps
            return nn.functional.mse_loss(unet(x_t, t).sample, eps)

        return _train(
            "ddpm", unet, step, train, epochs=args.ddpm_epochs, lr=1e-3, batch=64, seed=seed
        )

    models["ddpm"], budgets["ddpm"] = _cached(work, "ddpm", seeded(small_unet), train_ddpm)
    models["ddpm-scheduler"] = scheduler
    return models, budgets


# ---------------------------------------------------------------------------- certification
def base_classifiers(models: dict, sigma: float) -> dict[str, nn.Module]:
    """The five base classifiers at ``sigma``, by row name."""
    clean = models["lenet"]
    ddpm = DiffusionDenoiser(models["ddpm"], models["ddpm-scheduler"], sigma=sigma)
    return {
        "bare": clean,
        "mse": DenoisedClassifier(models[f"mse-{sigma}"], clean),
        "stability": DenoisedClassifier(models[f"stability-{sigma}"], clean),
        "ddpm": DenoisedClassifier(ddpm, clean),
        "gaussian": models[f"gaussian-{sigma}"],
    }


def certify_all(args: argparse.Namespace, models: dict, test: TensorDataset) -> dict:
    results_dir = Path(args.results_dir)
    skip = max(1, len(test) // args.num_certify)
    stop = skip * args.num_certify
    record: dict[str, Any] = {}
    for sigma in args.sigmas:
        for name, model in base_classifiers(models, sigma).items():
            out = results_dir / f"sigma{sigma}" / f"{name}.tsv"
            out.parent.mkdir(parents=True, exist_ok=True)
            smoothed = SmoothedClassifier(model, sigma=sigma, batch_size=args.batch)
            wall, cpu = time.perf_counter(), time.process_time()
            print(f"[{name}, sigma={sigma}] certifying -> {out}", flush=True)
            certify_dataset(
                smoothed, test, out, Certify(n=args.n, n0=args.n0, alpha=args.alpha), seed=args.seed,
                skip=skip, stop=stop, progress=False,
            )  # fmt: skip
            rows = read_results(out)
            record[f"{name}-{sigma}"] = {
                "cpu_seconds": round(time.process_time() - cpu, 1),
                "wall_seconds": round(time.perf_counter() - wall, 1),
                "rows": len(rows),
            }
            if extra := getattr(getattr(model, "denoiser", None), "timestep", None):
                record[f"{name}-{sigma}"]["timestep"] = extra
                record[f"{name}-{sigma}"]["repr"] = model.denoiser.extra_repr()
    return record


def table(results_dir: Path, sigmas: Sequence[float]) -> dict[str, dict[str, dict[str, Any]]]:
    """Certified accuracy (%) at RADII and ACR per sigma and model, from the results files."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sigma in sigmas:
        out[str(sigma)] = {}
        for name in MODELS:
            path = results_dir / f"sigma{sigma}" / f"{name}.tsv"
            if not path.is_file():
                continue
            rows = read_results(path)
            accuracy = certified_accuracy(rows, radii=RADII)
            out[str(sigma)][name] = {
                "images": len(rows),
                "acr": round(average_certified_radius(rows), 4),
                "certified_accuracy": {
                    f"{r:g}": round(100 * float(a), 1) for r, a in zip(RADII, accuracy, strict=True)
                },
            }
    return out


def _csv(*cells: object) -> str:
    """One csv-table row, quoting the cells that hold a comma."""
    return "   " + ",".join(f'"{c}"' if "," in str(c) else str(c) for c in cells)


def render_summary(results: dict[str, Any]) -> str:
    """The reStructuredText tables of ``docs/results.rst`` from ``results.json``'s contents."""
    settings = results["settings"]
    lines = [
        ".. csv-table:: Certified accuracy (%) at L2 radius r, and the average certified radius "
        "(ACR). Rows 1 to 4 certify the same off-the-shelf LeNet.",
        "   :header-rows: 1",
        "",
        _csv("σ", "base classifier", "ACR", *(f"r = {r:g}" for r in RADII)),
    ]
    for sigma, rows in results["table"].items():
        for name, row in rows.items():
            cells = [f"{row['certified_accuracy'][f'{r:g}']:.1f}" for r in RADII]
            lines.append(_csv(sigma, LABELS[name], f"{row['acr']:.3f}", *cells))
    caps = ", ".join(
        f"{max_certified_radius(settings['n'], settings['alpha'], float(s)):.3f} at σ = {s}"
        for s in results["table"]
    )
    lines += [
        "",
        f"Certification: CERTIFY on {settings['num_certify']} Fashion-MNIST test images (every "
        f"{settings['skip']}-th), N = {settings['n']:,}, N0 = {settings['n0']}, α = "
        f"{settings['alpha']}, seed {settings['seed']}. The largest radius that N samples can "
        f"certify is {caps}; beyond it every entry is 0. With {settings['num_certify']} images "
        "an entry near 50% has a sampling error of about "
        f"±{100 * (0.25 / settings['num_certify']) ** 0.5:.0f} points (one standard deviation).",
        "",
        ".. csv-table:: Training budget of each model (Adam, learning rate 10⁻³, on the first "
        f"{settings['train_images']:,} Fashion-MNIST training images; CPU seconds summed over "
        "threads)",
        "   :header-rows: 1",
        "",
        _csv("model", "epochs", "samples seen", "parameters", "CPU s", "wall s"),
    ]
    for key, budget in results["budgets"].items():
        lines.append(
            _csv(
                key,
                budget["epochs"],
                f"{budget['samples']:,}",
                f"{budget['parameters']:,}",
                f"{budget['cpu_seconds']:.0f}",
                f"{budget['wall_seconds']:.0f}",
            )
        )
    lines += [
        "",
        ".. csv-table:: Certification wall time (seconds, all the images): the denoisers' cost",
        "   :header-rows: 1",
        "",
        _csv("base classifier", *(f"σ = {s}" for s in results["table"])),
    ]
    for name in MODELS:
        cells = [
            results["certification"].get(f"{name}-{s}", {}).get("wall_seconds", 0)
            for s in results["table"]
        ]
        lines.append(_csv(LABELS[name], *(f"{c:.0f}" for c in cells)))
    lines += [
        "",
        "The stability denoisers start from the MSE denoisers of the same σ (their total budget is "
        "the sum of the two rows). One DDPM (1,000 linear steps, trained on all timesteps) serves "
        "both σ; "
        + "; ".join(
            f"at σ = {s} it is called at timestep {v['timestep']} (``{v['repr']}``)"
            for s, v in results["ddpm_timesteps"].items()
        )
        + ".",
        "",
        f"- Command: ``{results['command']}``",
        f"- Machine: {results['machine']}, shared with other jobs (wall times are indicative).",
        "",
    ]
    return "\n".join(lines)


def plot(results_dir: Path, sigmas: Sequence[float], n: int, alpha: float) -> bool:
    try:
        from matplotlib.figure import Figure

        from rsmooth.plotting import plot_certified_accuracy, save_figure
    except ImportError as error:
        print(f"no plot written: {error}")
        return False
    figure = Figure(figsize=(5.0 * len(sigmas), 5.0))
    axes = figure.subplots(1, len(sigmas), squeeze=False)[0]
    for ax, sigma in zip(axes, sigmas, strict=True):
        results = {
            LABELS[name]: read_results(results_dir / f"sigma{sigma}" / f"{name}.tsv")
            for name in MODELS
            if (results_dir / f"sigma{sigma}" / f"{name}.tsv").is_file()
        }
        plot_certified_accuracy(
            results, ax=ax, max_radius=2.4 * float(sigma), title=f"Fashion-MNIST, σ = {sigma}"
        )
        handles, labels = ax.get_legend_handles_labels()
        ax.get_legend().remove()
    # one legend under the panels: the models, then each panel's radius cap
    figure.legend(handles[: len(MODELS)], labels[: len(MODELS)], loc="lower center", ncol=3)
    figure.tight_layout(rect=(0, 0.13, 1, 1))
    save_figure(figure, results_dir / "certified_accuracy.png")
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--train-limit", type=int, default=20_000)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--denoiser-epochs", type=int, default=2)
    parser.add_argument("--stability-epochs", type=int, default=1)
    parser.add_argument("--ddpm-epochs", type=int, default=1)
    parser.add_argument("--num-certify", type=int, default=100)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--n0", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch", type=int, default=500, help="SmoothedClassifier batch_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--results-dir", default=str(ROOT / "docs" / "results" / "denoised"))
    parser.add_argument("--work-dir", default="/tmp/rsmooth-denoised")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="only rewrite summary.rst.inc and the plot from results.json and the results files",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    results_dir = Path(args.results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.render_only:
        results = json.loads((results_dir / "results.json").read_text())
        (results_dir / "summary.rst.inc").write_text(render_summary(results))
        plot(results_dir, results["settings"]["sigmas"], args.n, args.alpha)
        return 0
    train = load_dataset("fashion-mnist", "train", root=args.data_root, limit=args.train_limit)
    test = load_dataset("fashion-mnist", "test", root=args.data_root)
    started = time.perf_counter()
    models, budgets = train_models(args, train)
    certify = certify_all(args, models, test)
    skip = max(1, len(test) // args.num_certify)
    results = {
        "command": shlex.join(["python", "benchmarks/denoised.py", *argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}",
        "settings": {
            "sigmas": args.sigmas,
            "train_images": len(train),
            "num_certify": len(range(0, min(len(test), skip * args.num_certify), skip)),
            "skip": skip,
            "n": args.n,
            "n0": args.n0,
            "alpha": args.alpha,
            "seed": args.seed,
            "batch": args.batch,
        },
        "budgets": budgets,
        "certification": certify,
        "ddpm_timesteps": {
            str(s): {
                "timestep": certify[f"ddpm-{s}"]["timestep"],
                "repr": certify[f"ddpm-{s}"]["repr"],
            }
            for s in args.sigmas
            if "timestep" in certify.get(f"ddpm-{s}", {})
        },
        "table": table(results_dir, args.sigmas),
        "total_wall_seconds": round(time.perf_counter() - started, 1),
    }
    (results_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (results_dir / "summary.rst.inc").write_text(render_summary(results))
    plot(results_dir, args.sigmas, args.n, args.alpha)
    print(render_summary(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
