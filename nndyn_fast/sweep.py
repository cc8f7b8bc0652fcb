"""Parameter sweeps: one function over a grid of points, on one machine or a Dask cluster.

:func:`sweep` evaluates ``fn(**point)`` at every point of a grid and streams the results into
one run file (see :mod:`nndyn_fast.runs` and :mod:`nndyn_fast.storage`) as they arrive, so that
a killed sweep can be resumed: finished points are skipped. The same call runs serially
in-process, on a local pool of worker processes (a ``dask.distributed`` ``LocalCluster``) or on
any Dask cluster, and gives the same table in every case: each point gets its own reproducible
random seed, spawned from one ``numpy.random.SeedSequence`` by point index, and row i of the
table is point i whatever the order in which points finish.

Run file layout (kind ``"sweep"``, created by :func:`nndyn_fast.runs.start_run` when the first
result arrives, which fixes the result keys and shapes)::

    /params        fn (module.qualname), fn_self (a callable object's digest), fixed_<name>
                   (options bound with functools.partial), default_<name> (fn's defaults that
                   neither the grid nor the partial set), grid_names, grid_shape, cartesian,
                   n_points, seed, seed_per_point; inputs: grid_<name> (P,), every grid value,
                   and array-valued options. A resume compares all of them.
    /points/index  (P,) int64, the point index: row i is grid point i (preallocated)
    /points/<name> (P,) the grid value of each grid name (int64, float64 or bool)
    /points/<key>  (P, *shape) float64, the results
    /commit        checkpoint: done (P,) bool, the rows that hold a committed result, and crc,
                   the XOR of the CRC-32 of each done row (index, grid values and results in
                   field order); a resume checks it

Rows are written in place (:meth:`~nndyn_fast.storage.TrajectoryWriter.write_rows`) as results
arrive and become part of the run only through the ``done`` mask of a commit record, which is
written after the rows are synced. Read a sweep file with ``f["points/r"][f.checkpoint["done"]]``
(``RunFile.read`` covers appended series only).

:func:`nndyn_fast.meanfield.kuramoto_order_parameter` is a ready-made sweep target (the
all-to-all Kuramoto model with Lorentzian frequencies, whose order parameter has the
Ott–Antonsen closed form).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import pickle
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._validate import (
    check_bool,
    check_int,
    check_out_path,
)
from .progress import progress_bar
from .runs import Run, start_run
from .storage import RunFileError, open_run

__all__ = [
    "SweepClusterError",
    "SweepPointError",
    "SweepResult",
    "sweep",
]

# Finished rows are written and committed (made durable, with the checkpoint) once
# COMMIT_SECONDS have passed since the last commit or COMMIT_BYTES of rows are waiting, and
# always before the sweep returns or raises: a kill -9 loses at most that much work, and a
# sweep of cheap points does not pay two fsyncs per point.
COMMIT_SECONDS = 0.5
COMMIT_BYTES = 1 << 20
# A cluster with no worker (or a scheduler that does not answer) for NO_WORKERS_SECONDS fails
# the sweep with SweepClusterError; connecting to an address gives up after CONNECT_SECONDS.
NO_WORKERS_SECONDS = 30.0
CONNECT_SECONDS = 10.0
_POLL_SECONDS = 0.01  # wait between looks at the finished futures
_CHECK_SECONDS = 1.0  # between two asks "how many workers?" while nothing finishes
_RESERVED = ("index",)
_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s:/]+:\d+/?$|^[a-z][a-z0-9+.-]*://\S+$")


class SweepPointError(RuntimeError):
    """``fn`` raised at a grid point (or its worker process died running it); the original
    exception is the ``__cause__``.

    Attributes ``index`` (point index) and ``point`` (its parameters). Every point finished
    before it stays committed in the run file, so ``resume=True`` continues the sweep.
    """

    def __init__(self, message: str, index: int, point: dict[str, Any]):
        super().__init__(message)
        self.index = index
        self.point = point


class SweepClusterError(RuntimeError):
    """The Dask cluster stopped working: no worker, or no answer from the scheduler, for
    ``NO_WORKERS_SECONDS``. Every point finished before stays committed in the run file, so
    ``resume=True`` continues the sweep once the cluster is back."""


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


# -- what identifies a sweep (compared on resume) -----------------------------------------------
def _option(value: Any) -> Any:
    """An option as a run parameter: numbers, strings and arrays as they are, JSON-able lists
    and dicts as JSON, anything else by the SHA-256 of its pickle (or its repr)."""
    if value is None or isinstance(value, (bool, int, float, str, np.ndarray)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        with contextlib.suppress(TypeError, ValueError):
            return json.loads(json.dumps(value, allow_nan=True))
    try:
        return "pickle-sha256:" + hashlib.sha256(pickle.dumps(value, protocol=4)).hexdigest()
    except Exception:  # not picklable: its text, the best that is left
        return repr(value)


def _code_digest(fn: Any) -> str | None:
    """``sha256:<hex>`` of a function's code (bytecode, names, constants; a jitted function's
    by :func:`~nndyn_fast.integrate.function_id`), or None for an object without code."""
    if hasattr(fn, "py_func"):
        from .integrate import function_id

        with contextlib.suppress(Exception):
            return function_id(fn)
        return None
    c = getattr(fn, "__code__", None)
    if c is None:
        return None
    h = hashlib.sha256()

    def walk(c: Any) -> None:
        h.update(c.co_code)
        h.update(repr((c.co_names, c.co_varnames, c.co_argcount)).encode())
        for k in c.co_consts:
            if hasattr(k, "co_code"):
                walk(k)
            else:
                h.update(repr(k).encode())

    walk(c)
    return "sha256:" + h.hexdigest()


def _identity(fn: Callable, grid: _Grid, passes_seed: bool) -> dict[str, Any]:
    """``fn``'s module and qualname, the options a ``functools.partial`` binds, the defaults of
    the parameters nothing else sets, and a callable object's own state."""
    target, args, keywords = fn, (), {}
    if isinstance(fn, functools.partial):
        target, args, keywords = fn.func, fn.args, fn.keywords
    if inspect.ismethod(target):  # a bound method: its name and its object's state
        named, state = target, target.__self__
    elif hasattr(target, "__qualname__") and hasattr(target, "__module__"):
        named, state = target, None  # a function (or a class, or a jitted function)
    else:  # a callable object: its class and its state
        named, state = type(target), target
    out: dict[str, Any] = {"fn": f"{named.__module__}.{named.__qualname__}"}
    code = _code_digest(named)
    if code is not None:
        out["fn_code"] = code
    if state is not None:
        out["fn_self"] = _option(state)
    try:
        sig = inspect.signature(target)
        bound = dict(sig.bind_partial(*args, **keywords).arguments)
    except (TypeError, ValueError):
        sig, bound = None, {**{f"arg{k}": a for k, a in enumerate(args)}, **keywords}
    for name, value in bound.items():
        out[f"fixed_{name}"] = _option(value)
    if sig is not None:
        for name, p in sig.parameters.items():
            skip = name in bound or name in grid.names or (name == "seed" and passes_seed)
            if not skip and p.default is not inspect.Parameter.empty:
                out[f"default_{name}"] = _option(p.default)
    return out


