"""Coupling structures for network models: graphons, digraph measures and random graphs.

A graphon is a symmetric measurable w : [0, 1]^2 → [0, ∞); a digraph measure generalises it to
directed, non-symmetric w with heterogeneous node weights. Discretised at node positions
x_1 < … < x_N with node weights μ_j (mean about 1, i.e. μ_j = N m_j for a probability measure m),
the coupling matrix is W_ij = w(x_i, x_j) μ_j; a graphon on the grid x_i = i/N has μ = 1.

Built-in graphons (all matrix-free in O(N) memory and O(N) work per evaluation):

- ``Graphon.constant(p)``: w = p (complete graph for p = 1, Erdős–Rényi limit);
- ``Graphon.small_world(r, p)``: w = 1 − p if d(x, y) ≤ r else p, d the circular distance
  (nonlocal ring coupling for p = 0, ``Graphon.ring(r)``);
- ``Graphon.power_law(gamma)``: w = (x y)^(−γ), 0 < γ < 1;
- ``Graphon.directed_ring(r)``: w = 1 if 0 < (y − x) mod 1 ≤ r (a directed, non-symmetric kernel);
- ``Graphon.from_function(fn)``: a user's ``@numba.njit`` function ``fn(x, y) -> float``,
  evaluated pair by pair (O(N^2) work, O(N) memory).
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validate import (
    as_array,
    check_int,
    check_jitted,
    check_memory,
    check_nonnegative,
    check_positive,
    check_real,
    check_seed,
    check_size,
    load_npy,
)
from .kernels import kuramoto as kk
from .kernels import windows as kw

__all__ = ["Graphon", "DigraphMeasure", "w_random_graph", "erdos_renyi", "load_matrix"]


@dataclass(frozen=True)
class Graphon:
    """A graphon (or directed kernel) w(x, y) on [0, 1]^2; build with the class methods."""

    name: str
    params: tuple[float, ...] = ()
    fn: Any = field(default=None, compare=False)

    @classmethod
    def constant(cls, p: float = 1.0) -> Graphon:
        """w(x, y) = p, p ≥ 0."""
        return cls("constant", (check_nonnegative("p", p),))

    @classmethod
    def small_world(cls, r: float, p: float = 0.0) -> Graphon:
        """w = 1 − p for circular distance ≤ r, p otherwise; 0 < r, 0 ≤ p ≤ 1."""
        r = check_positive("r", r)
        p = check_nonnegative("p", p)
        if p > 1:
            raise ValueError(f"p must be in [0, 1], got {p!r}")
        return cls("small_world", (r, p))

    @classmethod
    def ring(cls, r: float) -> Graphon:
        """Nonlocal ring coupling: w = 1 for circular distance ≤ r, else 0."""
        return cls.small_world(r, 0.0)

    @classmethod
    def power_law(cls, gamma: float) -> Graphon:
        """w(x, y) = (x y)^(−γ) with 0 < γ < 1."""
        g = check_positive("gamma", gamma)
        if g >= 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma!r}")
        return cls("power_law", (g,))

    @classmethod
    def directed_ring(cls, r: float) -> Graphon:
        """Directed kernel w(x, y) = 1 if 0 < (y − x) mod 1 ≤ r, else 0 (not symmetric)."""
        return cls("directed_ring", (check_positive("r", r),))

    @classmethod
    def from_function(cls, fn: Any) -> Graphon:
        """A user's ``@numba.njit`` function ``fn(x, y) -> float`` (evaluated pair by pair)."""
        check_jitted("fn", fn)
        val = float(fn(0.25, 0.5))
        if not np.isfinite(val):
            raise ValueError(f"fn(0.25, 0.5) must be finite, got {val!r}")
        return cls("user", (), fn)

    @classmethod
    def by_name(cls, name: str, **params: float) -> Graphon:
        """Build a built-in graphon from its name, as the command line does."""
        makers = {
            "constant": cls.constant,
            "small_world": cls.small_world,
            "ring": cls.ring,
            "power_law": cls.power_law,
            "directed_ring": cls.directed_ring,
        }
        if name not in makers:
            raise ValueError(f"graphon must be one of {list(makers)}, got {name!r}")
        return makers[name](**params)

    @property
    def code(self) -> int:
        """Kernel code of a built-in graphon (user functions: -1)."""
        return {
            "constant": kk.G_CONSTANT,
            "small_world": kk.G_SMALL_WORLD,
            "power_law": kk.G_POWER_LAW,
            "directed_ring": kk.G_DIRECTED_RING,
        }.get(self.name, -1)

    def kernel_params(self) -> np.ndarray:
        p = np.zeros(2)
        p[: len(self.params)] = self.params
        return p

    def __call__(self, x: Any, y: Any) -> np.ndarray:
        """w(x, y) for arrays broadcast against each other (the kernels' own evaluation)."""
        x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
        out = np.empty(x.size)
        kk.graphon_eval(
            np.ascontiguousarray(x.ravel()),
            np.ascontiguousarray(y.ravel()),
            self.code,
            self.kernel_params(),
            self.fn,
            out,
        )
        return out.reshape(x.shape)

    def matrix(
        self, n_or_x: int | np.ndarray, mu: np.ndarray | None = None, dtype: Any = np.float64
    ) -> np.ndarray:
        """Dense matrix W_ij = w(x_i, x_j) μ_j at positions x (or the grid x_i = i/N)."""
        return DigraphMeasure(self, n_or_x, mu).matrix(dtype)


