"""The trajectory store: chunked, resumable HDF5 files for long runs.

Layout of a run file (schema ``nndyn_fast.run``, version 1)::

    /                     attrs: schema, schema_version, kind, status (running|complete|failed),
                          message, created, command, versions (package, numpy, numba, h5py),
                          commit (JSON: committed rows per series, checkpoint slot, chunk count)
    /params               the run's parameters: scalars and strings as attrs, arrays as datasets
    /<series>/<field>     one group per series (e.g. ``trajectory``, ``observables``); every field
                          of a series shares its first axis (rows), e.g. ``time`` (n,),
                          ``step`` (n,), ``value`` (n, *frame_shape)
    /checkpoint/A, /B     two slots holding everything needed to resume; the commit record names
                          the valid one

Writing protocol (one call of :meth:`TrajectoryWriter.commit` per chunk): the chunk's rows are
written and the file flushed; then the other checkpoint slot is filled, flushed, and only then the
single ``commit`` attribute is replaced and the file flushed again. A run killed at any moment
(even with SIGKILL) therefore leaves a file whose commit record points at complete rows and a
complete checkpoint; rows past the record are ignored by readers and cut off on resume. Datasets
use the default HDF5 file format (no SWMR), chunks of about 1 MiB, no compression by default.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._validate import check_option, check_out_path

__all__ = ["SCHEMA", "SCHEMA_VERSION", "TrajectoryWriter", "RunFile", "open_run", "chunk_rows"]

SCHEMA = "nndyn_fast.run"
SCHEMA_VERSION = 1
CHUNK_BYTES = 1 << 20
_COMPRESSION = {"none": None, "lzf": "lzf", "gzip": "gzip"}


def chunk_rows(row_shape: tuple[int, ...], dtype: Any, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows per HDF5 chunk so that one chunk holds about ``target_bytes`` (at least one row)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, target_bytes // max(row_bytes, 1))


def _versions() -> str:
    import numba

    from . import __version__

    return json.dumps(
        {
            "nndyn_fast": __version__,
            "numpy": np.__version__,
            "numba": numba.__version__,
            "h5py": h5py.__version__,
            "python": sys.version.split()[0],
        }
    )


def _write_params(group: h5py.Group, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if value is None:
            group.attrs[key] = "None"
        elif isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            group.attrs[key] = value
        else:
            group.create_dataset(key, data=np.asarray(value))


def _read_params(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        out[key] = None if isinstance(value, str) and value == "None" else _plain(value)
    for key, ds in group.items():
        out[key] = ds[()]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class _Field:
    shape: tuple[int, ...]
    dtype: np.dtype


class TrajectoryWriter:
    """Append-only writer of a run file; see the module docstring for the layout.

    Create with :meth:`create` or continue a killed run with :meth:`resume`. Use as a context
    manager: leaving the block normally marks the run ``complete``; an exception marks it
    ``failed`` (with the message), and every committed chunk stays in the file.

    Examples
    --------
    >>> with TrajectoryWriter.create("run.h5", kind="demo", params={"N": 3},
    ...                              series={"trajectory": {"time": (), "value": (3,)}}) as w:
    ...     w.append("trajectory", time=np.zeros(2), value=np.ones((2, 3)))
    ...     w.commit(state=np.ones(3), step=2)
    """

    def __init__(self, h5: h5py.File, fields: dict[str, dict[str, _Field]], commit: dict):
        self._h5 = h5
        self._fields = fields
        self._commit = commit
        self._pending = dict(commit["rows"])

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        kind: str,
        params: Mapping[str, Any],
        series: Mapping[str, Mapping[str, Any]],
        overwrite: bool = False,
        compression: str = "none",
        chunk_frames: Mapping[str, int] | None = None,
    ) -> TrajectoryWriter:
        """Create a new run file.

        Parameters
        ----------
        path : output file; refused if it exists unless ``overwrite``.
        kind : what produced the run (e.g. ``"kuramoto"``); stored as an attribute.
        params : run parameters; scalars/strings become attrs of ``/params``, arrays datasets.
        series : ``{series: {field: shape or (shape, dtype)}}``, ``shape`` the shape of one row
            (``()`` for scalars); dtype defaults to float64.
        compression : ``"none"`` (default), ``"lzf"`` or ``"gzip"``.
        chunk_frames : rows per HDF5 chunk for a series; default about 1 MiB per chunk.
        """
        p = check_out_path("out", path, overwrite=overwrite)
        check_option("compression", compression, _COMPRESSION)
        fields = {s: {f: _as_field(spec) for f, spec in cols.items()} for s, cols in series.items()}
        try:
            h5 = h5py.File(p, "w")
        except OSError as exc:
            raise ValueError(f"out: cannot create {str(p)!r}: {exc}") from None
        try:
            h5.attrs["schema"] = SCHEMA
            h5.attrs["schema_version"] = SCHEMA_VERSION
            h5.attrs["kind"] = kind
            h5.attrs["status"] = "running"
            h5.attrs["message"] = ""
            h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            h5.attrs["command"] = " ".join(sys.argv)
            h5.attrs["versions"] = _versions()
            _write_params(h5.create_group("params"), params)
            for s, cols in fields.items():
                g = h5.create_group(s)
                g.attrs["fields"] = json.dumps(list(cols))
                for f, fld in cols.items():
                    rows = (chunk_frames or {}).get(s) or chunk_rows(fld.shape, fld.dtype)
                    inner = _inner_chunk(fld.shape, fld.dtype)
                    g.create_dataset(
                        f,
                        shape=(0, *fld.shape),
                        maxshape=(None, *fld.shape),
                        dtype=fld.dtype,
                        chunks=(rows if not fld.shape or inner == fld.shape else 1, *inner),
                        compression=_COMPRESSION[compression],
                    )
            h5.create_group("checkpoint")
            commit = {"rows": {s: 0 for s in fields}, "slot": None, "chunks": 0}
            h5.attrs["commit"] = json.dumps(commit)
            h5.flush()
        except BaseException:
            h5.close()
            raise
        return cls(h5, fields, commit)

    @classmethod
    def resume(cls, path: str | Path) -> TrajectoryWriter:
        """Reopen a run file to continue it: rows past the last commit are cut off."""
        p = check_out_path("out", path, resume=True)
        try:
            h5 = h5py.File(p, "r+")
        except OSError as exc:
            raise ValueError(f"out: cannot open {str(p)!r} to resume it: {exc}") from None
        if h5.attrs.get("schema") != SCHEMA:
            h5.close()
            raise ValueError(f"out: {str(p)!r} is not a {SCHEMA} file, cannot resume it")
        commit = json.loads(h5.attrs["commit"])
        if commit["slot"] is None:
            h5.close()
            raise ValueError(f"out: {str(p)!r} holds no committed chunk, start a new run instead")
        fields = {}
        for s in commit["rows"]:
            g = h5[s]
            fields[s] = {
                f: _Field(g[f].shape[1:], g[f].dtype) for f in json.loads(g.attrs["fields"])
            }
            for f in fields[s]:
                g[f].resize(commit["rows"][s], axis=0)
        h5.attrs["status"] = "running"
        h5.attrs["message"] = ""
        h5.flush()
        return cls(h5, fields, commit)

    # -- writing ------------------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters as stored in ``/params``."""
        return _read_params(self._h5["params"])

    @property
    def rows(self) -> dict[str, int]:
        """Committed rows per series."""
        return dict(self._commit["rows"])

    @property
    def path(self) -> str:
        return self._h5.filename

    def append(self, series: str, **columns: np.ndarray) -> None:
        """Append rows to ``series``; every field of the series must be given, same row count."""
        cols = self._fields[series]
        if set(columns) != set(cols):
            raise ValueError(
                f"append to {series!r} needs fields {sorted(cols)}, got {sorted(columns)}"
            )
        n = {np.shape(v)[0] for v in columns.values()}
        if len(n) != 1:
            raise ValueError(f"append to {series!r}: fields have different row counts {n}")
        k = n.pop()
        if k == 0:
            return
        start = self._pending[series]
        g = self._h5[series]
        for f, v in columns.items():
            ds = g[f]
            ds.resize(start + k, axis=0)
            ds[start:] = v
        self._pending[series] = start + k

    def commit(self, **checkpoint: Any) -> None:
        """Make the appended rows durable and store ``checkpoint`` (arrays and scalars).

        Flushes the data, writes the checkpoint into the free slot, flushes, then switches the
        commit record in one attribute write and flushes again.
        """
        self._h5.flush()
        slot = "B" if self._commit["slot"] == "A" else "A"
        ck = self._h5["checkpoint"]
        if slot in ck:
            del ck[slot]
        g = ck.create_group(slot)
        for key, value in checkpoint.items():
            if isinstance(value, np.ndarray):
                g.create_dataset(key, data=value)
            elif isinstance(value, (dict, list)):
                g.attrs[key] = json.dumps(value)
                g.attrs[key + "__json"] = True
            else:
                g.attrs[key] = value
        self._h5.flush()
        self._commit = {
            "rows": dict(self._pending),
            "slot": slot,
            "chunks": self._commit["chunks"] + 1,
        }
        self._h5.attrs["commit"] = json.dumps(self._commit)
        self._h5.flush()

    @property
    def checkpoint(self) -> dict[str, Any]:
        """The last committed checkpoint (empty before the first commit)."""
        if self._commit["slot"] is None:
            return {}
        return _read_checkpoint(self._h5["checkpoint"][self._commit["slot"]])

    def set_attrs(self, **attrs: Any) -> None:
        """Store extra root attributes (e.g. a summary) and flush."""
        for k, v in attrs.items():
            self._h5.attrs[k] = v
        self._h5.flush()

    def close(self, status: str = "complete", message: str = "") -> None:
        """Mark the run ``complete`` or ``failed`` and close the file (uncommitted rows dropped)."""
        if not self._h5.id.valid:
            return
        for s, n in self._commit["rows"].items():
            for f in self._fields[s]:
                self._h5[s][f].resize(n, axis=0)
        self._h5.attrs["status"] = status
        self._h5.attrs["message"] = message
        self._h5.close()

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close("complete")
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")


