"""Stability of SGD linearised at an interpolation minimum: Lyapunov exponents, mean-square growth
and the (lr, B) stability diagram.

Near a minimum where every residual vanishes, SGD on the squared loss is the random linear
cocycle v_{t+1} = M_t v_t with M_t = I - (lr/B) sum_{i in batch_t} H_i and per-sample Hessians
H_i = g_i g_i^T (rows g_i of the per-sample gradients) or given explicitly.

- :func:`sgd_lyapunov`: its top Lyapunov exponents by the QR method on the span of the g_i
  (SGD is almost surely attracted to the minimum iff lambda_1 < 0), with a confidence interval;
  :func:`sgd_lyapunov_mlp` for an MLP.
- :func:`mean_square_exponent`: the growth rate of the second moment E[v_t v_t^T] (the stricter
  mean-square criterion, never below lambda_1).
- :func:`sgd_stability_diagram`: both over a grid of (lr, B), beside the full-batch GD threshold
  2 / lambda_max (:func:`gd_threshold_at_minimum`).

References
----------
G. Benettin, L. Galgani, A. Giorgilli, J.-M. Strelcyn, Meccanica 15 (1980) 9–30 (QR method).
L. Wu, C. Ma, W. E, "How SGD selects the global minima in over-parameterized learning: a
dynamical stability perspective", NeurIPS 2018 (mean-square stability of SGD).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _compile_cache  # noqa: F401  (the kernels' cache policy: installed on import)
from ._validate import (
    as_array,
    check_bool,
    check_int,
    check_memory,
    check_option,
    check_out_path,
    check_positive,
)
from .eigen import gd_threshold, top_eigenpairs
from .errors import NonFiniteStateError
from .kernels import lyapunov as _k
from .lyapunov import (
    _block_stats,
    _committed_rows,
    _orthonormal_rows,
    _seed_param,
    _standard_error,
    _tangent_failure,
)
from .progress import progress_bar
from .runs import restore_rng, rng_state, start_run
from .threads import for_work

__all__ = [
    "SGDLyapunov",
    "StabilityDiagram",
    "gd_threshold_at_minimum",
    "mean_square_exponent",
    "sgd_lyapunov",
    "sgd_lyapunov_mlp",
    "sgd_stability_diagram",
]

_SAMPLING = ("with", "without")
_SPACES = ("span", "full")
_MAX_INDEX_ENTRIES = 1 << 23  # batch indices held per chunk (32 MiB of int32)
# largest lr * max(1, max_i ||H_i||) for the mean-square exponent: its operator holds
# lr^2 H S H terms, which overflow float64 far beyond this (growth > e^230 per step there)
_MS_SCALE_LIMIT = 1e100


def _t_quantile(level: float, dof: int) -> float:
    # scipy.stats.t.ppf is this function; scipy.special imports in a tenth of the time
    from scipy.special import stdtrit

    return float(stdtrit(dof, 0.5 + level / 2.0))


# ============================================================================================
# The per-sample factors
# ============================================================================================
@dataclass(frozen=True)
class _Operator:
    """The per-sample factors in the coordinates the kernel works in."""

    kind: str  # "rank" or "hessian"
    A: np.ndarray  # (n q, m) rows, or (n, m, m) Hessians
    q: int
    n: int
    m: int
    rank: int
    lam_max: float
    source: np.ndarray  # the G given by the user (an input of a run file)

    @property
    def gd_threshold(self) -> float:
        """2 / lam_max, the full-batch GD stability threshold on the learning rate."""
        return gd_threshold(self.lam_max)

    def largest_norm(self) -> float:
        """An upper bound of max_i ||H_i|| (trace of g g^T rows, Frobenius norm of Hessians)."""
        if self.kind == "rank":
            return float((self.A**2).sum(1).reshape(self.n, self.q).sum(1).max())
        return float(np.sqrt((self.A**2).sum((1, 2))).max())


def _span_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates C (N, r) of the rows of A (N, d) in an orthonormal basis of their span, and
    the singular values. C C^T = A A^T, so every inner product among the rows is kept."""
    N, d = A.shape
    eps = np.finfo(np.float64).eps
    if N * d <= 50_000_000 or N >= d:
        U, s, _ = np.linalg.svd(A, full_matrices=False)
        tol = (s[0] if s.size else 0.0) * max(N, d) * eps
        r = int(np.sum(s > tol))
        return np.ascontiguousarray(U[:, :r] * s[:r]), s[:r]
    # Wide A (d >> N): eigen-decomposition of the N x N Gram matrix, O(N^2 d) time, O(N^2) extra.
    K = A @ A.T
    w, U = np.linalg.eigh(K)
    w, U = w[::-1], U[:, ::-1]
    tol = (w[0] if w.size else 0.0) * max(N, d) * eps
    r = int(np.sum(w > tol))
    s = np.sqrt(w[:r])
    return np.ascontiguousarray(U[:, :r] * s), s