def _run_params(fn, grid: _Grid, seed: int, passes_seed: bool) -> tuple[dict, dict]:
    """(parameters, input arrays) of a sweep: everything that fixes its table."""
    params = {
        **_identity(fn, grid, passes_seed),
        "grid_names": list(grid.names),
        "grid_shape": None if grid.shape is None else list(grid.shape),
        "cartesian": grid.shape is not None,
        "n_points": grid.size,
        "seed": seed,
        "seed_per_point": passes_seed,
    }
    inputs = {k: params.pop(k) for k in list(params) if isinstance(params[k], np.ndarray)}
    inputs.update({f"grid_{n}": grid.columns[n] for n in grid.names})
    return params, inputs


def _column_meta(units: Any, long_names: Any) -> dict[str, tuple[str, str | None]]:
    """``{column: (units, long_name or None)}`` from the user's ``units`` and ``long_names``."""
    meta: dict[str, list] = {}
    for arg, value, slot in (("units", units, 0), ("long_names", long_names, 1)):
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise TypeError(f"{arg} must be a dict {{column: str}}, got {type(value).__name__}")
        for key, text in value.items():
            if not isinstance(key, str) or not isinstance(text, str) or not text:
                raise TypeError(
                    f"{arg} must map column names to non-empty strings, got {key!r}: {text!r}"
                )
            meta.setdefault(key, ["1", None])[slot] = text
    return {k: (v[0], v[1]) for k, v in meta.items()}


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


