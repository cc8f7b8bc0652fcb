"""Parameter sweeps: one function over a grid of points, on one machine or a Dask cluster.

:func:`sweep` evaluates ``fn(**point)`` at every point of a grid and streams the results into
one HDF5 run file (see :mod:`nndyn_fast.storage`) as they arrive, so that a killed sweep can be
resumed: finished points are skipped. The same call runs serially in-process, on a local pool of
worker processes (a ``dask.distributed`` ``LocalCluster``) or on any Dask cluster, and gives the
same table in every case: each point gets its own reproducible random seed, spawned from one
``numpy.random.SeedSequence`` by point index, and the result is ordered by point index whatever
the order in which points finish.

Run file layout (kind ``"sweep"``)::

    /params        grid_names, n_points, seed, fn, cartesian, grid_shape, grid_fingerprint (attrs)
                   and the full grid table as datasets grid_<name> (n_points,)
    /points/index  (n,) int64, point index of each committed row (rows in completion order)
    /points/<name> (n,) the grid value of each grid name (int64, float64 or bool)
    /points/<key>  (n, *shape) float64, the results
    /checkpoint    done: sorted indices of the finished points

:func:`kuramoto_order_parameter` is a ready-made sweep target (the all-to-all Kuramoto model with
Lorentzian frequencies, whose order parameter has the Ott–Antonsen closed form).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import (
    check_bool,
    check_int,
    check_option,
    check_out_path,
    check_positive,
    check_real,
    check_seed,
    check_size,
    check_steps,
)
from .storage import TrajectoryWriter, open_run

__all__ = ["SweepPointError", "SweepResult", "kuramoto_order_parameter", "sweep"]

# Finished rows are written and committed (made durable, with the checkpoint) at most this
# often, and always before the sweep returns or raises: a kill -9 loses at most this many seconds
# of results, and the O(points) checkpoint is not rewritten after every cheap point.
COMMIT_SECONDS = 0.5
_RESERVED = ("index",)
_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s:/]+:\d+/?$|^[a-z][a-z0-9+.-]*://\S+$")


class SweepPointError(RuntimeError):
    """``fn`` raised at a grid point; the original exception is the ``__cause__``.

    Attributes ``index`` (point index) and ``point`` (its parameters). Every point finished
    before it stays committed in the run file, so ``resume=True`` continues the sweep.
    """

    def __init__(self, message: str, index: int, point: dict[str, Any]):
        super().__init__(message)
        self.index = index
        self.point = point


@dataclass(frozen=True)
class SweepResult:
    """The table of a finished sweep, ordered by point index.

    Attributes
    ----------
    names : grid parameter names, in grid order.
    grid : ``{name: array (P,)}``, the value of each parameter at each point.
    results : ``{key: array (P, *shape)}`` float64, what ``fn`` returned at each point.
    shape : the grid's shape for a Cartesian grid (reshape a column with
        ``res["r"].reshape(res.shape)``); ``None`` for an explicit list of points.
    path : the run file, or ``None``.
    computed : points evaluated by this call (the others were read back from ``out``).
    """

    names: tuple[str, ...]
    grid: dict[str, np.ndarray]
    results: dict[str, np.ndarray]
    shape: tuple[int, ...] | None
    path: str | None
    computed: int

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.grid:
            return self.grid[key]
        if key in self.results:
            return self.results[key]
        raise KeyError(
            f"{key!r} is neither a grid name {list(self.grid)} nor a result key "
            f"{list(self.results)}"
        )

    def __len__(self) -> int:
        return len(next(iter(self.grid.values())))


# -- grid ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    names: tuple[str, ...]
    columns: dict[str, np.ndarray]  # (P,) each
    shape: tuple[int, ...] | None

    @property
    def size(self) -> int:
        return len(next(iter(self.columns.values())))

    def point(self, i: int) -> dict[str, Any]:
        return {n: self.columns[n][i].item() for n in self.names}

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for n in self.names:
            col = self.columns[n]
            h.update(f"{n}:{col.dtype.str}:".encode())
            h.update(col.tobytes())
        return h.hexdigest()


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"{where}: parameter names must be identifiers (keyword argument names), got {name!r}"
        )
    if name in _RESERVED:
        raise ValueError(f"{where}: {name!r} is reserved (it names the point-index column)")
    return name


def _column(name: str, values: Any, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return arr.astype(np.bool_)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{where} {name!r} must be finite, got NaN/inf")
        return arr
    raise ValueError(
        f"{where} {name!r} must hold numbers (int, float or bool), got dtype {arr.dtype}; pass "
        "fixed non-numeric options with functools.partial(fn, option=...)"
    )


def _make_grid(grid: Any) -> _Grid:
    """Cartesian product of a dict of 1-D axes (last axis fastest) or an explicit point list."""
    if isinstance(grid, Mapping):
        if not grid:
            raise ValueError("grid is empty: give at least one parameter axis")
        axes = {}
        for name, values in grid.items():
            _check_name(name, "grid")
            if isinstance(values, (str, bytes)) or np.ndim(values) != 1:
                raise ValueError(
                    f"grid axis {name!r} must be a 1-D sequence of values, got "
                    f"{'a string' if isinstance(values, (str, bytes)) else np.shape(values)}"
                    " (wrap a single value in a list)"
                )
            if len(values) == 0:
                raise ValueError(f"grid axis {name!r} is empty")
            axes[name] = _column(name, values, "grid axis")
        names = tuple(axes)
        shape = tuple(len(a) for a in axes.values())
        mesh = np.meshgrid(*axes.values(), indexing="ij")
        cols = {n: np.ascontiguousarray(m.reshape(-1)) for n, m in zip(names, mesh, strict=True)}
        return _Grid(names, cols, shape)
    if isinstance(grid, Sequence) and not isinstance(grid, (str, bytes)):
        if len(grid) == 0:
            raise ValueError("grid is an empty list of points")
        if not all(isinstance(p, Mapping) for p in grid):
            bad = next(i for i, p in enumerate(grid) if not isinstance(p, Mapping))
            raise TypeError(
                f"grid point {bad} must be a dict of parameter values, got "
                f"{type(grid[bad]).__name__}"
            )
        names = tuple(_check_name(n, "grid point 0") for n in grid[0])
        if not names:
            raise ValueError("grid point 0 is an empty dict")
        for i, p in enumerate(grid):
            if set(p) != set(names):
                raise ValueError(
                    f"grid point {i} has keys {sorted(p)}, point 0 has "
                    f"{sorted(names)}; every point needs the same names"
                )
            for n in names:
                if np.ndim(p[n]) != 0:
                    raise ValueError(
                        f"grid point {i}: {n!r} must be a scalar, got shape {np.shape(p[n])}"
                    )
        cols = {n: _column(n, [p[n] for p in grid], "grid parameter") for n in names}
        return _Grid(names, cols, None)
    raise TypeError(
        f"grid must be a dict {{name: 1-D sequence}} or a list of dicts, got {type(grid).__name__}"
    )


def _describe(fn: Any) -> str:
    if isinstance(fn, functools.partial):
        kw = ", ".join(f"{k}={v!r}" for k, v in sorted(fn.keywords.items()))
        args = ", ".join(repr(a) for a in fn.args)
        return f"partial({_describe(fn.func)}, {', '.join(s for s in (args, kw) if s)})"
    mod = getattr(fn, "__module__", None) or "?"
    return f"{mod}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _takes_seed(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("seed")
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


# -- results ------------------------------------------------------------------------------------
def _where(grid: _Grid, i: int) -> str:
    return f"point {i} {grid.point(i)}"


def _normalise(res: Any, i: int, grid: _Grid) -> dict[str, np.ndarray]:
    if not isinstance(res, Mapping) or not res:
        raise TypeError(
            f"fn must return a non-empty dict {{name: float or array}}, got "
            f"{type(res).__name__} at {_where(grid, i)}"
        )
    out = {}
    for key, value in res.items():
        if not isinstance(key, str) or not key or "/" in key:
            raise ValueError(
                f"result keys must be non-empty strings without '/', got {key!r} "
                f"at {_where(grid, i)}"
            )
        if key in grid.names or key in _RESERVED:
            raise ValueError(
                f"result key {key!r} clashes with a grid name or the 'index' "
                f"column at {_where(grid, i)}; rename it"
            )
        if np.iscomplexobj(value):
            raise TypeError(
                f"result {key!r} is complex at {_where(grid, i)}; return the real "
                "and imaginary parts (or abs and angle) as separate keys"
            )
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"result {key!r} must be a number or a numeric array, got "
                f"{type(value).__name__} at {_where(grid, i)}"
            ) from None
        out[key] = arr
    return out


def _check_schema(
    res: dict[str, np.ndarray], schema: dict[str, tuple], i: int, grid: _Grid
) -> None:
    if set(res) != set(schema):
        raise ValueError(
            f"fn returned keys {sorted(res)} at {_where(grid, i)}, but earlier "
            f"points returned {sorted(schema)}; every point must return the same "
            "keys"
        )
    for key, arr in res.items():
        if arr.shape != schema[key]:
            raise ValueError(
                f"result {key!r} has shape {arr.shape} at {_where(grid, i)}, but "
                f"shape {schema[key]} at earlier points"
            )


def _call_point(fn: Callable, point: dict[str, Any], seed: Any) -> Any:
    """Evaluate one point (runs on a worker; module-level so that it pickles by reference)."""
    return fn(**point) if seed is None else fn(**point, seed=seed)


# -- the sink: validation, HDF5 streaming, in-memory table ---------------------------------------
class _Sink:
    def __init__(
        self,
        grid: _Grid,
        params: dict[str, Any],
        out: Path | None,
        overwrite: bool,
        writer: TrajectoryWriter | None,
        done: set[int],
        schema: dict | None,
    ):
        self.grid, self.params, self.out, self.overwrite = grid, params, out, overwrite
        self.writer, self.done, self.schema = writer, done, schema
        self.rows: dict[int, dict[str, np.ndarray]] = {}
        self.buffer: list[tuple[int, dict[str, np.ndarray]]] = []  # rows not yet written
        self.last_commit = time.monotonic()
        self.computed = 0

    def add(self, i: int, raw: Any) -> None:
        res = _normalise(raw, i, self.grid)
        if self.schema is None:
            self.schema = {k: v.shape for k, v in res.items()}
        else:
            _check_schema(res, self.schema, i, self.grid)
        self.computed += 1
        self.done.add(i)
        if self.out is None:
            self.rows[i] = res
            return
        if self.writer is None:
            series = {"index": ((), np.int64)}
            series.update({n: ((), self.grid.columns[n].dtype) for n in self.grid.names})
            series.update({k: (shape, np.float64) for k, shape in self.schema.items()})
            self.writer = TrajectoryWriter.create(
                self.out,
                kind="sweep",
                params=self.params,
                overwrite=self.overwrite,
                series={"points": series},
            )
            self.buffer.append((i, res))
            self.commit(force=True)  # the file holds a commit from the start: always resumable
            return
        self.buffer.append((i, res))

    def commit(self, force: bool = False) -> None:
        """Write the buffered rows (one resize per field) and commit them with the checkpoint,
        if ``force`` or ``COMMIT_SECONDS`` have passed since the last commit."""
        if self.writer is None or not self.buffer:
            return
        if force or time.monotonic() - self.last_commit >= COMMIT_SECONDS:
            idx = np.array([i for i, _ in self.buffer], np.int64)
            cols = {"index": idx}
            cols.update({n: self.grid.columns[n][idx] for n in self.grid.names})
            cols.update({k: np.stack([r[k] for _, r in self.buffer]) for k in self.schema})
            self.writer.append("points", **cols)
            done = np.array(sorted(self.done), np.int64)
            self.writer.commit(done=done, n_done=done.size)
            self.buffer = []
            self.last_commit = time.monotonic()

    def close(self, exc: BaseException | None) -> None:
        if self.writer is None:
            return
        self.commit(force=True)
        if exc is None:
            self.writer.close("complete")
        else:
            self.writer.close("failed", f"{type(exc).__name__}: {exc}")

    def table(self) -> dict[str, np.ndarray]:
        """Result columns ordered by point index."""
        n = self.grid.size
        if self.out is None:
            return {k: np.stack([self.rows[i][k] for i in range(n)]) for k in self.schema}
        with open_run(self.out) as run:
            idx = run.read("points", "index")
            order = np.argsort(idx, kind="stable")
            if not np.array_equal(idx[order], np.arange(n)):
                raise ValueError(f"{str(self.out)!r} does not hold every point exactly once")
            return {k: run.read("points", k)[order] for k in self.schema}


def _resume(out: Path, grid: _Grid, params: dict[str, Any]) -> tuple[TrajectoryWriter, set, dict]:
    with open_run(out) as run:
        if run.attrs.get("kind") != "sweep" or "points" not in run.rows:
            raise ValueError(f"out: {str(out)!r} is not a sweep file, cannot resume it")
        stored = run.params
        for key in ("grid_names", "n_points", "grid_fingerprint", "seed", "fn"):
            if stored.get(key) != params[key]:
                raise ValueError(
                    f"cannot resume {str(out)!r}: its {key} is {stored.get(key)!r}, this "
                    f"sweep's is {params[key]!r}; resume with the same fn, grid and seed"
                )
        fields = json.loads(run["points"].attrs["fields"])
        schema = {
            k: run["points"][k].shape[1:]
            for k in fields
            if k not in grid.names and k not in _RESERVED
        }
    writer = TrajectoryWriter.resume(out)
    done = {int(i) for i in writer.checkpoint.get("done", ())}
    return writer, done, schema


# -- schedulers ---------------------------------------------------------------------------------
def _distributed() -> Any:
    """The ``distributed`` module, or ``None`` when dask.distributed is not installed."""
    if importlib.util.find_spec("distributed") is None:
        return None
    import distributed

    return distributed


def _scheduler_kind(scheduler: Any) -> str:
    """Check ``scheduler`` (before any file or cluster is touched) and name its kind:
    "serial", "local", "address" or "client"."""
    if isinstance(scheduler, str) and scheduler == "serial":
        return "serial"
    dist = _distributed()
    if scheduler is None and dist is None:
        return "serial"  # documented fallback: no dask, run in-process
    if isinstance(scheduler, str):
        if scheduler != "local" and not _ADDRESS.match(scheduler):
            raise ValueError(
                "scheduler must be one of [None, 'serial', 'local', an address such as "
                f"'tcp://host:8786', a distributed.Client], got {scheduler!r}"
            )
    elif scheduler is not None and (dist is None or not isinstance(scheduler, dist.Client)):
        raise TypeError(
            "scheduler must be None, 'serial', 'local', an address string or a "
            f"distributed.Client, got {type(scheduler).__name__}"
        )
    if dist is None:
        raise ValueError(
            f"scheduler={scheduler!r} needs dask.distributed: pip install "
            "'nndyn_fast[distributed]' (or use scheduler='serial')"
        )
    if scheduler is None or scheduler == "local":
        return "local"
    return "client" if isinstance(scheduler, dist.Client) else "address"


def _client_for(kind: str, scheduler: Any, n_workers: int | None) -> tuple[Any, list]:
    """(client or None for serial, objects to close afterwards)."""
    if kind == "serial":
        return None, []
    if kind == "client":
        return scheduler, []
    dist = _distributed()
    if kind == "local":
        workers = (os.cpu_count() or 1) if n_workers is None else n_workers
        cluster = dist.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env={"NUMBA_NUM_THREADS": "1"},
        )
        try:
            client = dist.Client(cluster)
        except BaseException:
            cluster.close()
            raise
        return client, [client, cluster]
    try:
        client = dist.Client(scheduler, timeout="30s")
    except OSError as exc:
        raise ValueError(f"scheduler: cannot connect to {scheduler!r}: {exc}") from None
    return client, [client]


def _run_serial(fn, grid, seeds, pending, sink) -> None:
    for i in pending:
        try:
            raw = _call_point(fn, grid.point(i), seeds[i])
        except Exception as exc:
            raise SweepPointError(
                f"fn raised {type(exc).__name__}: {exc} at {_where(grid, i)}", i, grid.point(i)
            ) from exc
        sink.add(i, raw)
        sink.commit()


def _run_dask(client, fn, grid, seeds, pending, sink) -> None:
    from distributed import as_completed

    futures = client.map(
        _call_point,
        [fn] * len(pending),
        [grid.point(i) for i in pending],
        [seeds[i] for i in pending],
        pure=False,
    )
    index = {f.key: i for f, i in zip(futures, pending, strict=True)}
    failed: tuple[int, Any] | None = None
    try:
        ac = as_completed(futures)
        for batch in ac.batches():
            ok = [f for f in batch if f.status == "finished"]
            bad = [f for f in batch if f.status != "finished"]
            for f, raw in sorted(
                zip(ok, client.gather(ok), strict=True), key=lambda fr: index[fr[0].key]
            ):
                sink.add(index[f.key], raw)
            sink.commit()
            if bad:
                failed = min(((index[f.key], f) for f in bad), key=lambda t: t[0])
                break
        if failed is not None:
            # keep the points that finished meanwhile, then stop the rest
            ok = [f for f in futures if f.status == "finished" and index[f.key] not in sink.done]
            for f, raw in zip(ok, client.gather(ok), strict=True):
                sink.add(index[f.key], raw)
            i, fut = failed
            exc = fut.exception()
            if not isinstance(exc, Exception):  # cancelled, lost worker, ...
                exc = RuntimeError(f"task {fut.status}")
            raise SweepPointError(
                f"fn raised {type(exc).__name__}: {exc} at {_where(grid, i)}", i, grid.point(i)
            ) from exc
    finally:
        client.cancel([f for f in futures if not f.done()])


# -- the public function ------------------------------------------------------------------------
def sweep(
    fn: Callable[..., Mapping[str, Any]],
    grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    *,
    scheduler: Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    n_workers: int | None = None,
    seed: int = 0,
) -> SweepResult:
    """Evaluate ``fn(**point)`` at every grid point, in parallel, streaming results to HDF5.

    For points p_0, ..., p_{P-1} of ``grid`` the sweep computes ``results[i] = fn(**p_i)``
    (plus ``seed=s_i`` when ``fn`` has a ``seed`` parameter), with s_i the i-th child of
    ``np.random.SeedSequence(seed).spawn(P)``: independent streams, fixed by (seed, i), so the
    table does not depend on the scheduler, the number of workers or the completion order.

    Parameters
    ----------
    fn : callable
        ``fn(**point) -> {key: float or array}``. It must return the same keys with the same
        shapes at every point (values are stored as float64). For the process and cluster
        schedulers it must pickle: a module-level function, or a ``functools.partial`` of one
        (bind fixed non-numeric options that way). If it has a ``seed`` parameter (and ``seed``
        is not a grid name) it receives the point's ``numpy.random.SeedSequence``; use
        ``np.random.default_rng(seed)``.
    grid : dict ``{name: 1-D sequence}`` or list of dicts
        A dict gives the Cartesian product of its axes in C order: the first axis varies
        slowest and the last fastest, point ``i`` is at ``np.unravel_index(i, shape)`` (as
        ``itertools.product`` and ``np.meshgrid(..., indexing="ij")``). A list of dicts gives
        explicit points, all with the same names, in list order. Values must be numbers
        (int, float, bool); names must be identifiers other than ``"index"``.
    scheduler : None, "serial", "local", address string or distributed.Client
        ``None`` (default): a ``dask.distributed.LocalCluster`` of ``n_workers`` processes with
        one thread each (Numba threads 1 per worker), closed afterwards; **if dask.distributed
        is not installed the sweep runs serially in-process instead** (install the
        ``distributed`` extra for parallel runs). ``"local"``: the same cluster, but an error
        without dask. ``"serial"``: in-process, in point order (debugging, tests, profiling).
        An address (``"tcp://host:8786"``, ``"host:8786"``): connect ``Client(address)`` to a
        running cluster (workers need ``nndyn_fast`` and ``fn``'s module installed). A
        ``distributed.Client``: used as is and left open.
    out : path, optional
        Stream results into this HDF5 run file (layout in :mod:`nndyn_fast.sweep`): rows are
        buffered as points finish (in completion order) and written and committed together, with
        the set of finished points as checkpoint, once ``COMMIT_SECONDS`` (0.5 s) have passed
        since the last commit and always before returning or raising. The file is created (and
        first committed) when the first result arrives. Without ``out`` results stay in memory.
    overwrite : bool
        Replace an existing ``out``.
    resume : bool
        Continue the sweep stored in ``out``: finished points are read back, only the missing
        ones are computed. ``fn`` (by name), the grid and ``seed`` must be the same.
    n_workers : int, optional
        Worker processes of the local cluster (default ``os.cpu_count()``).
    seed : int
        Root of the per-point seeds (>= 0).

    Returns
    -------
    SweepResult
        The grid table and result columns as numpy arrays ordered by point index.

    Raises
    ------
    ValueError
        Empty grid or axis, a non-1-D axis, non-numeric or NaN grid values, unknown scheduler
        string, existing ``out`` without ``overwrite``/``resume``, a resumed file made by a
        different fn/grid/seed, and results whose keys or shapes differ between points (naming
        the point; earlier points stay committed).
    TypeError
        ``fn`` not callable, ``grid`` or ``scheduler`` of the wrong type, a result that is not
        a dict of real numbers/arrays (naming the point).
    SweepPointError
        ``fn`` raised at a point (the original exception is the cause); finished points stay
        committed, so ``resume=True`` computes only the rest.

    Examples
    --------
    >>> res = sweep(kuramoto_order_parameter, {"K": np.linspace(0.5, 3, 11)}, out="rK.h5")
    >>> res["K"], res["r"]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    g = _make_grid(grid)
    seed = check_int("seed", seed, minimum=0)
    if n_workers is not None:
        n_workers = check_int("n_workers", n_workers, minimum=1)
    overwrite = check_bool("overwrite", overwrite)
    resume = check_bool("resume", resume)
    if overwrite and resume:
        raise ValueError("pass either overwrite=True or resume=True, not both")
    if resume and out is None:
        raise ValueError("resume=True needs out (the run file to continue)")
    path = None if out is None else check_out_path("out", out, overwrite=overwrite, resume=resume)
    params = {
        "grid_names": json.dumps(list(g.names)),
        "n_points": g.size,
        "seed": seed,
        "fn": _describe(fn),
        "cartesian": g.shape is not None,
        "grid_shape": json.dumps(list(g.shape or ())),
        "grid_fingerprint": g.fingerprint(),
        **{f"grid_{n}": g.columns[n] for n in g.names},
    }
    kind = _scheduler_kind(scheduler)  # bad kinds fail before any file or cluster is touched
    writer, done, schema = None, set(), None
    if resume:
        writer, done, schema = _resume(path, g, params)
    sink = _Sink(g, params, path, overwrite, writer, done, schema)
    passes_seed = _takes_seed(fn) and "seed" not in g.names
    seeds = np.random.SeedSequence(seed).spawn(g.size) if passes_seed else [None] * g.size
    pending = [i for i in range(g.size) if i not in done]
    exc: BaseException | None = None
    owned: list = []
    try:
        if pending:  # a finished sweep that is resumed starts no cluster
            client, owned = _client_for(kind, scheduler, n_workers)
            if client is None:
                _run_serial(fn, g, seeds, pending, sink)
            else:
                _run_dask(client, fn, g, seeds, pending, sink)
    except BaseException as e:
        exc = e
        raise
    finally:
        try:
            sink.close(exc)
        finally:
            for obj in owned:
                obj.close()
    if sink.schema is None:  # nothing computed and nothing stored: cannot happen with P >= 1
        raise ValueError("the sweep produced no results")
    return SweepResult(
        names=g.names,
        grid={n: g.columns[n].copy() for n in g.names},
        results=sink.table(),
        shape=g.shape,
        path=None if path is None else str(path),
        computed=sink.computed,
    )


# -- a built-in target --------------------------------------------------------------------------
def kuramoto_order_parameter(
    K: float,
    N: int = 5000,
    gamma: float = 0.5,
    t_end: float = 100.0,
    dt: float = 0.05,
    *,
    t_from: float | None = None,
    freq: str = "quantile",
    seed: Any = None,
) -> dict[str, float]:
    """Stationary order parameter of the all-to-all Kuramoto model with Lorentzian frequencies.

    dθ_i/dt = ω_i + (K/N) Σ_j sin(θ_j − θ_i), ω_i Lorentzian (Cauchy) of half-width γ centred
    at 0, integrated with RK4 on the matrix-free complete graphon ``Graphon.constant(1.0)``
    from uniformly random phases. For N → ∞ the Ott–Antonsen reduction gives the stationary
    r = sqrt(1 − 2γ/K) above K_c = 2γ and r = 0 below; at finite N, r = O(N^{-1/2}) below.

    Parameters
    ----------
    K : float
        Coupling strength.
    N : int
        Number of oscillators.
    gamma : float
        Half-width γ > 0 of the frequency distribution (rad per time unit).
    t_end, dt : float
        Length of the run and RK4 step (time units).
    t_from : float, optional
        Average r(t) over t > t_from (default t_end / 2, after the transient).
    freq : "quantile" or "random"
        ``"quantile"`` (default): deterministic frequencies, the Cauchy quantiles at
        (i − 1/2)/N (less finite-N noise); ``"random"``: N independent Cauchy draws.
    seed : int, SeedSequence or None
        Seed of the initial phases (and of the frequencies with ``freq="random"``); a sweep
        passes each point its own ``SeedSequence``.

    Returns
    -------
    dict
        ``{"r": time average of r(t) over t > t_from, "r_std": its standard deviation}``.
    """
    from scipy import stats

    from .graphs import Graphon
    from .meanfield import Kuramoto, simulate

    N = check_size("N", N, item_bytes=64)  # frequencies, phases and the run's state
    gamma = check_positive("gamma", gamma)
    t_end = check_positive("t_end", t_end)
    dt = check_positive("dt", dt)
    check_option("freq", freq, ("quantile", "random"))
    seed = check_seed("seed", seed, allow_none=True)
    t_from = t_end / 2 if t_from is None else check_real("t_from", t_from)
    if not 0 <= t_from < t_end:
        raise ValueError(f"t_from must be in [0, t_end) = [0, {t_end:g}), got {t_from!r}")
    rng = np.random.default_rng(0 if seed is None else seed)
    if freq == "quantile":
        omega = stats.cauchy(0.0, gamma).ppf((np.arange(1, N + 1) - 0.5) / N)
    else:
        omega = gamma * rng.standard_cauchy(N)
    theta0 = rng.uniform(0.0, 2.0 * np.pi, N)
    model = Kuramoto(omega, Graphon.constant(1.0), K)
    steps = check_steps("t_end / dt", np.ceil(t_end / dt - 1e-9))
    run = simulate(model, theta0, t_end, dt, save_every=max(steps, 1))
    r = run.r[run.t > t_from]
    return {"r": float(r.mean()), "r_std": float(r.std())}