def _build_operator(G: Any, rows_per_sample: int, space: str) -> _Operator:
    arr = np.asarray(G)
    if arr.ndim == 3:
        H = as_array("G", arr, ndim=3)
        n, d, d2 = H.shape
        if d != d2:
            raise ValueError(f"per-sample Hessians must have shape (n, d, d), got {H.shape}")
        if rows_per_sample != 1:
            raise ValueError("rows_per_sample applies to gradients (n q, d), not to Hessians")
        scale = float(np.max(np.abs(H))) if H.size else 0.0
        asym = float(np.max(np.abs(H - H.transpose(0, 2, 1)))) if H.size else 0.0
        if asym > 1e-10 * max(scale, 1e-300):
            raise ValueError(f"per-sample Hessians must be symmetric, max |H - H^T| = {asym:.3g}")
        lam_max = float(np.linalg.eigvalsh(H.mean(0))[-1])
        if space == "full":
            return _Operator("hessian", H, 1, n, d, d, lam_max, H)
        Hs = H.reshape(n * d, d)
        w, U = np.linalg.eigh(Hs.T @ Hs)
        tol = (w[-1] if w.size else 0.0) * max(n * d, d) * np.finfo(np.float64).eps
        Ur = U[:, w > tol]
        r = Ur.shape[1]
        Hr = np.ascontiguousarray(np.einsum("ai,nab,bj->nij", Ur, H, Ur))
        return _Operator("hessian", Hr, 1, n, r, r, lam_max, H)
    A = as_array("G", arr, ndim=2)
    N, d = A.shape
    if N == 0 or d == 0:
        raise ValueError(f"G must be non-empty, got shape {A.shape}")
    if N % rows_per_sample:
        raise ValueError(f"G has {N} rows, not a multiple of rows_per_sample = {rows_per_sample}")
    n = N // rows_per_sample
    C, s = _span_rows(A)
    r = C.shape[1]
    lam_max = float(s[0] ** 2 / n) if r else 0.0
    if space == "full":
        return _Operator("rank", A, rows_per_sample, n, d, r, lam_max, A)
    return _Operator("rank", C, rows_per_sample, n, r, r, lam_max, A)


def _operator_from(G: Any, rows_per_sample: Any, space: str) -> _Operator:
    q = check_int("rows_per_sample", rows_per_sample, minimum=1)
    shape = np.shape(G)
    N, d = (shape[0] * shape[1], shape[2]) if len(shape) == 3 else (shape + (1, 1))[:2]
    with for_work(None, blas=_SECONDS_PER_CUBE * N * d * min(N, d)):
        return _build_operator(G, q, space)


def _check_lr_batch(op: _Operator, lr: Any, batch_size: Any) -> tuple[float, int]:
    lr = check_positive("lr", lr)
    B = check_int("batch_size", batch_size, minimum=1)
    if B > op.n:
        raise ValueError(f"batch_size must be <= the number of samples n = {op.n}, got {B}")
    return lr, B


def gd_threshold_at_minimum(G: Any, *, rows_per_sample: int = 1) -> float:
    """The full-batch GD stability threshold 2 / lambda_max on the learning rate.

    lambda_max is the largest eigenvalue of the mean Hessian (1/n) sum_i H_i, H_i = sum_{o<q}
    g_{iq+o} g_{iq+o}^T (or the given Hessians); GD on the quadratic model is stable iff
    lr < 2 / lambda_max.

    Parameters
    ----------
    G : array
        (n q, d) per-sample gradients (rows), or (n, d, d) symmetric per-sample Hessians.
    rows_per_sample : int
        Q, the rows of G that belong to one sample.

    Returns
    -------
    float, ``inf`` when every H_i vanishes.
    """
    return _operator_from(G, rows_per_sample, "span").gd_threshold


# ============================================================================================
# Lyapunov exponents of the SGD product
# ============================================================================================
@dataclass(frozen=True)
class SGDLyapunov:
    """Result of :func:`sgd_lyapunov`.

    Attributes
    ----------
    exponents : array (k,)
        (k,) top-k Lyapunov exponents per SGD step (mean over replicas).
    ci_low, ci_high : (k,) confidence interval at ``level`` (Student t over independent
        replicas, or over batch-means blocks of a single replica).
    stderr : (k,) standard error behind the interval.
    per_replica : (R, k) estimate of each independent replica.
    ci_method : ``"replicas"`` or ``"blocks"``.
    rank : dimension of the span of the g_i (the normal space).
    lam_max : largest eigenvalue of the mean Hessian (1/n) sum_i H_i.
    gd_threshold : 2 / lam_max, the deterministic (full-batch GD) stability threshold on lr.
    """

    exponents: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    stderr: np.ndarray
    per_replica: np.ndarray
    ci_method: str
    level: float
    rank: int
    lam_max: float
    gd_threshold: float
    lr: float
    batch_size: int
    steps: int
    sampling: str
    space: str

    @property
    def stable(self) -> bool:
        """True when the top exponent is negative (SGD is attracted to the minimum a.s.)."""
        return bool(self.exponents[0] < 0.0)