def _grid(n: int) -> np.ndarray:
    return np.arange(1, n + 1, dtype=np.float64) / n


class DigraphMeasure:
    """Discretised digraph measure: W_ij = w(x_i, x_j) μ_j, evaluated matrix-free.

    Parameters
    ----------
    w : Graphon
        The (possibly non-symmetric) kernel.
    x : int or array (N,)
        Node positions in [0, 1]; an int N means the grid x_i = i/N, i = 1..N. Positions are
        sorted (node order follows position).
    mu : array (N,), optional
        Node weights μ_j ≥ 0 (default 1: the graphon case).
    """

    def __init__(self, w: Graphon, x: int | np.ndarray, mu: np.ndarray | None = None):
        if not isinstance(w, Graphon):
            raise ValueError(f"w must be a Graphon, got {type(w).__name__}")
        if isinstance(x, (int, np.integer)):
            # positions, weights and the O(N) sums of the matrix-free form: ~10 arrays of N
            n = check_size("N", x, item_bytes=80)
            xs = _grid(n)
        else:
            xs = as_array("x", x, ndim=1)
            if xs.size < 1:
                raise ValueError("x must hold at least one position")
            if np.any((xs < 0) | (xs > 1)):
                raise ValueError("x (node positions) must lie in [0, 1]")
            if np.any(np.diff(xs) < 0):
                raise ValueError("x (node positions) must be sorted increasingly")
        n = xs.size
        if mu is None:
            m = np.ones(n)
        else:
            m = as_array("mu", mu, shape=(n,))
            if np.any(m < 0):
                raise ValueError("mu (node weights) must be >= 0")
        if w.name == "power_law" and np.any(xs == 0):
            raise ValueError("power_law graphon needs positions x > 0")
        self.w, self.x, self.mu = w, xs, m

    @property
    def n(self) -> int:
        return self.x.size

    def matrix(self, dtype: Any = np.float64) -> np.ndarray:
        """The dense (N, N) matrix W_ij = w(x_i, x_j) μ_j."""
        out = np.empty((self.n, self.n))
        kk.graphon_matrix_block(
            self.x, self.x, self.mu, self.w.code, self.w.kernel_params(), self.w.fn, out
        )
        return out.astype(dtype, copy=False)

    def structure(self) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray] | None:
        """(u, v, c_win, start, length) of the O(N) form, or None for user functions."""
        n, name, p = self.n, self.w.name, self.w.params
        start = np.zeros(n, np.int64)
        length = np.zeros(n, np.int64)
        if name == "constant":
            return np.full(n, p[0]), np.ones(n), 0.0, start, length
        if name == "power_law":
            u = self.x ** (-p[0])
            return u, u.copy(), 0.0, start, length
        if name in ("small_world", "directed_ring"):
            # bisection (O(N log N)) gives the scan's windows exactly unless the positions
            # hold both 0 and 1 (see kernels.windows); the scan is O(N · window)
            both_ends = self.x[0] == 0.0 and self.x[-1] == 1.0
            find = kk.graphon_windows if both_ends else kw.graphon_windows_bisect
            find(self.x, self.w.code, self.w.kernel_params(), start, length)
            if name == "small_world":
                return np.full(n, p[1]), np.ones(n), 1.0 - 2.0 * p[1], start, length
            return np.zeros(n), np.zeros(n), 1.0, start, length
        return None


