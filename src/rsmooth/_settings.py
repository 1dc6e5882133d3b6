"""Validated settings: one rule for :class:`~rsmooth.SmoothedClassifier`, the criteria and attacks.

Every hyperparameter a user can pass to a constructor is a :class:`Setting` of its class: a data
descriptor whose check runs on *every* assignment, in ``__init__`` and afterwards. A refused value
raises the constructor's own error (``TypeError`` or ``ValueError`` naming the argument and the
value) and leaves the old value in place. An object may define ``_setting_changed(name)``, called
after a reassignment, to drop what depended on the old value (a compiled model, a cached layout
choice); if it raises, the old value is put back, so a refused change changes nothing.

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

from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

__all__ = ["Setting"]

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
