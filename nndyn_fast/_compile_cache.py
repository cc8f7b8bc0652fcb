"""The on-disk compile cache of the kernels: what is cached, and when it is stale.

Every kernel is ``@njit(cache=True)``; :func:`install` (run once, on import of the package)
gives each kernel dispatcher of :mod:`nndyn_fast.kernels` a cache that differs from numba's own
in two ways:

- A signature holding a function (a user's ``@njit`` field, history, map or graphon passed as
  an argument) is neither loaded nor saved. numba's cache key for such a signature holds the
  function object's identity, which never matches in another process: every process would add
  a dead index entry (the index grows without bound), and pickling an index that holds entries
  of other processes can fail (``ReferenceError: underlying object has vanished``). Those
  signatures compile once per process instead (measured in the README). The package passes
  user functions by their first-class function type (a signature, the same in every process;
  :mod:`nndyn_fast._first_class`), so those kernels are cached. Built-in models choose
  their variants by integer codes and pass ``None`` for the function arguments, so their
  signatures hold no function and are cached.
- The cache is stale when any file of ``kernels/`` changes, not only the kernel's own file:
  numba checks only the file of the function it compiled, but a compiled kernel carries the
  code of every kernel it calls (``rk`` calls ``neural``, ``control``, ``activations``), so an
  edit of a callee's file would otherwise go on running the old callee.

Entries are saved under an exclusive lock of the cache folder (the file
``nndyn_fast_cache.lock`` in it): numba reads the index, adds the entry and writes index and
data file without one, so two processes compiling the same kernel at once (a sweep's workers,
two test workers) would drop each other's entries, or give two signatures the same data file,
so that one signature loads the other's machine code.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import os
import pkgutil
from pathlib import Path

from numba.core import sigutils, types
from numba.core.caching import FunctionCache, IndexDataCacheFile
from numba.core.registry import CPUDispatcher

import nndyn_fast.kernels as _kernels

_KERNEL_DIR = Path(_kernels.__file__).resolve().parent
_STAMP: str | None = None
_LOCK_NAME = "nndyn_fast_cache.lock"  # in each cache folder; held while an entry is saved


def kernels_stamp() -> str:
    """sha256 of the sources of every module of ``kernels/`` (the freshness of every entry)."""
    global _STAMP
    if _STAMP is None:
        h = hashlib.sha256()
        for path in sorted(_KERNEL_DIR.glob("*.py")):
            h.update(path.name.encode())
            h.update(hashlib.sha256(path.read_bytes()).digest())
        _STAMP = h.hexdigest()
    return _STAMP


def holds_function(ty: types.Type) -> bool:
    """True if the numba type ``ty`` is, or contains, a function or dispatcher type.

    A first-class function type (``types.FunctionType``, see :mod:`nndyn_fast._first_class`)
    does not count: it is keyed by its signature alone, the same in every process.
    """
    if isinstance(ty, (types.WeakType, types.Function)):
        return True
    if isinstance(ty, types.BaseTuple):
        return any(holds_function(t) for t in ty.types)
    if isinstance(ty, types.Optional):
        return holds_function(ty.type)
    return False


def _holds_function(sig) -> bool:
    args, _ = sigutils.normalize_signature(sig)
    return any(holds_function(t) for t in args)


class _IndexFile(IndexDataCacheFile):
    """numba's index and data files; an index that cannot be read counts as empty (one written
    by an earlier version may hold entries for functions that no longer exist), and entries are
    saved under an exclusive lock of the cache folder (concurrent processes lose none)."""

    def save(self, key, data):
        try:
            fd = os.open(os.path.join(self._cache_path, _LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a folder we may write cache files to but not create this one in
            return super().save(key, data)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor is closed
            super().save(key, data)
        finally:
            os.close(fd)

    def _load_index(self):
        try:
            return super()._load_index()
        except Exception:
            return {}


class KernelCache(FunctionCache):
    """numba's per-function cache, without function-typed signatures, stale with ``kernels/``."""

    def __init__(self, py_func):
        super().__init__(py_func)
        self._cache_file = _IndexFile(
            cache_path=self._cache_path,
            filename_base=self._impl.filename_base,
            source_stamp=kernels_stamp(),
        )

    def load_overload(self, sig, target_context):
        if _holds_function(sig):
            return None
        return super().load_overload(sig, target_context)

    def save_overload(self, sig, data):
        if _holds_function(sig):
            return
        super().save_overload(sig, data)


def install() -> None:
    """Give every cached kernel dispatcher of :mod:`nndyn_fast.kernels` a :class:`KernelCache`.

    Idempotent; it must run before a kernel is first called (the package's modules that call
    kernels import this module, so importing ``nndyn_fast`` is enough).
    """
    for info in pkgutil.iter_modules(_kernels.__path__):
        mod = importlib.import_module(f"{_kernels.__name__}.{info.name}")
        for obj in vars(mod).values():
            if (
                isinstance(obj, CPUDispatcher)
                and obj.__module__ == mod.__name__
                and type(obj._cache) is FunctionCache
            ):
                obj._cache = KernelCache(obj.py_func)


install()
