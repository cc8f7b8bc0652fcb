"""Input validation shared by every public function.

Each helper raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) with a message
that names the argument, what was found and what is allowed. Nothing here uses ``assert``, so
the checks survive ``python -O``. Public functions call these before any kernel runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "as_array",
    "check_finite",
    "check_int",
    "check_option",
    "check_out_path",
    "check_positive",
    "check_nonnegative",
    "check_time_grid",
    "check_jitted",
]


def _shape_text(shape: Iterable[int | None]) -> str:
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


def as_array(
    name: str,
    x: Any,
    *,
    ndim: int | tuple[int, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
    dtype: Any = np.float64,
    finite: bool = True,
) -> np.ndarray:
    """Return ``x`` as a C-contiguous array of ``dtype``, checking its rank, shape and values.

    ``shape`` entries that are ``None`` match any length. With ``finite`` the array must hold no
    NaN or inf.
    """
    try:
        kind = np.asarray(x).dtype.kind
        if np.dtype(dtype).kind == "f" and kind in "cSU":
            what = "complex" if kind == "c" else "string"
            raise TypeError(f"got {what} values, real numbers are needed")
        arr = np.ascontiguousarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{name} must be convertible to a {np.dtype(dtype).name} array: {exc}"
        ) from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise ValueError(
                f"{name} must have {' or '.join(map(str, allowed))} dimension(s), "
                f"got shape {arr.shape}"
            )
    if shape is not None:
        ok = arr.ndim == len(shape) and all(
            s is None or s == a for s, a in zip(shape, arr.shape, strict=True)
        )
        if not ok:
            raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {arr.shape}")
    if finite and np.issubdtype(arr.dtype, np.inexact):
        check_finite(name, arr)
    return arr


def check_finite(name: str, arr: np.ndarray) -> None:
    """Raise if ``arr`` holds NaN or inf, naming the first bad index."""
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.unravel_index(int(np.argmax(bad)), arr.shape) if arr.ndim else ()
        raise ValueError(
            f"{name} must be finite, found {int(bad.sum())} NaN/inf value(s) "
            f"(first at index {tuple(int(i) for i in idx)})"
        )


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising unless it is finite and > 0."""
    v = _scalar(name, value)
    if not v > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v


def check_nonnegative(name: str, value: Any) -> float:
    """Return ``value`` as a float, raising unless it is finite and >= 0."""
    v = _scalar(name, value)
    if not v >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _scalar(name: str, value: Any) -> float:
    if isinstance(value, bool) or not np.isscalar(value) and np.ndim(value) != 0:
        raise ValueError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an int, raising unless it is integral and >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def check_option(name: str, value: Any, allowed: Iterable[str] | Mapping[str, Any]) -> str:
    """Raise ``ValueError("name must be one of [...], got 'x'")`` unless ``value`` is allowed."""
    options = list(allowed)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_time_grid(name: str, t: Any, *, min_len: int = 2) -> np.ndarray:
    """Return a strictly increasing, finite float64 time grid of at least ``min_len`` points."""
    arr = as_array(name, t, ndim=1)
    if arr.size < min_len:
        raise ValueError(f"{name} must hold at least {min_len} time points, got {arr.size}")
    if arr.size > 1 and not np.all(np.diff(arr) > 0):
        k = int(np.argmax(~(np.diff(arr) > 0)))
        raise ValueError(
            f"{name} must be strictly increasing, but {name}[{k + 1}] = {arr[k + 1]!r} "
            f"<= {name}[{k}] = {arr[k]!r}"
        )
    return arr


def check_out_path(name: str, path: Any, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Check that an output file can be written at ``path``.

    The parent folder must exist and be writable. An existing file is refused unless
    ``overwrite`` (replace it) or ``resume`` (continue it) is set; ``resume`` needs the file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{name}: folder {str(parent)!r} does not exist, cannot write {str(p)!r}")
    if p.is_dir():
        raise ValueError(f"{name}: {str(p)!r} is a folder, expected a file path")
    if resume:
        if not p.exists():
            raise ValueError(f"{name}: cannot resume, {str(p)!r} does not exist")
        if not os.access(p, os.W_OK):
            raise ValueError(f"{name}: cannot resume, {str(p)!r} is not writable")
        return p
    if p.exists() and not overwrite:
        raise ValueError(
            f"{name}: {str(p)!r} already exists; pass overwrite=True (--overwrite) to replace "
            "it or resume=True (--resume) to continue it"
        )
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{name}: folder {str(parent)!r} is not writable, cannot write {str(p)!r}")
    return p


def check_jitted(name: str, f: Any) -> Any:
    """Raise ``TypeError`` unless ``f`` is a Numba ``@njit`` dispatcher."""
    from numba.core.registry import CPUDispatcher

    if not isinstance(f, CPUDispatcher):
        raise TypeError(
            f"{name} must be a Numba-jitted function (decorate it with @numba.njit), "
            f"got {type(f).__name__}"
        )
    return f