# -- the table: rows in grid order, in memory and in the run file --------------------------------
def _row_crcs(cols: Mapping[str, np.ndarray], n: int) -> list[int]:
    """CRC-32 of each of ``n`` rows: the bytes of its fields, in field order."""
    parts = [
        np.ascontiguousarray(a).reshape(n, int(np.prod(a.shape[1:], dtype=np.int64))).view(np.uint8)
        for a in cols.values()
    ]
    rows = np.ascontiguousarray(np.hstack(parts)) if parts else np.zeros((n, 0), np.uint8)
    return [zlib.crc32(r) for r in rows]


class _Table:
    """The sweep's table: every result in memory (row i = point i) and, with a run file, the
    rows written in place and committed in batches with the done mask."""

    def __init__(self, grid: _Grid, meta: Mapping[str, tuple[str, str | None]] | None = None):
        self.grid = grid
        self.meta = dict(meta or {})  # column -> (units, long_name or None), the user's
        self.committed = np.zeros(grid.size, np.bool_)  # rows in the file's last commit
        self.have = np.zeros(grid.size, np.bool_)  # rows in memory
        self.crc = 0  # XOR of the committed rows' CRC-32
        self.schema: dict[str, tuple[int, ...]] | None = None
        self.results: dict[str, np.ndarray] = {}
        self.waiting: list[int] = []  # rows in memory, not yet in the file
        self.batch = 1
        self.last_commit = time.monotonic()
        self.computed = 0

    def _set_schema(self, schema: dict[str, tuple[int, ...]]) -> None:
        unknown = sorted(set(self.meta) - set(schema) - set(self.grid.names))
        if unknown:  # before the first row is stored: the file would describe other columns
            raise ValueError(
                f"units/long_names name {unknown[0]!r}, which is neither a grid name "
                f"{list(self.grid.names)} nor a result key {list(schema)}"
            )
        self.schema = schema
        self.results = {k: np.zeros((self.grid.size, *s)) for k, s in schema.items()}
        row_bytes = 8 * (1 + len(self.grid.names))
        row_bytes += sum(8 * int(np.prod(s, dtype=np.int64)) for s in schema.values())
        self.batch = max(1, COMMIT_BYTES // row_bytes)

    def series(self) -> dict[str, dict[str, Any]]:
        spec: dict[str, Any] = {
            "index": {"dtype": np.int64, "long_name": "grid point index (row i is point i)"}
        }
        for n in self.grid.names:
            spec[n] = {"dtype": self.grid.columns[n].dtype, **self._meta(n, f"grid value of {n}")}
        for k, s in self.schema.items():
            spec[k] = {"shape": s, **self._meta(k, f"result {k}")}
        return {"points": spec}

    def _meta(self, column: str, default_name: str) -> dict[str, str]:
        units, name = self.meta.get(column, ("1", None))
        return {"units": units, "long_name": name or default_name}

    def checkpoint(self) -> dict[str, Any]:
        return {"done": self.committed.copy(), "crc": self.crc}

    def columns(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        cols = {"index": idx.astype(np.int64)}
        cols.update({n: self.grid.columns[n][idx] for n in self.grid.names})
        cols.update({k: self.results[k][idx] for k in self.schema})
        return cols

    def add(self, i: int, raw: Any) -> None:
        res = _normalise(raw, i, self.grid)
        if self.schema is None:
            self._set_schema({k: v.shape for k, v in res.items()})
        else:
            _check_schema(res, self.schema, i, self.grid)
        for k, v in res.items():
            self.results[k][i] = v
        self.have[i] = True
        self.waiting.append(i)
        self.computed += 1

    def load(self, run: Run) -> None:
        """Take the schema and the committed rows from a resumed file, after checking them."""
        path, ck = run.path, run.checkpoint
        done = np.asarray(ck.get("done", ()))
        if done.shape != (self.grid.size,) or done.dtype != np.bool_ or "crc" not in ck:
            raise ValueError(f"out: {path!r} holds no sweep checkpoint; cannot resume it")
        with open_run(path) as f:
            fields = json.loads(f["points"].attrs["fields"])
            keys = [k for k in fields if k not in self.grid.names and k not in _RESERVED]
            self._set_schema({k: f["points"][k].shape[1:] for k in keys})
            stored = {k: f["points"][k][:] for k in fields}
        idx = np.flatnonzero(done)
        for k in keys:
            self.results[k][idx] = stored[k][idx]
        crc = functools.reduce(
            lambda a, b: a ^ b, _row_crcs({k: v[idx] for k, v in stored.items()}, idx.size), 0
        )
        same = np.array_equal(stored["index"][idx], idx) and all(
            np.array_equal(stored[n][idx], self.grid.columns[n][idx]) for n in self.grid.names
        )
        if crc != int(ck["crc"]) or not same:
            raise ValueError(
                f"out: the committed rows of {path!r} fail their checksum (the file is "
                "damaged); rerun the sweep with overwrite=True"
            )
        self.committed, self.have, self.crc = done.copy(), done.copy(), crc

    def flush(self, run: Run, force: bool = False) -> None:
        """Write the waiting rows in place and commit them, when ``force``, a batch is full or
        ``COMMIT_SECONDS`` have passed since the last commit."""
        now = time.monotonic()
        if not self.waiting or not (
            force or len(self.waiting) >= self.batch or now - self.last_commit >= COMMIT_SECONDS
        ):
            return
        idx = np.array(sorted(self.waiting), np.int64)
        cuts = np.flatnonzero(np.diff(idx) != 1) + 1  # runs of consecutive rows
        crc = self.crc
        for run_idx in np.split(idx, cuts):
            cols = self.columns(run_idx)
            run.write_rows("points", int(run_idx[0]), **cols)
            for c in _row_crcs(cols, run_idx.size):
                crc ^= c
        done = self.committed.copy()
        done[idx] = True
        run.commit(done=done, crc=crc)
        self.committed, self.crc, self.waiting = done, crc, []
        self.last_commit = time.monotonic()

    def missing(self) -> list[int]:
        return np.flatnonzero(~self.have).tolist()


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


async def _identify(url: str) -> Any:
    """What the server at ``url`` says it is (a Dask scheduler answers ``type: Scheduler``)."""
    from distributed.comm import connect

    comm = await connect(url, timeout=CONNECT_SECONDS)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def _check_scheduler(address: str) -> str:
    """The ``tcp://`` URL of ``address`` once a Dask scheduler answered there; a clear
    ValueError within about ``CONNECT_SECONDS`` otherwise (nothing listening, another kind of
    server, no answer)."""
    url = address if "://" in address else f"tcp://{address}"
    if not url.startswith("tcp://"):
        return url  # other protocols (tls, ucx, ...) need their security settings: Client's job
    host, _, port = url[len("tcp://") :].rstrip("/").rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"scheduler address must be tcp://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ValueError(
            f"scheduler: cannot connect to {address!r}: {exc.strerror or exc}; is a Dask "
            "scheduler running there?"
        ) from None
    box: dict[str, Any] = {}

    def ask() -> None:  # in a thread of its own: the caller may be running an event loop
        try:
            box["reply"] = asyncio.run(asyncio.wait_for(_identify(url), CONNECT_SECONDS))
        except BaseException as exc:  # a MemoryError from a garbage frame header, too
            box["error"] = exc

    thread = threading.Thread(target=ask, name="nndyn-sweep-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_SECONDS + 1.0)
    exc, reply = box.get("error"), box.get("reply")
    if thread.is_alive() or isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        raise ValueError(
            f"scheduler: {address!r} accepted the connection but sent no Dask reply within "
            f"{CONNECT_SECONDS:g} s; it is not a Dask scheduler (or not reachable)"
        )
    if exc is not None:
        raise ValueError(
            f"scheduler: {address!r} is not a Dask scheduler: its reply could not be read "
            f"({type(exc).__name__}: {str(exc)[:200]})"
        ) from None
    kind = reply.get("type") if isinstance(reply, Mapping) else None
    if kind != "Scheduler":
        what = f"a Dask {kind}" if isinstance(kind, str) else "something else"
        raise ValueError(
            f"scheduler: {address!r} is not a Dask scheduler, it answered as {what}; give the "
            "scheduler's address (dask scheduler prints it, default port 8786)"
        )
    return url


@contextlib.contextmanager
def _session(kind: str, scheduler: Any, n_workers: int | None) -> Iterator[Any]:
    """The Dask client of a sweep (None for serial), closed afterwards if the sweep made it."""
    if kind == "serial":
        yield None
        return
    if kind == "client":
        yield scheduler
        return
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
            with dist.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = dist.Client(scheduler, timeout=CONNECT_SECONDS)
    except (OSError, asyncio.TimeoutError, TimeoutError) as exc:
        raise ValueError(f"scheduler: cannot connect to {scheduler!r}: {exc}") from None
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close(timeout=CONNECT_SECONDS)


def _point_error(grid: _Grid, i: int, exc: BaseException) -> SweepPointError:
    what = f"fn raised {type(exc).__name__}: {exc}"
    if type(exc).__name__ == "KilledWorker":
        what = (
            f"the worker process running it died (KilledWorker: {exc} A crash or out-of-memory "
            "in fn is the usual cause; see the worker logs)"
        )
    err = SweepPointError(f"{what} at {_where(grid, i)}", i, grid.point(i))
    err.__cause__ = exc
    return err


def _serial_results(fn, grid: _Grid, seeds, pending) -> Iterator[tuple[int, Any]]:
    for i in pending:
        try:
            raw = _call_point(fn, grid.point(i), seeds[i])
        except Exception as exc:
            raise _point_error(grid, i, exc) from exc
        yield i, raw


class _Watch:
    """Fails the sweep when its cluster has no worker, or its scheduler does not answer, for
    ``NO_WORKERS_SECONDS``; asks the scheduler at most every ``_CHECK_SECONDS``."""

    def __init__(self, client: Any, total: int):
        self.client, self.total, self.finished = client, total, 0
        self.address = getattr(client.scheduler, "address", "?")
        self.alive = self.asked = time.monotonic()
        self.broken = False  # the cluster failed: do not wait for it any more

    def progress(self, n: int = 0) -> None:
        self.alive = time.monotonic()
        self.finished += n

    def fail(self, what: str) -> SweepClusterError:
        self.broken = True
        return SweepClusterError(
            f"the Dask cluster at {self.address} {what}; {self.finished} of {self.total} "
            "points of this call finished and are kept; resume the sweep (resume=True) once "
            "the cluster works"
        )

    def check(self) -> None:
        now = time.monotonic()
        if now - self.asked < _CHECK_SECONDS:
            return
        self.asked = now
        try:
            workers = self.client.nthreads(callback_timeout=_CHECK_SECONDS + 1.0)
            why = "no worker"
        except Exception as exc:  # the scheduler is gone or does not answer
            workers, why = {}, f"no answer from the scheduler ({type(exc).__name__})"
        if workers:
            self.alive = now
        elif now - self.alive >= NO_WORKERS_SECONDS:
            raise self.fail(
                f"has had {why} for {now - self.alive:.0f} s (all workers died or left?)"
            )

    def gather(self, futures: list) -> list:
        """Results of finished futures. A gather waits while data a dead worker held are
        recomputed, so it runs in the client's event loop and is waited for in steps, with
        :meth:`check` in between (a slow transfer of large results is never restarted)."""
        if not futures:
            return []
        coro = self.client.gather(futures, asynchronous=True)
        pending = asyncio.run_coroutine_threadsafe(coro, self.client.loop.asyncio_loop)
        try:
            while True:
                try:
                    return pending.result(timeout=_CHECK_SECONDS)
                except TimeoutError:
                    self.check()
        except (OSError, concurrent.futures.CancelledError) as exc:
            # the scheduler or the worker holding the data is unreachable, or the client lost
            # its scheduler and cancelled the (finished) futures
            raise self.fail(f"could not deliver results ({type(exc).__name__}: {exc})") from exc
        finally:
            pending.cancel()


def _dask_results(client, fn, grid: _Grid, seeds, pending) -> Iterator[tuple[int, Any]]:
    from distributed import as_completed

    futures = client.map(
        _call_point,
        [fn] * len(pending),
        [grid.point(i) for i in pending],
        [seeds[i] for i in pending],
        pure=False,
    )
    index = {f.key: i for f, i in zip(futures, pending, strict=True)}
    watch, yielded = _Watch(client, len(pending)), set()
    try:
        ac = as_completed(futures)
        while not ac.is_empty():
            batch = ac.next_batch(block=False)
            if not batch:
                watch.check()
                time.sleep(_POLL_SECONDS)
                continue
            watch.progress()
            ok = sorted((f for f in batch if f.status == "finished"), key=lambda f: index[f.key])
            bad = [f for f in batch if f.status != "finished"]
            for f, raw in zip(ok, watch.gather(ok), strict=True):
                watch.progress(1)
                yielded.add(f.key)
                yield index[f.key], raw
            if not bad:
                continue
            i, fut = min(((index[f.key], f) for f in bad), key=lambda t: t[0])
            if fut.status != "error":  # cancelled or lost: the cluster stopped it, not fn
                raise watch.fail(f"dropped point {i} (its task is {fut.status})")
            # keep the points that finished meanwhile, then stop the rest
            rest = [f for f in futures if f.status == "finished" and f.key not in yielded]
            with contextlib.suppress(SweepClusterError):
                for f, raw in zip(rest, watch.gather(rest), strict=True):
                    yield index[f.key], raw
            try:
                exc = fut.exception(timeout=_CHECK_SECONDS)
            except Exception as e:
                exc = e
            raise _point_error(grid, i, exc)
    finally:
        if client.status == "running" and not watch.broken:
            with contextlib.suppress(Exception):
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
    progress: bool = False,
    units: Mapping[str, str] | None = None,
    long_names: Mapping[str, str] | None = None,
    extra_params: dict[str, Any] | None = None,
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
        An address (``"tcp://host:8786"``, ``"host:8786"``): connect to a running cluster
        (workers need ``nndyn_fast`` and ``fn``'s module installed); an address where no Dask
        scheduler answers within ``CONNECT_SECONDS`` (10 s) is a ValueError. A
        ``distributed.Client``: used as is and left open.
    out : str or pathlib.Path, optional
        Stream results into this run file (layout in :mod:`nndyn_fast.sweep`), created by
        :func:`nndyn_fast.runs.start_run` when the first result arrives: row i holds point i.
        Finished rows are written in place and committed together, with the mask of finished
        points as checkpoint, once ``COMMIT_SECONDS`` (0.5 s) have passed since the last commit
        or ``COMMIT_BYTES`` (1 MiB) of rows wait, and always before returning or raising.
        Without ``out`` results stay in memory.
    overwrite : bool
        Replace an existing ``out``.
    resume : bool
        Continue the sweep stored in ``out``: committed points are read back (and checked
        against their checksum), only the missing ones are computed. Refused, naming the first
        difference and leaving the file untouched, unless the sweep is the same: ``fn``
        (module and qualname, a callable object's state), every option a ``functools.partial``
        binds, ``fn``'s defaults, every grid value (bitwise), the grid's shape and ``seed``.
    n_workers : int, optional
        Worker processes of the local cluster (default ``os.cpu_count()``).
    seed : int
        Root of the per-point seeds (>= 0).
    progress : bool
        Report the finished points on stderr as they arrive (see :mod:`nndyn_fast.progress`).
    units, long_names : dict, optional
        ``{column: str}``: the ``units`` (CF/UDUNITS, default ``"1"``) and ``long_name``
        attributes of result columns and grid columns in the run file, e.g.
        ``units={"t_lock": "s"}, long_names={"r": "time-averaged order parameter r"}``. A
        name that is neither a grid name nor a key ``fn`` returns is a ValueError at the first
        result, before the file is made. A resumed sweep keeps the file's.
    extra_params : dict, optional
        JSON-able options stored in the run file's ``/params`` beside the sweep's own (the
        command line's options); compared on resume like the others.

    Returns
    -------
    SweepResult
        The grid table and result columns as numpy arrays ordered by point index.

    Raises
    ------
    ValueError
        Empty grid or axis, a non-1-D axis, non-numeric or NaN grid values, unknown scheduler
        string, an address where no Dask scheduler answers, existing ``out`` without
        ``overwrite``/``resume``, a resumed file made by a different sweep (naming the
        parameter), and results whose keys or shapes differ between points (naming the
        point; earlier points stay committed).
    TypeError
        ``fn`` not callable, ``grid`` or ``scheduler`` of the wrong type, a result that is not
        a dict of real numbers/arrays (naming the point).
    SweepPointError
        ``fn`` raised at a point, or the worker processes running it died (the original
        exception is the cause); finished points stay committed, so ``resume=True`` computes
        only the rest.
    SweepClusterError
        The cluster had no worker, or its scheduler did not answer, for
        ``NO_WORKERS_SECONDS`` (30 s); finished points stay committed.

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
    progress = check_bool("progress", progress)
    resume = check_bool("resume", resume)
    if overwrite and resume:
        raise ValueError("pass either overwrite=True or resume=True, not both")
    if resume and out is None:
        raise ValueError("resume=True needs out (the run file to continue)")
    path = None if out is None else check_out_path("out", out, overwrite=overwrite, resume=resume)
    kind = _scheduler_kind(scheduler)  # bad kinds fail before any file or cluster is touched
    if kind == "address":
        scheduler = _check_scheduler(scheduler)  # a Dask scheduler answers there, or ValueError
    passes_seed = _takes_seed(fn) and "seed" not in g.names
    params, inputs = _run_params(fn, g, seed, passes_seed) if path is not None else ({}, {})
    table = _Table(g, _column_meta(units, long_names))
    if extra_params is not None:
        if not isinstance(extra_params, dict):
            raise TypeError(
                f"extra_params must be a dict or None, got {type(extra_params).__name__}"
            )
        params = {**params, **extra_params}
    run: Run | None = None
    bar = progress_bar(progress, g.size, desc="sweep", unit="point")

    def open_file(resume: bool) -> Run:
        return start_run(
            path,
            kind="sweep",
            params=params,
            inputs=inputs,
            series=table.series() if not resume else {},  # a resume keeps the file's layout
            rows={"points": g.size},
            description=f"parameter sweep: fn(**point) at each of {g.size} points of the grid "
            f"{list(g.names)}; row i is point i, the commit's done mask says which rows hold "
            "results",
            checkpoint=table.checkpoint(),
            resume=resume,
            overwrite=overwrite,
        )

    try:
        with contextlib.ExitStack() as stack:
            if resume:  # compare before any cluster starts; a finished sweep starts none
                run = open_file(resume=True)
                try:
                    table.load(run)
                except BaseException:
                    run.release()  # a damaged file is left as it is
                    raise
                stack.enter_context(run)
            pending = table.missing()
            if pending:
                seeds = [None] * g.size
                if passes_seed:
                    seeds = np.random.SeedSequence(seed).spawn(g.size)
                client = stack.enter_context(_session(kind, scheduler, n_workers))
                if client is None:
                    stream = _serial_results(fn, g, seeds, pending)
                else:
                    stream = _dask_results(client, fn, g, seeds, pending)
                stream = stack.enter_context(contextlib.closing(stream))
                stack.enter_context(bar)
                bar.update(g.size - len(pending))
                try:
                    for i, raw in stream:
                        table.add(i, raw)
                        bar.update(g.size - len(pending) + table.computed)
                        if path is not None:
                            if run is None:  # the first result fixes the file's layout
                                run = stack.enter_context(open_file(resume=False))
                            table.flush(run)
                except RunFileError:
                    raise
                except SweepClusterError as exc:
                    if run is None and path is not None:  # the file is made by the first row
                        raise SweepClusterError(
                            f"{exc}. No point finished, so no run file was written at {path}: "
                            "start the sweep again (without resume)"
                        ) from None
                    if run is not None:
                        with contextlib.suppress(RunFileError):
                            table.flush(run, force=True)
                    raise
                except BaseException:  # keep every finished row; the error is what counts
                    if run is not None:
                        with contextlib.suppress(RunFileError):
                            table.flush(run, force=True)
                    raise
            if run is not None:
                table.flush(run, force=True)
    except KeyboardInterrupt as exc:  # the CLI says what was kept
        if getattr(exc, "run_path", None) is not None:
            exc.run_rows = {"points": int(table.committed.sum())}
        raise
    if table.schema is None:  # nothing computed and nothing stored: cannot happen with P >= 1
        raise ValueError("the sweep produced no results")
    return SweepResult(
        names=g.names,
        grid={n: g.columns[n].copy() for n in g.names},
        results=table.results,
        shape=g.shape,
        path=None if path is None else str(path),
        computed=table.computed,
    )


# -- a built-in target --------------------------------------------------------------------------