def _sgd_options(
    op: _Operator,
    space: str,
    *,
    steps: Any,
    k: Any,
    transient: Any,
    replicas: Any,
    reorth_every: Any,
    n_blocks: Any,
    level: Any,
) -> dict[str, Any]:
    """The checked run options of an SGD exponent (shared by the exponent and the diagram)."""
    opts = {
        "steps": check_int("steps", steps, minimum=1),
        "k": check_int("k", k, minimum=1),
        "transient": check_int("transient", transient, minimum=0),
        "replicas": check_int("replicas", replicas, minimum=1),
        "reorth_every": check_int("reorth_every", reorth_every, minimum=1),
        "n_blocks": check_int("n_blocks", n_blocks, minimum=2),
    }
    limit = op.rank if space == "span" else op.m
    if opts["k"] > limit:
        raise ValueError(
            f"k must be <= the {'rank of the span of the g_i' if space == 'span' else 'dimension'}"
            f" = {limit}, got {opts['k']}"
        )
    if isinstance(level, bool) or not isinstance(level, (int, float, np.number)):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    opts["level"] = float(level)
    # the tangent blocks and batch permutations of the replicas
    R, k = opts["replicas"], opts["k"]
    check_memory(
        f"replicas = {R} chains of {k} vectors in {op.m} dimensions", 8.0 * R * (k * op.m + op.n)
    )
    return opts


