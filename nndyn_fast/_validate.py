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
    "available_memory",
    "check_bool",
    "check_finite",
    "check_int",
    "check_memory",
    "check_real",
    "check_seed",
    "check_size",
    "check_steps",
    "check_option",
    "check_out_path",
    "check_positive",
    "check_nonnegative",
    "check_time_grid",
    "check_jitted",
    "load_npy",
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
    if isinstance(value, (bool, str, bytes)) or not np.isscalar(value) and np.ndim(value) != 0:
        raise ValueError(f"{name} must be a real number, got {_short(value)}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


# every integer ends up in an int64 (numpy arrays, Numba kernels): larger ones are refused here
INT64_MAX = 2**63 - 1


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as an int, raising unless it is integral and in [minimum, maximum].

    Integral floats (``3.0``) are accepted; ``maximum`` defaults to the int64 range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer, got {_short(value)}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    top = INT64_MAX if maximum is None else maximum
    if v > top:
        raise ValueError(f"{name} must be an integer <= {top}, got {v:.6g}")
    return v


# the most steps a run may take: step counters are int64 in the kernels
STEP_LIMIT = 2**62


def check_steps(name: str, value: Any) -> int:
    """A number of steps derived from the arguments (e.g. ``t_end / dt``), refused unless it is
    finite and at most 2^62; returns ``int(value)``. ``name`` says how it was computed."""
    v = float(value)
    if not np.isfinite(v) or v > STEP_LIMIT:
        raise ValueError(
            f"{name} gives {v:.6g} steps, more than the {STEP_LIMIT:.3g} (2^62) a run can take; "
            "use a larger step or a shorter run"
        )
    return int(v)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` as a bool, raising unless it is True or False (or a numpy bool)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {_short(value)}")
    return bool(value)


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite float, raising unless it lies in the given interval.

    ``low``/``high`` are the bounds (``None``: unbounded), closed unless ``low_open`` /
    ``high_open``; the message states the interval, e.g. "p must be in [0, 1], got 2.0".
    """
    v = _scalar(name, value)
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if below or above:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise ValueError(f"{name} must be in {lo}, {hi}, got {_short(value)}")
    return v


def check_seed(name: str, seed: Any, *, allow_none: bool = False) -> Any:
    """Check a seed for ``np.random.default_rng``: an integer >= 0, a non-empty sequence of
    them, or a ``numpy.random.SeedSequence`` (``None`` only with ``allow_none``).

    Returns an int for an integer seed and the seed itself otherwise.
    """
    allowed = "an integer >= 0, a sequence of integers >= 0 or a numpy.random.SeedSequence" + (
        " (or None)" if allow_none else ""
    )
    if seed is None:
        if allow_none:
            return None
        raise ValueError(f"{name} must be {allowed}, got None")
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer, float, np.floating)) and not isinstance(seed, bool):
        if isinstance(seed, (float, np.floating)) and not float(seed).is_integer():
            raise ValueError(f"{name} must be {allowed}, got {_short(seed)}")
        v = int(seed)
        if v < 0:
            raise ValueError(f"{name} must be {allowed}, got {v}")
        return v
    if isinstance(seed, (list, tuple, np.ndarray)):
        arr = np.asarray(seed, dtype=object).reshape(-1) if np.ndim(seed) <= 1 else None
        ok = arr is not None and arr.size > 0
        if ok:
            for s in arr:
                if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
                    ok = False
                    break
        if ok:
            return seed
    raise ValueError(f"{name} must be {allowed}, got {_short(seed)}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable`` on Linux), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _bytes_text(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def check_memory(what: str, nbytes: float) -> None:
    """Refuse, before allocating, a computation whose arrays need more memory than is free.

    ``what`` names the cause (e.g. "chunk_steps = 10^12 steps of 2 observables"); the message
    gives the estimate and the memory available.
    """
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs about {_bytes_text(nbytes)} of memory, but only "
            f"{_bytes_text(avail)} is available; reduce it"
        )


def check_size(
    name: str,
    value: Any,
    *,
    minimum: int = 1,
    maximum: int | None = None,
    item_bytes: float = 8.0,
) -> int:
    """An integer size >= ``minimum`` whose arrays, ``value * item_bytes`` bytes in all, fit
    in the available memory (refused with the estimate otherwise, before anything is
    allocated)."""
    v = check_int(name, value, minimum=minimum, maximum=maximum)
    check_memory(f"{name} = {v}", float(v) * float(item_bytes))
    return v


def _short(value: Any) -> str:
    """``repr`` of a value, cut to 80 characters (arrays and long lists stay readable)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def load_npy(name: str, path: Any) -> np.ndarray:
    """The array stored in the ``.npy`` file ``path`` (given as ``name``), refusing a missing
    file, a folder, or a file that does not hold a plain numpy array."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"{name} must be a path (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name}: file {str(p)!r} does not exist")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{name}: cannot read {str(p)!r} as a .npy array: {exc}") from None


def check_jitted(name: str, f: Any) -> Any:
    """Raise ``TypeError`` unless ``f`` is a Numba ``@njit`` dispatcher."""
    from numba.core.registry import CPUDispatcher

    if not isinstance(f, CPUDispatcher):
        raise TypeError(
            f"{name} must be a Numba-jitted function (decorate it with @numba.njit), "
            f"got {type(f).__name__}"
        )
    return f