def erdos_renyi(n: int, p: float, *, seed: int = 0, dtype: Any = np.float64) -> sp.csr_matrix:
    """Erdős–Rényi digraph G(N, p) as CSR (no self-loops), in O(N + edges) time and memory.

    Each row draws its degree k_i ~ Binomial(N − 1, p), then k_i distinct columns ≠ i uniformly
    (duplicates redrawn), which is exactly independent Bernoulli(p) entries.
    """
    n = check_int("N", n, minimum=1)
    p = check_real("p", p, low=0.0, high=1.0)
    seed = check_seed("seed", seed)
    # row pointers, and per expected edge its column, weight and the sampler's int64 scratch
    check_memory(f"an Erdős–Rényi graph of N = {n}, p = {p:g}", 8.0 * n + 44.0 * n * (n - 1) * p)
    rng = np.random.default_rng(seed)
    indptr = np.zeros(n + 1, np.int64)
    cols_all = []
    block = 1 << 16
    for r0 in range(0, n if n > 1 else 0, block):
        rows = np.arange(r0, min(n, r0 + block))
        deg = rng.binomial(n - 1, p, size=rows.size)
        row_of = np.repeat(rows, deg).astype(np.int64)
        raw = rng.integers(0, n - 1, size=row_of.size)  # column among the n - 1 others
        while True:
            cols = raw + (raw >= row_of)  # skip the diagonal
            order = np.argsort(row_of * n + cols, kind="stable")
            row_of, raw, cols = row_of[order], raw[order], cols[order]
            dup = (row_of[1:] == row_of[:-1]) & (cols[1:] == cols[:-1])
            if not dup.any():
                break
            # redraw repeated columns: by symmetry the final set is a uniform k_i-subset
            raw[1:][dup] = rng.integers(0, n - 1, size=int(dup.sum()))
        indptr[rows + 1] = deg
        cols_all.append(cols.astype(np.int32 if n < 2**31 else np.int64))
    np.cumsum(indptr, out=indptr)
    indices = np.concatenate(cols_all) if cols_all else np.zeros(0, np.int32)
    data = np.ones(indices.size, dtype=dtype)
    return sp.csr_matrix((data, indices, indptr), shape=(n, n))


def w_random_graph(
    w: Graphon, n: int, *, seed: int = 0, block_rows: int = 256, dtype: Any = np.float64
) -> sp.csr_matrix:
    """W-random digraph: edge i→j (i ≠ j) with probability min(1, w(x_i, x_j)), x_i = i/N.

    O(N^2) time, O(N·block_rows + edges) memory; the constant graphon takes the O(edges)
    Erdős–Rényi sampler.
    """
    if not isinstance(w, Graphon):
        raise ValueError(f"w must be a Graphon, got {type(w).__name__}")
    n = check_int("N", n, minimum=1)
    block_rows = check_int("block_rows", block_rows, minimum=1)
    seed = check_seed("seed", seed)
    if w.name == "constant":
        return erdos_renyi(n, min(1.0, w.params[0]), seed=seed, dtype=dtype)
    # one block of rows: weights, uniforms and hits (the edges found are not known in advance)
    check_memory(
        f"a W-random graph of N = {n} in blocks of {block_rows} rows",
        17.0 * min(block_rows, n) * n + 8.0 * n,
    )
    rng = np.random.default_rng(seed)
    x = _grid(n)
    ones = np.ones(n)
    rows_idx, cols_idx = [], []
    buf = np.empty((min(block_rows, n), n))
    for r0 in range(0, n, block_rows):
        r1 = min(n, r0 + block_rows)
        blk = buf[: r1 - r0]
        kk.graphon_matrix_block(x[r0:r1], x, ones, w.code, w.kernel_params(), w.fn, blk)
        hit = rng.random(blk.shape) < blk
        hit[np.arange(r1 - r0), np.arange(r0, r1)] = False
        i, j = np.nonzero(hit)
        rows_idx.append(i + r0)
        cols_idx.append(j)
    i = np.concatenate(rows_idx)
    j = np.concatenate(cols_idx)
    return sp.csr_matrix((np.ones(i.size, dtype=dtype), (i, j)), shape=(n, n))


def load_matrix(path: str | Path, *, dataset: str = "W") -> np.ndarray | sp.csr_matrix:
    """Read a coupling matrix: ``.npz`` (scipy.sparse.save_npz or numpy.savez with key ``W``),
    ``.npy``, or ``.h5`` (dataset ``W``)."""
    if not isinstance(path, (str, os.PathLike)) or not isinstance(dataset, str):
        raise TypeError(f"path must be a str or Path and dataset a str, got {path!r}, {dataset!r}")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"graph file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return load_npy("graph file", p)
    try:
        return _load_matrix(p, suffix, dataset)
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read the graph file {str(p)!r}: {exc}") from None


def _load_matrix(p: Path, suffix: str, dataset: str) -> np.ndarray | sp.csr_matrix:
    if suffix == ".npz":
        try:
            return sp.load_npz(p).tocsr()
        except (ValueError, KeyError, OSError):
            with np.load(p) as z:
                if dataset not in z:
                    raise ValueError(f"{str(p)!r} holds no array {dataset!r}") from None
                return np.asarray(z[dataset])
    if suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            if dataset not in f:
                raise ValueError(f"{str(p)!r} holds no dataset {dataset!r}")
            return f[dataset][()]
    raise ValueError(f"graph file must end in .npz, .npy or .h5, got {str(p)!r}")
