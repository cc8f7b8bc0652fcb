"""User functions passed to kernels by their signature, so a kernel compiles once per signature.

A Numba dispatcher passed to a kernel is typed by its identity: the kernel (and every kernel it
calls) compiles again for each user function, in every process, and none of it can be cached
(:mod:`nndyn_fast._compile_cache`). Passed instead as a first-class function value, typed by
its signature (``types.FunctionType``), the kernel calls it through a function pointer: one
compiled kernel serves every user function of that signature and is loaded from the on-disk
cache in later processes; only the user's own (small) function compiles. The arithmetic is the
same (the kernels use no fast-math), so results are bitwise those of the inlined call.

:func:`typed` wraps a user function for the argument types the kernel passes it;
:func:`call` runs a kernel with such arguments.
"""

from __future__ import annotations

from typing import Any

from numba import typeof, types
from numba.core.registry import CPUDispatcher

__all__ = ["Typed", "typed", "call"]


class Typed:
    """A user dispatcher ``fn`` with the first-class function type ``ftype`` it is passed as."""

    __slots__ = ("fn", "ftype")

    def __init__(self, fn: Any, ftype: types.FunctionType):
        self.fn = fn
        self.ftype = ftype


def typed(fn: Any, *argtypes: types.Type) -> Any:
    """``fn`` as a first-class function taking ``argtypes`` (its return type as compiled).

    ``None`` stays ``None``. A dispatcher that cannot compile for ``argtypes`` (e.g. one
    with explicit signatures of other types) is returned as it is: the kernel then
    specialises on it, as for any function argument.
    """
    if fn is None or not isinstance(fn, CPUDispatcher):
        return fn
    argtypes = tuple(argtypes)
    try:
        fn.compile(argtypes)
    except Exception:
        return fn
    ret = fn.overloads[argtypes].signature.return_type
    return Typed(fn, types.FunctionType(ret(*argtypes)))


_ENTRIES: dict = {}


def call(kernel: Any, *args: Any) -> Any:
    """``kernel(*args)`` with each :class:`Typed` argument passed by its signature.

    The kernel's compiled version for these argument types is loaded from the cache (or
    compiled) once per process and called directly.
    """
    plain = tuple(a.fn if isinstance(a, Typed) else a for a in args)
    if not isinstance(kernel, CPUDispatcher):  # e.g. a test's stand-in for the kernel
        return kernel(*plain)
    sig = tuple(a.ftype if isinstance(a, Typed) else typeof(a) for a in args)
    key = (kernel, sig)
    entry = _ENTRIES.get(key)
    if entry is None:
        kernel.compile(sig)
        entry = kernel.overloads[sig].entry_point
        _ENTRIES[key] = entry
    return entry(*plain)