def _as_field(spec: Any) -> _Field:
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], tuple):
        return _Field(tuple(int(s) for s in spec[0]), np.dtype(spec[1]))
    return _Field(tuple(int(s) for s in spec), np.dtype(np.float64))


def _inner_chunk(shape: tuple[int, ...], dtype: Any) -> tuple[int, ...]:
    """Chunk shape of one row: the whole row, or slices along the last axis of about 1 MiB."""
    if not shape or chunk_rows(shape, dtype) > 1:
        return shape
    last = max(1, CHUNK_BYTES // (np.dtype(dtype).itemsize * int(np.prod(shape[:-1]))))
    return (
        (*[1] * (len(shape) - 1), min(shape[-1], last))
        if len(shape) > 1
        else (min(shape[0], last),)
    )


def _read_checkpoint(g: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in g.attrs.items():
        if key.endswith("__json"):
            continue
        out[key] = json.loads(value) if g.attrs.get(key + "__json", False) else _plain(value)
    for key, ds in g.items():
        out[key] = ds[()]
    return out


class RunFile:
    """Read access to a run file; datasets stay lazy (h5py datasets, read on slicing).

    ``run["trajectory/value"]`` is the raw dataset; :meth:`read` returns committed rows only, so
    a file left by a killed run reads exactly what was committed.
    """

    def __init__(self, path: str | Path):
        try:
            self._h5 = h5py.File(path, "r")
        except (OSError, FileNotFoundError) as exc:
            raise ValueError(f"cannot open run file {str(path)!r}: {exc}") from None
        if self._h5.attrs.get("schema") != SCHEMA:
            self._h5.close()
            raise ValueError(f"{str(path)!r} is not a {SCHEMA} file")
        self._commit = json.loads(self._h5.attrs["commit"])

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (status, kind, versions, ...)."""
        return {k: _plain(v) for k, v in self._h5.attrs.items()}

    @property
    def status(self) -> str:
        return _plain(self._h5.attrs["status"])

    @property
    def params(self) -> dict[str, Any]:
        return _read_params(self._h5["params"])

    @property
    def rows(self) -> dict[str, int]:
        """Committed rows per series."""
        return dict(self._commit["rows"])

    @property
    def checkpoint(self) -> dict[str, Any]:
        slot = self._commit["slot"]
        return {} if slot is None else _read_checkpoint(self._h5["checkpoint"][slot])

    def __getitem__(self, key: str) -> h5py.Dataset:
        return self._h5[key]

    def read(self, series: str, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows ``start:stop`` of ``series/field`` as an array."""
        n = self._commit["rows"][series]
        stop = n if stop is None else min(stop, n)
        return self._h5[series][field][start:stop]

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run(path: str | Path) -> RunFile:
    """Open a run file for reading (see :class:`RunFile`)."""
    return RunFile(path)