def sgd_lyapunov(
    G: Any,
    lr: float,
    batch_size: int,
    *,
    steps: int = 100_000,
    k: int = 1,
    seed: Any = 0,
    transient: int = 1000,
    sampling: str = "with",
    replicas: int = 4,
    space: str = "span",
    rows_per_sample: int = 1,
    reorth_every: int = 1,
    n_blocks: int = 20,
    level: float = 0.95,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> SGDLyapunov:
    """Top Lyapunov exponents of SGD linearised at an interpolation minimum.

    lambda = lim (1/t) log ||M_t ... M_1 v||, M_s = I - (lr/B) sum_{i in batch_s} H_i, with
    H_i = sum_{o<q} g_{iq+o} g_{iq+o}^T for gradient rows (squared loss at a point where every
    residual vanishes), or the given Hessians. Each factor is applied as a rank-(B q) update in
    O(m B q k) per step (no m x m matrix). With ``space="span"`` the product is taken on the span
    of the g_i (the normal space to the manifold of minima; m = its dimension r), where it is
    exact; with ``space="full"`` on all of R^d, where the d - r tangent directions carry
    exponent 0.

    Parameters
    ----------
    G : array
        (n q, d) per-sample gradients (rows), or (n, d, d) symmetric per-sample Hessians.
    lr : learning rate eta > 0.
    batch_size : B, 1 <= B <= n.
    steps : measured SGD steps per replica (after ``transient`` discarded steps).
    k : int
        Number of exponents, 1 <= k <= r (span) or d (full).
    seed : seed for ``np.random.default_rng`` (int or sequence of ints); batch indices are
        drawn per chunk in Python and passed to the kernel, so results are reproducible.
    transient : discarded SGD steps before measuring.
    sampling : ``"with"`` (B i.i.d. indices) or ``"without"`` (B distinct indices) replacement.
    replicas : independent chains run in parallel; R >= 2 gives the interval from the spread
        of replicas, R = 1 from ``n_blocks`` batch-means blocks.
    space : ``"span"`` (the span of the g_i) or ``"full"`` (R^d).
    rows_per_sample : int
        Q, the rows of G that belong to one sample (outputs of a network).
    reorth_every : steps between QR re-orthonormalisations of the tangent vectors.
    n_blocks : batch-means blocks (and chunks of the run file).
    level : confidence level of the interval.
    out : optional HDF5 run file: series ``blocks`` (step, logsum (R, k)) committed per chunk
        with a checkpoint (tangent blocks, log sums, generator state, batch permutations); the
        estimates and interval go to the run's summary.
    overwrite : replace an existing ``out``.
    resume : continue the run in ``out`` from its last committed chunk; the result and the
        stored series are bitwise those of an uninterrupted run. Refused (ValueError naming the
        difference) when G or any option differs from the stored run.
    progress : report progress on stderr once per chunk (see :mod:`nndyn_fast.progress`).

    Returns
    -------
    SGDLyapunov

    Raises
    ------
    ValueError for NaN/inf in G, lr <= 0, batch_size outside [1, n], k > rank, unknown options.
    NonFiniteStateError if the tangent vectors overflow or collapse; it names the SGD step
    (``.step``, transient included) at which that was detected.
    """
    space = check_option("space", space, _SPACES)
    sampling = check_option("sampling", sampling, _SAMPLING)
    op = _operator_from(G, rows_per_sample, space)
    lr, B = _check_lr_batch(op, lr, batch_size)
    opts = _sgd_options(
        op,
        space,
        steps=steps,
        k=k,
        transient=transient,
        replicas=replicas,
        reorth_every=reorth_every,
        n_blocks=n_blocks,
        level=level,
    )
    seed = _seed_param(seed)
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    return _sgd_exponents(
        op,
        lr,
        B,
        sampling=sampling,
        space=space,
        seed=seed,
        **opts,
        out=out,
        overwrite=overwrite,
        resume=resume,
        progress=progress,
    )


# Serial seconds per multiply-add of an SGD tangent product (R replicas x steps x B q k m),
# for the thread choice of threads.for_work (measured on one thread, n = 100, d = 200,
# B = 10, R = 2: 1.2e-9 to 1e-8 with k = 4 / 1 in span coordinates, 5.3e-9 full space).
_SECONDS_PER_UNIT = 5e-9
# Serial seconds of an SVD / symmetric eigendecomposition per N d min(N, d) (measured on one
# thread: 2.7e-10 to 7.2e-10 for sizes 200 to 2000), for the BLAS threads of an operator build.
_SECONDS_PER_CUBE = 5e-10


def _sgd_exponents(
    op: _Operator,
    lr: float,
    B: int,
    *,
    sampling: str,
    space: str,
    seed: Any,
    steps: int,
    k: int,
    transient: int,
    replicas: int,
    reorth_every: int,
    n_blocks: int,
    level: float,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
) -> SGDLyapunov:
    """:func:`sgd_lyapunov` on a built operator with checked options (also for the diagram)."""
    R = replicas
    m = op.m
    c = lr / B
    max_chunk = max(1, _MAX_INDEX_ENTRIES // (R * B))
    chunk = max(1, min(-(-steps // n_blocks), max_chunk))
    chunk = -(-chunk // reorth_every) * reorth_every
    status = np.zeros(R, dtype=np.int64)

    def advance(rng, perm, V, n: int, logr: np.ndarray, start: int) -> None:
        """``n`` steps of every replica; ``start`` steps (transient included) came before."""
        if sampling == "with":
            idx = rng.integers(0, op.n, size=(R, n, B), dtype=np.int32)
        else:
            u = rng.random((R, n, B))
            idx = np.empty((R, n, B), dtype=np.int32)
            _k.batches_without_replacement(u, perm, idx)
        V_before, logr_before = V.copy(), logr.copy()
        per_step = B * op.q * k * m if op.kind == "rank" else B * m * m * k
        with for_work(_SECONDS_PER_UNIT * R * n * per_step):  # one region: every replica
            if op.kind == "rank":
                kern = _k.sgd_rank_products if R > 1 else _k.sgd_rank_products_serial
                st = kern(op.A, op.q, c, idx, V, reorth_every, logr, status)
            else:
                st = _k.sgd_hessian_products(op.A, c, idx, V, reorth_every, logr, status)
        if st != _k.OK:
            raise _blow_up(op, c, idx, V_before, logr_before, status, reorth_every, start)

    params = {
        "lr": lr,
        "batch_size": B,
        "steps": steps,
        "k": k,
        "seed": seed,
        "transient": transient,
        "sampling": sampling,
        "replicas": R,
        "space": space,
        "rows_per_sample": op.q,
        "reorth_every": reorth_every,
        "n_blocks": n_blocks,
        "level": level,
        "chunk": chunk,
    }
    spec = {
        "kind": "sgd_lyapunov",
        "params": params,
        "inputs": {"G": op.source},
        "series": {
            "blocks": {
                "step": {"long_name": "SGD step at the end of the block"},
                "logsum": {
                    "shape": (R, k),
                    "dims": ("replica", "exponent"),
                    "units": "1",
                    "long_name": "accumulated log stretching factors of the linearised SGD map",
                },
            }
        },
        "description": "Lyapunov exponents of SGD linearised at an interpolation minimum "
        "(theta <- theta - lr H_B theta, H_B the minibatch Hessian): log stretching per block "
        "and replica",
        "rows": {"blocks": -(-steps // chunk)},
    }
    run = None
    if out is not None and resume:
        run = start_run(out, **spec, checkpoint={}, resume=True)
    else:
        if out is not None:
            check_out_path("out", out, overwrite=overwrite)
        rng = np.random.default_rng(seed)
        perm = np.tile(np.arange(op.n, dtype=np.int64), (R, 1))
        V = np.empty((R, k, m))
        for r in range(R):
            V[r] = _orthonormal_rows(rng, k, m)
        for pos in range(0, transient, max_chunk):
            advance(rng, perm, V, min(max_chunk, transient - pos), np.zeros((R, k)), pos)
        logsum = np.zeros((R, k))
        done = 0
        if out is not None:
            start = {"V": V, "perm": perm, "logsum": logsum, "step": 0, "rng": rng_state(rng)}
            run = start_run(out, **spec, checkpoint=start, overwrite=overwrite)
    with run if run is not None else nullcontext():
        sums, ends = [], []
        if run is not None:
            run.summarize(rank=op.rank, lam_max=op.lam_max, gd_threshold=op.gd_threshold)
            ck = run.checkpoint
            rng = restore_rng(ck["rng"])
            V = np.ascontiguousarray(ck["V"], dtype=np.float64)
            perm = np.ascontiguousarray(ck["perm"], dtype=np.int64)
            logsum = np.array(ck["logsum"], dtype=np.float64)
            done = int(ck["step"])
            kept = _committed_rows(run, "blocks", ("step", "logsum"))
            sums, ends = list(kept["logsum"]), list(kept["step"])
        bar = progress_bar(progress, steps, desc="SGD Lyapunov")
        while done < steps:
            n = min(chunk, steps - done)
            advance(rng, perm, V, n, logsum, transient + done)
            done += n
            bar.update(done)
            sums.append(logsum.copy())
            ends.append(float(done))
            if run is not None:
                run.append("blocks", step=np.array([float(done)]), logsum=logsum[None])
                # copies: the writer keeps the checkpoint and writes it again on closing
                run.commit(
                    V=V.copy(),
                    perm=perm.copy(),
                    logsum=logsum.copy(),
                    step=done,
                    rng=rng_state(rng),
                )
        res = _sgd_result(logsum, sums, ends, op, lr, B, steps, sampling, space, level, n_blocks)
        if run is not None:
            run.summarize(
                exponents=res.exponents.tolist(),
                ci_low=res.ci_low.tolist(),
                ci_high=res.ci_high.tolist(),
                stderr=res.stderr.tolist(),
            )
    return res


def _blow_up(
    op: _Operator,
    c: float,
    idx: np.ndarray,
    V_before: np.ndarray,
    logr_before: np.ndarray,
    status: np.ndarray,
    reorth_every: int,
    start: int,
) -> NonFiniteStateError:
    """The error for a chunk in which a replica's tangent vectors failed, naming the step.

    The kernels report only that a chunk failed; each failed replica's chunk is replayed from
    its saved start in pieces of ``reorth_every`` steps (the kernels re-orthonormalise, and
    check, at the same steps either way, so the replay repeats the same arithmetic)."""
    first = None
    for r in np.flatnonzero(status != _k.OK):
        V = V_before[r : r + 1].copy()
        logr = logr_before[r : r + 1].copy()
        st1 = np.zeros(1, dtype=np.int64)
        n = idx.shape[1]
        for s in range(0, n, reorth_every):
            e = min(s + reorth_every, n)
            piece = np.ascontiguousarray(idx[r : r + 1, s:e])
            if op.kind == "rank":
                st = _k.sgd_rank_products_serial(op.A, op.q, c, piece, V, reorth_every, logr, st1)
            else:
                st = _k.sgd_hessian_products(op.A, c, piece, V, reorth_every, logr, st1)
            if st != _k.OK:
                break
        if first is None or start + e < first[1]:
            first = (int(r), start + e, int(status[r]))
    r, step, st = first
    where = f"at SGD step {step} (transient included)"
    if reorth_every > 1:
        where += (
            f", detected at the re-orthonormalisation after it: the tangent vectors are checked "
            f"every reorth_every = {reorth_every} steps; try reorth_every=1"
        )
    return NonFiniteStateError(
        f"replica {r}: tangent vectors {_tangent_failure(st)} {where}",
        step=step,
        time=float(step),
    )


def _sgd_result(
    logsum: np.ndarray,
    sums: list,
    ends: list,
    op: _Operator,
    lr: float,
    B: int,
    steps: int,
    sampling: str,
    space: str,
    level: float,
    n_blocks: int,
) -> SGDLyapunov:
    """Estimate and interval from the final log sums (R, k) and the per-chunk record."""
    R, k = logsum.shape
    per_rep = logsum / steps
    est = per_rep.mean(0)
    if R >= 2:
        se = _standard_error(per_rep)
        dof, method = R - 1, "replicas"
    else:
        se, nb = _block_stats(np.asarray(sums)[:, 0, :], np.asarray(ends), n_blocks)
        dof, method = max(nb - 1, 1), "blocks"
    half = _t_quantile(float(level), dof) * se
    return SGDLyapunov(
        exponents=est,
        ci_low=est - half,
        ci_high=est + half,
        stderr=se,
        per_replica=per_rep,
        ci_method=method,
        level=float(level),
        rank=op.rank,
        lam_max=op.lam_max,
        gd_threshold=op.gd_threshold,
        lr=lr,
        batch_size=B,
        steps=steps,
        sampling=sampling,
        space=space,
    )


def _mlp_gradients(mlp: Any, theta: Any, X: Any) -> tuple[np.ndarray, int]:
    from . import training

    training._check_mlp(mlp)
    if getattr(mlp, "loss", "mse") != "mse":
        raise ValueError(
            f"sgd_lyapunov_mlp needs an MLP with loss='mse' (per-sample Hessian J^T J at an "
            f"interpolation minimum), got loss={mlp.loss!r}"
        )
    theta = as_array("theta", theta, shape=(int(mlp.n_params),))
    X = as_array("X", X, ndim=2)
    G = np.asarray(training.per_sample_gradients(mlp, theta, X), dtype=np.float64)
    q = G.shape[0] // X.shape[0]
    return np.ascontiguousarray(G), q


def sgd_lyapunov_mlp(
    mlp: Any, theta: Any, X: Any, lr: float, batch_size: int, **kwargs: Any
) -> SGDLyapunov:
    """:func:`sgd_lyapunov` for an MLP at an interpolation minimum ``theta``.

    At a point where f(x_i; theta) = y_i for every sample, the per-sample Hessian of the squared
    loss 1/2 ||f(x_i; theta) - y_i||^2 is J_i^T J_i with J_i = d f(x_i)/d theta (out, P); its rows
    are the per-sample gradients from ``nndyn_fast.training.per_sample_gradients``. (Any theta is
    an interpolation minimum of the targets y_i = f(x_i; theta).) Other loss normalisations
    rescale lr: a per-sample loss c ||f - y||^2 corresponds to ``lr * 2 c`` here.

    Parameters
    ----------
    mlp : ``nndyn_fast.training.MLP``.
    theta : (P,) flat parameters.
    X : (n, n_in) inputs.
    lr, batch_size, **kwargs : as in :func:`sgd_lyapunov`.
    """
    G, q = _mlp_gradients(mlp, theta, X)
    return sgd_lyapunov(G, lr, batch_size, rows_per_sample=q, **kwargs)


# ============================================================================================
# Mean-square stability
# ============================================================================================
def _second_moment_operator(op: _Operator, lr: float, B: int, sampling: str) -> Callable:
    n, m = op.n, op.m
    if op.kind == "rank":
        C3 = op.A.reshape(n, op.q, m)
        Hbar = op.A.T @ op.A / n

        def sum_hsh(S: np.ndarray) -> np.ndarray:
            Y = np.einsum("nqa,ab->nqb", C3, S)
            P = np.einsum("nqb,npb->nqp", Y, C3)
            Z = np.einsum("nqp,npb->nqb", P, C3)
            return op.A.T @ Z.reshape(n * op.q, m)
    else:
        H = op.A
        Hbar = H.mean(0)

        def sum_hsh(S: np.ndarray) -> np.ndarray:
            return np.einsum("nab,bc,ncd->ad", H, S, H, optimize=True)

    if sampling == "with":
        a_self, a_cross = 1.0 / (B * n), 1.0 - 1.0 / B
    else:
        p1 = B / n
        p2 = B * (B - 1) / (n * (n - 1)) if n > 1 else 0.0
        a_self = (p1 - p2) / B**2
        a_cross = p2 * n * n / B**2

    def T(S: np.ndarray) -> np.ndarray:
        HS = Hbar @ S
        return S - lr * (HS + S @ Hbar) + lr**2 * (a_self * sum_hsh(S) + a_cross * HS @ Hbar)

    return T


def _check_mean_square_lr(op: _Operator, lr: float) -> None:
    """Refuse a learning rate whose second-moment operator would overflow float64."""
    scale = lr * max(1.0, op.largest_norm())
    if not scale <= _MS_SCALE_LIMIT:
        raise ValueError(
            f"lr = {lr:g} is too large for the mean-square exponent: lr * max(1, max_i ||H_i||)"
            f" = {scale:.3g} must be at most {_MS_SCALE_LIMIT:g} (beyond it the second-moment "
            "operator overflows float64; the second moment then grows by far more than e^230 "
            "per step)"
        )


def mean_square_exponent(
    G: Any,
    lr: float,
    batch_size: int,
    *,
    sampling: str = "with",
    rows_per_sample: int = 1,
) -> float:
    """Mean-square growth rate of linearised SGD: (1/2) log rho(T), T(S) = E[M S M^T].

    With M = I - (lr/B) sum_{i in batch} H_i, the second moment S_t = E[v_t v_t^T] evolves by
    S_{t+1} = S_t - lr (Hbar S_t + S_t Hbar) + lr^2 E[(1/B^2) sum_{b,c} H_b S_t H_c], Hbar the
    mean Hessian; for B i.i.d. indices E[...] = (1/B) mean_i H_i S H_i + (1 - 1/B) Hbar S Hbar,
    for B distinct indices the pair probabilities B(B-1)/(n(n-1)) replace (1 - 1/B). T is a
    positive map, so its spectral radius is a real eigenvalue (computed on the span of the g_i).
    The linearisation is mean-square stable iff the
    returned value is < 0; it is never below the top Lyapunov exponent (Jensen), so it is the
    stricter criterion. Since each M is symmetric, T is self-adjoint for the trace inner product
    and rho(T) is its largest eigenvalue (dense for r <= 20, Lanczos otherwise).

    Parameters
    ----------
    G, lr, batch_size, sampling, rows_per_sample : as in :func:`sgd_lyapunov`.

    Returns
    -------
    float, (1/2) log rho(T) per step (-inf if T = 0).

    Raises
    ------
    ValueError for the inputs :func:`sgd_lyapunov` refuses, and for an lr so large that
    lr * max_i ||H_i|| exceeds 1e100 (the operator would overflow float64).
    """
    sampling = check_option("sampling", sampling, _SAMPLING)
    op = _operator_from(G, rows_per_sample, "span")
    lr, B = _check_lr_batch(op, lr, batch_size)
    _check_mean_square_lr(op, lr)
    return _mean_square(op, lr, B, sampling)


def _mean_square(op: _Operator, lr: float, B: int, sampling: str) -> float:
    """:func:`mean_square_exponent` on a built operator with checked options."""
    m = op.m
    with for_work(None, blas=_SECONDS_PER_CUBE * (m**6 if m <= 20 else m**3)):
        return _mean_square_pinned(op, lr, B, sampling)


def _mean_square_pinned(op: _Operator, lr: float, B: int, sampling: str) -> float:
    T = _second_moment_operator(op, lr, B, sampling)
    m = op.m
    if m <= 20:
        cols = np.empty((m * m, m * m))
        E = np.zeros((m, m))
        for j in range(m * m):
            E.flat[j] = 1.0
            cols[:, j] = T(E).ravel()
            E.flat[j] = 0.0
        rho = float(np.max(np.abs(np.linalg.eigvals(cols))))
    else:
        # Every factor M is symmetric, so T is self-adjoint for <A, B> = tr(A^T B): Lanczos for
        # its largest eigenvalue, which is the Perron root rho(T) of the positive map.
        # (the Lanczos basis is capped at about 200 MB of vectors)
        cap = int(min(400, m * m, max(20, 2e8 // (8 * m * m))))
        rho = top_eigenpairs(
            lambda v: T(v.reshape(m, m)).ravel(), v0=np.eye(m).ravel(), tol=1e-12, maxiter=cap
        ).eigenvalues[0]
    if not math.isfinite(rho):
        raise ValueError(
            f"the mean-square operator at lr = {lr:g} has a non-finite spectral radius; lower lr"
        )
    return 0.5 * math.log(rho) if rho > 0 else -math.inf


# ============================================================================================
# Stability diagram
# ============================================================================================
@dataclass(frozen=True)
class StabilityDiagram:
    """lambda over a grid of (B, lr): arrays of shape (n_batch, n_lr).

    ``lam`` (top exponent), ``lam_low``/``lam_high`` (its confidence interval), ``ms`` (mean-
    square exponent), ``lam_max`` (top eigenvalue of the mean Hessian) and ``gd_threshold``
    = 2 / lam_max.
    """

    lrs: np.ndarray
    batch_sizes: np.ndarray
    lam: np.ndarray
    lam_low: np.ndarray
    lam_high: np.ndarray
    ms: np.ndarray
    lam_max: float
    gd_threshold: float
    meta: dict = field(default_factory=dict)

    def largest_stable_lr(self, criterion: str = "lam") -> np.ndarray:
        """The largest learning rate of the grid with a negative exponent, per batch size.

        ``criterion`` is ``"lam"`` (almost-sure stability) or ``"ms"`` (mean-square); 0 where
        no learning rate of the grid is stable. Returns an array (n_batch,).
        """
        check_option("criterion", criterion, ("lam", "ms"))
        exponent = self.lam if criterion == "lam" else self.ms
        stable = np.where(exponent < 0, self.lrs[None, :], 0.0)
        return stable.max(axis=1)


_DIAGRAM_NAMES = {
    "lam": "top Lyapunov exponent lambda of linearised SGD (per step)",
    "lam_low": "lower end of the confidence interval of lambda",
    "lam_high": "upper end of the confidence interval of lambda",
    "ms": "mean-square growth rate (per step)",
}


def sgd_stability_diagram(
    G: Any,
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    *,
    steps: int = 20_000,
    k: int = 1,
    seed: int = 0,
    transient: int = 1000,
    sampling: str = "with",
    replicas: int = 4,
    rows_per_sample: int = 1,
    mean_square: bool = True,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    extra_params: dict[str, Any] | None = None,
) -> StabilityDiagram:
    """Top Lyapunov exponent of linearised SGD over a grid of (lr, B), beside the GD threshold.

    For each batch size B and learning rate lr, lambda(lr, B) from :func:`sgd_lyapunov` (seed
    ``(seed, iB, ilr)``) and, with ``mean_square``, the mean-square exponent from
    :func:`mean_square_exponent`. SGD is almost surely stable where lambda < 0, mean-square
    stable where ms < 0 (a subset); full-batch GD is stable for lr < 2 / lambda_max.

    Parameters
    ----------
    G : as in :func:`sgd_lyapunov`.
    lrs : (n_lr,) learning rates > 0.
    batch_sizes : (n_batch,) batch sizes in [1, n].
    steps, k, transient, sampling, replicas, rows_per_sample : as in :func:`sgd_lyapunov`.
    seed : integer >= 0; the point (iB, ilr) uses the seed ``[seed, iB, ilr]``.
    mean_square : also compute the mean-square exponent.
    out : optional HDF5 file: series ``diagram`` with one row per batch size (batch_size, lam,
        lam_low, lam_high, ms), committed row by row, the grids and G as the run's inputs, and
        rank, lam_max and gd_threshold in its summary.
    overwrite : replace an existing ``out``.
    resume : continue the diagram in ``out`` after its last committed row (each point has its
        own seed, so the result is bitwise that of an uninterrupted run); refused (ValueError
        naming the difference) when G, a grid or an option differs from the stored run.
    progress : report progress on stderr once per batch size (see :mod:`nndyn_fast.progress`).
    extra_params : JSON-able options stored in the run file's ``/params`` beside the run's own
        (the command line's options); compared on resume like the others.

    Returns
    -------
    StabilityDiagram
    """
    lrs_a = as_array("lrs", lrs, ndim=1)
    if lrs_a.size == 0 or np.any(lrs_a <= 0):
        raise ValueError("lrs must be a non-empty list of learning rates > 0")
    bs = np.asarray(batch_sizes)
    if bs.ndim != 1 or bs.size == 0:
        raise ValueError("batch_sizes must be a non-empty list of integers")
    bs = np.array([check_int("batch_sizes", b, minimum=1) for b in bs], dtype=np.int64)
    op = _operator_from(G, rows_per_sample, "span")
    if np.any(bs > op.n):
        raise ValueError(f"batch_sizes must be <= the number of samples n = {op.n}, got {bs}")
    sampling = check_option("sampling", sampling, _SAMPLING)
    opts = _sgd_options(
        op,
        "span",
        steps=steps,
        k=k,
        transient=transient,
        replicas=replicas,
        reorth_every=1,
        n_blocks=20,
        level=0.95,
    )
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(mean_square, (bool, np.bool_)):
        raise ValueError(f"mean_square must be True or False, got {mean_square!r}")
    if extra_params is not None and not isinstance(extra_params, dict):
        raise TypeError(f"extra_params must be a dict or None, got {type(extra_params).__name__}")
    mean_square = bool(mean_square)
    if mean_square:
        for lr in lrs_a:
            _check_mean_square_lr(op, float(lr))
    overwrite = check_bool("overwrite", overwrite)
    progress = check_bool("progress", progress)
    resume = check_bool("resume", resume)
    if resume and out is None:
        raise ValueError("resume=True needs out, the run file to continue")
    shape = (bs.size, lrs_a.size)
    cols = {name: np.full(shape, np.nan) for name in ("lam", "lam_low", "lam_high", "ms")}
    run = None
    if out is not None:
        run = start_run(
            out,
            kind="sgd_stability_diagram",
            params={
                "lrs": lrs_a,
                "batch_sizes": bs,
                "steps": opts["steps"],
                "k": opts["k"],
                "seed": seed,
                "transient": opts["transient"],
                "sampling": sampling,
                "replicas": opts["replicas"],
                "rows_per_sample": op.q,
                "mean_square": mean_square,
                **(extra_params or {}),
            },
            inputs={"G": op.source},
            series={
                "diagram": {
                    "batch_size": {"dtype": np.int64, "long_name": "batch size B"},
                    **{
                        name: {
                            "shape": (lrs_a.size,),
                            "dims": ("lr",),
                            "units": "1",
                            "long_name": _DIAGRAM_NAMES[name],
                        }
                        for name in cols
                    },
                }
            },
            coords={"diagram": {"lr": (lrs_a, "1", "learning rate lr")}},
            description="SGD stability diagram: the top Lyapunov exponent of linearised SGD "
            "(with its confidence interval, and the mean-square rate) per batch size and "
            "learning rate; negative is stable",
            rows={"diagram": int(bs.size)},
            checkpoint={"next_row": 0},
            resume=resume,
            overwrite=overwrite,
        )
    with run if run is not None else nullcontext():
        first = 0
        if run is not None:
            run.summarize(rank=op.rank, lam_max=op.lam_max, gd_threshold=op.gd_threshold)
            first = int(run.checkpoint["next_row"])
            kept = _committed_rows(run, "diagram", tuple(cols))
            for name, arr in cols.items():
                arr[:first] = kept[name]
        bar = progress_bar(progress, bs.size * lrs_a.size, desc="SGD diagram", unit="point")
        for i in range(first, bs.size):
            bar.update((i + 1) * lrs_a.size - lrs_a.size)
            B = int(bs[i])
            for j, lr in enumerate(lrs_a):
                res = _sgd_exponents(
                    op, float(lr), B, sampling=sampling, space="span", seed=[seed, i, j], **opts
                )
                cols["lam"][i, j] = res.exponents[0]
                cols["lam_low"][i, j] = res.ci_low[0]
                cols["lam_high"][i, j] = res.ci_high[0]
                if mean_square:
                    cols["ms"][i, j] = _mean_square(op, float(lr), B, sampling)
            if run is not None:
                run.append(
                    "diagram",
                    batch_size=np.array([B]),
                    **{name: arr[i][None] for name, arr in cols.items()},
                )
                run.commit(next_row=i + 1)
        bar.update(bs.size * lrs_a.size)
    return StabilityDiagram(
        lrs=lrs_a,
        batch_sizes=bs,
        lam=cols["lam"],
        lam_low=cols["lam_low"],
        lam_high=cols["lam_high"],
        ms=cols["ms"],
        lam_max=op.lam_max,
        gd_threshold=op.gd_threshold,
        meta={
            "steps": opts["steps"],
            "sampling": sampling,
            "replicas": opts["replicas"],
            "rank": op.rank,
        },
    )
