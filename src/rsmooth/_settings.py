"""Validated settings: one rule for :class:`~rsmooth.SmoothedClassifier`, the criteria and attacks.

Every hyperparameter a user can pass to a constructor is a :class:`Setting` of its class: a data
descriptor whose check runs on *every* assignment, in ``__init__`` and afterwards. A refused value
raises the constructor's own error (``TypeError`` or ``ValueError`` naming the argument and the
value) and leaves the old value in place. An object may define ``_setting_changed(name)``, called
after a reassignment, to drop what depended on the old value (a compiled model, a cached layout
choice); if it raises, the old value is put back, so a refused change changes nothing.

The three kinds of object are also :class:`Sealed`: once construction is over, assigning a public
attribute they do not have raises ``AttributeError`` with the nearest name, so a misspelt setting
(``smoothed.batchsize = 64``) is never silently ignored.

Example:
    >>> from rsmooth._validation import check_positive
    >>> class Noise:
    ...     sigma = Setting(check_positive)
    ...     def __init__(self, sigma):
    ...         self.sigma = sigma
    >>> noise = Noise(0.5)
    >>> noise.sigma = 0.25
    >>> noise.sigma = -1.0
    Traceback (most recent call last):
    ...
    ValueError: sigma must be positive and finite, got -1.0
    >>> noise.sigma
    0.25
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["Sealed", "Setting"]

T = TypeVar("T")
_UNSET = object()


class Setting(Generic[T]):
    """A public attribute checked by ``check(name, value) -> value`` whenever it is assigned.

    Args:
        check: Validates and returns the value (possibly converted), or raises ``TypeError`` /
            ``ValueError`` naming ``name`` and the value.
    """

    def __init__(self, check: Callable[[str, Any], T]) -> None:
        self.check = check
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, objtype: type | None = None) -> Setting[T]: ...

    @overload
    def __get__(self, obj: object, objtype: type | None = None) -> T: ...

    def __get__(self, obj: object | None, objtype: type | None = None) -> T | Setting[T]:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(
                f"{type(obj).__name__} has no value for {self.name!r} yet"
            ) from None

    def __set__(self, obj: object, value: Any) -> None:
        checked = self.check(self.name, value)
        old = obj.__dict__.get(self.name, _UNSET)
        obj.__dict__[self.name] = checked
        changed = getattr(obj, "_setting_changed", None)
        if old is _UNSET or changed is None:
            return
        try:
            changed(self.name)
        except BaseException:
            obj.__dict__[self.name] = old
            raise


class Sealed:
    """Mixin: after the outermost ``__init__`` returns, new public attributes are refused.

    Put it first among the bases (``class Criterion(Sealed, nn.Module)``) so that its
    ``__setattr__`` runs before the other base's. Existing attributes (settings, submodules,
    anything set during construction) can still be reassigned; names starting with ``_`` are
    always allowed.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            cls.__init__ = _sealing(init)  # type: ignore[method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            not name.startswith("_")
            and self.__dict__.get("_sealed", False)
            and not hasattr(self, name)
        ):
            known = [k for k in dir(self) if not k.startswith("_")]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r}{hint} (new attributes are "
                "refused once it is built, because a misspelt setting would otherwise be "
                "silently ignored)"
            )
        super().__setattr__(name, value)


def _sealing(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an ``__init__``: once the outermost one returns, new attributes are refused."""

    @functools.wraps(init)
    def wrapper(self: Sealed, *args: Any, **kwargs: Any) -> None:
        depth = self.__dict__.get("_init_depth", 0)
        object.__setattr__(self, "_init_depth", depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "_init_depth", depth)
        if depth == 0:
            object.__setattr__(self, "_sealed", True)

    return wrapper
