"""The trajectory store: fixed-layout HDF5 run files that no kill point can corrupt.

Layout of a run file (schema ``nndyn_fast.run``, version 2)::

    /                     attrs: schema, schema_version, kind, created, command, versions
                          (package, numpy, numba, h5py, python); written once, at creation
    /params               the run's parameters: scalars and strings as attrs, arrays as datasets,
                          and ``sha256`` digests of the input arrays (attr ``inputs``, JSON)
    /<series>/<field>     one group per series (``trajectory``, ``observables``, ...); every field
                          of a series shares its first axis (rows): ``time`` (n,), ``step`` (n,),
                          ``value`` (n, *row_shape); preallocated to the run's capacity
    /commit/A, /commit/B  two fixed-size commit records (uint8): status, message, committed rows
                          per series, a checksum of those rows, a summary and the checkpoint

Why this cannot be corrupted by a kill
--------------------------------------
HDF5 without SWMR is not crash-safe while its *metadata* changes: resizing a dataset, writing an
attribute, or deleting and recreating a group rewrites B-trees, heaps and object headers, and a
process killed between two of those writes leaves a file that no longer opens ("addr overflow",
"bad local heap signature"). SWMR needs ``libver="latest"``, which older readers cannot open, and
still changes metadata on every append. So this store never changes HDF5 metadata after a file
is created:

1. **Creation is atomic.** The whole file (groups, parameters, every dataset at its final size,
   contiguous and allocated at creation, never filled; the first commit record holding the
   initial checkpoint) is written to a hidden file beside the target, fsync'ed, and linked to
   the target's name (renamed over it with ``overwrite``; a file another process created there
   meanwhile is never replaced). A kill before that leaves no file at the target; after it the
   file is whole.
2. **After creation only raw bytes are written**, with ``os.pwrite`` at the byte offsets HDF5
   gave the contiguous datasets: HDF5 is not involved in writing a run at all, so nothing it
   keeps can be half-written (and no HDF5 error can turn into a segfault).
3. **A commit** writes the chunk's rows past the committed ones, fdatasync's, then writes the
   *other* commit record (sequence number + 1; a BLAKE2b digest over its body), and fdatasync's
   again. A reader takes the valid record with the highest sequence number. A kill or a torn
   write at any point leaves either the old record (whose rows were never touched again) or the
   new one (whose rows were synced before it was written).
4. **The status is part of the record.** ``complete``, ``failed`` and ``interrupted`` are written
   as one more record, so a file is ``complete`` only if the data it names are. A record that says
   ``running`` while no process holds the file (the run was killed) reads as ``interrupted``.

The record is validated on open (digest, rows within the datasets' capacity, the series it names);
``RunFile.verify()`` also checks every committed row against the record's running CRC-32.

One writer per file: a writer holds ``flock(LOCK_EX)`` on the file for its whole life, and
``overwrite``/``resume`` take that lock before touching an existing file, so a second process
gets a clear error and never truncates it. Readers are supported during a run: :func:`open_run`
opens without HDF5's own file lock and sees exactly the rows committed when it opened (committed
rows are never rewritten). Other HDF5 readers need ``locking=False`` in h5py (or
``HDF5_USE_FILE_LOCKING=FALSE``) while a run writes the file.

Datasets are preallocated, so the file's apparent size is its final size from the start (the
disk blocks are taken as rows are written); a run that needs more room than the disk has free
is refused before it starts. Compression is not offered: compressed chunks move in the file.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import os
import resource
import signal
import struct
import sys
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._validate import check_out_path

__all__ = [
    "FieldSpec",
    "SCHEMA",
    "SCHEMA_VERSION",
    "RunFile",
    "RunFileError",
    "RunLockedError",
    "TrajectoryWriter",
    "chunk_rows",
    "open_run",
]

SCHEMA = "nndyn_fast.run"
SCHEMA_VERSION = 2
STATUSES = ("running", "complete", "failed", "interrupted")
_MAGIC = b"NNDYNREC"
_HEAD = struct.Struct("<8sQQ16s")  # magic, sequence number, body length, BLAKE2b-128 of the body
CHUNK_BYTES = 1 << 20  # rows committed together: about 1 MiB
# room in a record for JSON that grows as the run goes (summary, rng state), beyond twice the
# initial record (whose checkpoint arrays already scale with the run's state)
_SLACK = 8 * 1024


def chunk_rows(row_shape: tuple[int, ...], dtype: Any, target_bytes: int = CHUNK_BYTES) -> int:
    """Rows per commit so that one chunk holds about ``target_bytes`` (at least one row)."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, target_bytes // max(row_bytes, 1))


class RunFileError(OSError):
    """Writing a run file failed (disk full, file-size limit, I/O error).

    ``path`` is the file and ``committed`` the committed rows per series, all of which are
    still in the file and readable.
    """

    def __init__(self, message: str, *, path: str, committed: dict[str, int]):
        super().__init__(message)
        self.path = path
        self.committed = committed


class RunLockedError(ValueError):
    """Another process is writing this run file."""


class _RecordTooLarge(ValueError):
    """A checkpoint (or summary) does not fit the commit record fixed at creation."""


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM back while a commit record and the writer's bookkeeping change
    together: their handlers (which run in the main thread) are deferred to the block's end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)
        for s in caught:
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(s)


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


# -- parameters -------------------------------------------------------------------------------
def _write_params(group: h5py.Group, params: Mapping[str, Any]) -> None:
    for key, value in params.items():
        if value is None:
            group.attrs[key] = "None"
        elif isinstance(value, (str, bool, int, float, np.integer, np.floating, np.bool_)):
            group.attrs[key] = value
        elif isinstance(value, (dict, list, tuple)):
            group.attrs[key] = json.dumps(value, default=_plain)
            group.attrs[key + "__json"] = True
        else:
            arr = np.asarray(value)
            ds = group.create_dataset(key, data=arr)
            _describe(ds, "1", f"parameter {key}")
            for i, size in enumerate(arr.shape):
                ds.dims[i].attach_scale(_dimension(group, f"{key}__dim{i}", size))


def _read_params(group: h5py.Group) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in group.attrs.items():
        if key.endswith("__json"):
            continue
        if group.attrs.get(key + "__json", False):
            out[key] = json.loads(value)
        else:
            out[key] = None if isinstance(value, str) and value == "None" else _plain(value)
    for key, ds in group.items():
        if not h5py.h5ds.is_scale(ds.id):  # (the parameter arrays' bare dimensions)
            out[key] = ds[()]
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- commit records -----------------------------------------------------------------------------
def _encode_record(seq: int, meta: dict, checkpoint: Mapping[str, Any]) -> bytes:
    """One commit record: header, then a body of JSON (meta + checkpoint scalars) and arrays."""
    arrays, values, blobs, offset = [], {}, [], 0
    for key, value in checkpoint.items():
        if isinstance(value, np.ndarray):
            a = np.ascontiguousarray(value)
            arrays.append([key, a.dtype.str, list(a.shape), offset])
            blobs.append(a.tobytes())
            offset += a.nbytes
        elif isinstance(value, np.generic):
            values[key] = value.item()
        else:
            values[key] = value
    head = json.dumps({**meta, "arrays": arrays, "values": values}).encode()
    body = struct.pack("<Q", len(head)) + head + b"".join(blobs)
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return _HEAD.pack(_MAGIC, seq, len(body), digest) + body


def _decode_record(raw: bytes) -> tuple[int, dict, dict] | None:
    """``(seq, meta, checkpoint)`` of a record, or None if it is absent, torn or corrupt."""
    if len(raw) < _HEAD.size:
        return None
    magic, seq, n, digest = _HEAD.unpack_from(raw)
    if magic != _MAGIC or n > len(raw) - _HEAD.size:
        return None
    body = bytes(raw[_HEAD.size : _HEAD.size + n])
    if hashlib.blake2b(body, digest_size=16).digest() != digest:
        return None
    (hn,) = struct.unpack_from("<Q", body)
    meta = json.loads(body[8 : 8 + hn])
    base = 8 + hn
    ck: dict[str, Any] = dict(meta.pop("values"))
    for key, dtype, shape, off in meta.pop("arrays"):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        ck[key] = np.frombuffer(body, dt, count, base + off).reshape(shape).copy()
    return seq, meta, ck


def _pick_record(slots: Mapping[str, bytes]) -> tuple[str, int, dict, dict] | None:
    best = None
    for name, raw in slots.items():
        rec = _decode_record(raw)
        if rec is not None and (best is None or rec[0] > best[1]):
            best = (name, *rec)
    return best


@dataclass(frozen=True)
class _Field:
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int | None  # byte offset of row 0 in the file (None for an empty dataset)
    capacity: int

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass(frozen=True)
class FieldSpec:
    """One field of a series: the shape of a row, its dtype, and what it holds.

    ``units`` follow the CF/UDUNITS conventions (``"1"`` for dimensionless); ``dims`` names the
    row's axes (after the row axis) and defaults to ``<field>_dim<i>``; ``coord`` makes a 1-D
    field the dimension scale of the series' row axis (by default the first of ``time``,
    ``step``, ``index``, ``batch_size`` the series has).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    units: str = "1"
    long_name: str = ""
    dims: tuple[str, ...] | None = None
    coord: bool | None = None


_ROW_COORDS = ("time", "step", "index", "batch_size")  # the row axis' scale, first found
_DEFAULT_META = {
    "time": ("time", "1"),
    "step": ("step number", "1"),
    "index": ("grid point index", "1"),
}
_PURE_DIM = "This is a netCDF dimension but not a netCDF variable."


def _as_spec(spec: Any, name: str = "") -> FieldSpec:
    """A field spec given as ``shape``, ``(shape, dtype)`` or a dict of :class:`FieldSpec`'s
    fields (``{"shape": (), "dtype": np.int64, "units": "s", "long_name": ...}``)."""
    if isinstance(spec, FieldSpec):
        return spec
    long_name, units = _DEFAULT_META.get(name, (name, "1"))
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"shape", "dtype", "units", "long_name", "dims", "coord"}
        if unknown:
            raise ValueError(f"field {name!r}: unknown spec keys {sorted(unknown)}")
        shape = tuple(int(s) for s in spec.get("shape", ()))
        dims = spec.get("dims")
        if dims is not None and len(dims) != len(shape):
            raise ValueError(f"field {name!r}: dims {dims!r} do not match the row shape {shape}")
        return FieldSpec(
            shape,
            np.dtype(spec.get("dtype", np.float64)),
            str(spec.get("units", units)),
            str(spec.get("long_name", long_name)),
            None if dims is None else tuple(str(d) for d in dims),
            spec.get("coord"),
        )
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], tuple):
        shape, dtype = tuple(int(s) for s in spec[0]), np.dtype(spec[1])
    else:
        shape, dtype = tuple(int(s) for s in spec), np.dtype(np.float64)
    return FieldSpec(shape, dtype, units, long_name)


def _row_coord(cols: Mapping[str, FieldSpec]) -> str | None:
    """The field that is the dimension scale of a series' rows (None: a bare dimension)."""
    chosen = [f for f, c in cols.items() if c.coord]
    if chosen:
        return chosen[0]
    for f in _ROW_COORDS:
        if f in cols and cols[f].shape == () and cols[f].coord is not False:
            return f
    return None


def _describe(ds: h5py.Dataset, units: str, long_name: str) -> None:
    ds.attrs["units"] = units
    ds.attrs["long_name"] = long_name


def _dimension(g: h5py.Group, name: str, size: int, coord: Any = None) -> h5py.Dataset:
    """A dimension scale ``name`` of ``size`` in ``g``: a coordinate variable holding
    ``coord = (values, units, long_name)``, or a netCDF-style bare dimension (no storage)."""
    if name in g:
        ds = g[name]
        if ds.shape != (size,):
            raise ValueError(f"{g.name}: dimension {name!r} has sizes {ds.shape[0]} and {size}")
        return ds
    if coord is None:
        ds = g.create_dataset(name, shape=(size,), dtype="f4")  # late allocation: no storage
        ds.make_scale(f"{_PURE_DIM}{size:10d}")
        return ds
    values, units, long_name = coord
    values = np.asarray(values)
    if values.dtype.kind in "US":
        values = values.astype(h5py.string_dtype())
    if values.shape != (size,):
        raise ValueError(f"{g.name}: coordinate {name!r} has shape {values.shape}, not {(size,)}")
    ds = g.create_dataset(name, data=values)
    _describe(ds, units, long_name)
    ds.make_scale(name)
    return ds


def _write_series(
    g: h5py.Group,
    cols: Mapping[str, FieldSpec],
    n: int,
    coords: Mapping[str, Any],
    description: str = "",
) -> None:
    """The fields of one series, preallocated to ``n`` rows, with units, names and the
    dimension scales of every axis (all HDF5 metadata, written at creation only)."""
    g.attrs["fields"] = json.dumps(list(cols))
    if description:
        g.attrs["description"] = description
    made = {}
    for f, c in cols.items():
        made[f] = ds = _fixed_dataset(g, f, (n, *c.shape), c.dtype)
        _describe(ds, c.units, c.long_name or f)
    row = _row_coord(cols)
    if row is not None:
        made[row].make_scale(row)
        row_scale = made[row]
    else:
        row_scale = _dimension(g, "row", n)
    for f, c in cols.items():
        ds = made[f]
        if f != row:
            ds.dims[0].attach_scale(row_scale)
        names = c.dims or tuple(f"{f}_dim{i}" for i in range(1, len(c.shape) + 1))
        for i, (name, size) in enumerate(zip(names, c.shape, strict=True), start=1):
            ds.dims[i].attach_scale(_dimension(g, name, size, coords.get(name)))


def _fixed_dataset(group: h5py.Group, name: str, shape: tuple, dtype: np.dtype) -> h5py.Dataset:
    """A contiguous dataset whose storage is allocated now and never filled (raw bytes later)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _layout(h5: h5py.File, series: list[str]) -> tuple[dict, dict]:
    fields: dict[str, dict[str, _Field]] = {}
    for s in series:
        g = h5[s]
        fields[s] = {}
        for f in json.loads(g.attrs["fields"]):
            ds = g[f]
            off = ds.id.get_offset() if ds.size else None
            fields[s][f] = _Field(ds.shape[1:], ds.dtype, off, ds.shape[0])
    slots = {}
    for name in ("A", "B"):
        ds = h5["commit"][name]
        slots[name] = (ds.id.get_offset(), ds.shape[0])
    return fields, slots


def _lock(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLockedError(
                f"out: {path!r} is being written by another process; wait for that run to end "
                "or choose another path"
            ) from None
        raise


def _is_held(path: str) -> bool:
    """True while a writer holds ``path`` (its exclusive lock)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _pwrite(fd: int, data: memoryview | bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (the only way run data reach the file)."""
    view = memoryview(data).cast("B")
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _partial_name(p: Path) -> Path:
    return p.with_name(f".{p.name}.{os.getpid()}.partial")


def _publish(tmp: Path, p: Path, replace: bool) -> None:
    """Give the finished file ``tmp`` its name ``p``. A new run is linked, which fails if a file
    appeared at ``p`` meanwhile (another process created it), rather than replacing it."""
    if replace:  # overwrite: the old file's lock is held, no other writer can be there
        os.replace(tmp, p)
        return
    try:
        os.link(tmp, p)
    except FileExistsError:
        raise ValueError(
            f"out: {str(p)!r} was created by another process while this run was being set up; "
            "choose another path, or pass overwrite=True (--overwrite) to replace it"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        os.replace(tmp, p)  # a file system without hard links: the best it allows
        return
    tmp.unlink()


def _remove_stale_partials(p: Path) -> None:
    for q in p.parent.glob(f".{p.name}.*.partial"):
        try:
            pid = int(q.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)  # still alive: its creation is under way
        except (ValueError, ProcessLookupError):
            q.unlink(missing_ok=True)
        except PermissionError:
            pass


class TrajectoryWriter:
    """The writer of one run file; see the module docstring for the layout and the protocol.

    Create with :meth:`create` or continue a run with :meth:`resume`; most code uses
    :func:`nndyn_fast.runs.start_run`, which also compares parameters and handles signals.
    As a context manager, leaving the block normally marks the run ``complete``; an exception
    marks it ``failed`` (with the message), ``KeyboardInterrupt``/SIGTERM ``interrupted``.
    Every committed chunk stays in the file in each case.

    Examples
    --------
    >>> with TrajectoryWriter.create("run.h5", kind="demo", params={"N": 3},
    ...                              series={"trajectory": {"time": (), "value": (3,)}},
    ...                              rows={"trajectory": 10}, checkpoint={"step": 0}) as w:
    ...     w.append("trajectory", time=np.zeros(2), value=np.ones((2, 3)))
    ...     w.commit(state=np.ones(3), step=2)
    """

    def __init__(self, path: str, fd: int, fields: dict, slots: dict, record: tuple):
        self._path = path
        self._fd = fd
        self._fields = fields
        self._slots = slots
        slot, seq, meta, ck = record
        self._slot, self._seq = slot, seq
        self._rows = dict(meta["rows"])
        self._crc = dict(meta["crc"])
        self._chunks = meta["chunks"]
        self._summary = dict(meta.get("summary", {}))
        self._checkpoint = ck
        self._pending = dict(self._rows)
        self._pending_crc = dict(self._crc)
        self._closed = False

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        kind: str,
        params: Mapping[str, Any],
        series: Mapping[str, Mapping[str, Any]],
        rows: Mapping[str, int],
        checkpoint: Mapping[str, Any],
        overwrite: bool = False,
        attrs: Mapping[str, Any] | None = None,
        coords: Mapping[str, Mapping[str, Any]] | None = None,
        description: str = "",
    ) -> TrajectoryWriter:
        """Create a run file with room for ``rows[s]`` rows of each series.

        Parameters
        ----------
        path : output file; refused if it exists unless ``overwrite`` (and refused while another
            process writes it, in any case).
        kind : what produced the run (e.g. ``"kuramoto"``); a root attribute.
        params : scalars/strings/JSON-able lists and dicts become attrs of ``/params``, arrays
            datasets.
        series : ``{series: {field: spec}}``, ``spec`` the shape of one row (``()`` for
            scalars), ``(shape, dtype)``, or a dict with keys ``shape``, ``dtype``, ``units``,
            ``long_name``, ``dims``, ``coord`` (see :class:`FieldSpec`); dtype defaults to
            float64, units to ``"1"``. Every field gets ``units`` and ``long_name`` attributes
            and HDF5 dimension scales for its axes (the row axis: its ``time``/``step``/...
            field), so that netCDF readers (``xarray`` with ``engine="h5netcdf"``) see named
            dimensions.
        rows : the number of rows each series will hold at most (its datasets' size).
        checkpoint : the state at step 0, stored as the first commit record; later checkpoints
            must hold arrays of the same shapes (their size sets the records' size).
        attrs : extra root attributes (written once).
        coords : ``{series: {dim: (values, units, long_name)}}``, coordinate values of a
            row axis named in a field's ``dims`` (such as the learning rates of a diagram).
        description : what the run is (a root attribute; default: the kind).

        Raises
        ------
        ValueError
            Unwritable or existing path, not enough free disk for the run's datasets.
        RunLockedError
            Another process writes the existing file at ``path``.
        """
        p = check_out_path("out", path, overwrite=overwrite)
        specs = {s: {f: _as_spec(v, f) for f, v in cols.items()} for s, cols in series.items()}
        if set(rows) != set(specs):
            raise ValueError(f"rows must name every series {sorted(specs)}, got {sorted(rows)}")
        need = sum(
            int(rows[s]) * int(np.prod(c.shape, dtype=np.int64)) * c.dtype.itemsize
            for s, cols in specs.items()
            for c in cols.values()
        )
        first = _encode_record(
            0,
            {
                "status": "running",
                "message": "",
                "rows": {s: 0 for s in specs},
                "crc": {f"{s}/{f}": 0 for s, cols in specs.items() for f in cols},
                "chunks": 0,
                "summary": {},
            },
            checkpoint,
        )
        slot_bytes = 2 * len(first) + _SLACK
        _check_room(p, need + 2 * slot_bytes)
        held = None
        if p.exists():  # overwrite: refuse if another process writes it, before touching it
            held = os.open(p, os.O_RDONLY)
            try:
                _lock(held, str(p))
            except BaseException:
                os.close(held)
                raise
        _remove_stale_partials(p)
        tmp = _partial_name(p)
        try:
            try:
                with h5py.File(tmp, "w", locking=False) as h5:
                    h5.attrs["schema"] = SCHEMA
                    h5.attrs["schema_version"] = SCHEMA_VERSION
                    h5.attrs["kind"] = kind
                    h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                    h5.attrs["command"] = " ".join(sys.argv)
                    h5.attrs["versions"] = _versions()
                    h5.attrs["description"] = description or f"nndyn_fast {kind} run"
                    for k, v in (attrs or {}).items():
                        h5.attrs[k] = v
                    _write_params(h5.create_group("params"), params)
                    c = h5.create_group("commit")  # first: small offsets, before the data
                    c.attrs["description"] = (
                        "two commit records (binary: status, committed rows, checkpoint); "
                        "read them with nndyn_fast.open_run"
                    )
                    byte = _dimension(c, "record_byte", slot_bytes)
                    for name in ("A", "B"):
                        ds = _fixed_dataset(c, name, (slot_bytes,), np.dtype(np.uint8))
                        _describe(ds, "1", f"commit record {name}")
                        ds.dims[0].attach_scale(byte)
                    for s, cols in specs.items():
                        _write_series(
                            h5.create_group(s), cols, int(rows[s]), (coords or {}).get(s, {})
                        )
                    offset_a = c["A"].id.get_offset()
                fd = os.open(tmp, os.O_RDWR)
            except (OSError, ValueError) as exc:
                raise ValueError(f"out: cannot create {str(p)!r}: {exc}") from None
            try:
                try:
                    _pwrite(fd, first, offset_a)
                except OSError as exc:
                    raise ValueError(f"out: cannot create {str(p)!r}: {exc}") from None
                _lock(fd, str(p))
                os.fsync(fd)
                _publish(tmp, p, replace=held is not None)
                _fsync_dir(p.parent)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            if held is not None:
                os.close(held)
        with h5py.File(p, "r", locking=False) as h5:
            fields, slots = _layout(h5, list(specs))
        return cls(str(p), fd, fields, slots, ("A", *_decode_record(first)))

    @classmethod
    def resume(cls, path: str | Path) -> TrajectoryWriter:
        """Reopen a run file to continue it from its last commit record.

        Raises
        ------
        ValueError
            Not a run file of this schema, or no valid commit record.
        RunLockedError
            Another process writes the file.
        """
        p = check_out_path("out", path, resume=True)
        fd = os.open(p, os.O_RDWR)
        try:
            _lock(fd, str(p))
            with _open_h5(p) as h5:
                series = _series_of(h5, str(p))
                fields, slots = _layout(h5, series)
                record = _pick_record({k: h5["commit"][k][()].tobytes() for k in ("A", "B")})
            _check_record(record, fields, str(p))
        except BaseException:
            os.close(fd)
            raise
        return cls(str(p), fd, fields, slots, record)

    # -- state --------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def rows(self) -> dict[str, int]:
        """Committed rows per series."""
        return dict(self._rows)

    @property
    def capacity(self) -> dict[str, int]:
        """Rows each series has room for."""
        return {s: next(iter(cols.values())).capacity for s, cols in self._fields.items()}

    @property
    def chunks(self) -> int:
        """Commits made so far (0: the file holds only the initial checkpoint)."""
        return self._chunks

    @property
    def checkpoint(self) -> dict[str, Any]:
        """The last committed checkpoint (the initial one before the first commit)."""
        return dict(self._checkpoint)

    @property
    def params(self) -> dict[str, Any]:
        """The run's parameters as stored in ``/params``."""
        with _open_h5(self._path) as h5:
            return _read_params(h5["params"])

    # -- writing ------------------------------------------------------------------------------
    def append(self, series: str, **columns: np.ndarray) -> None:
        """Append rows to ``series``; every field of the series must be given, same row count."""
        cols = self._fields[series]
        if set(columns) != set(cols):
            raise ValueError(
                f"append to {series!r} needs fields {sorted(cols)}, got {sorted(columns)}"
            )
        arrays = {}
        for f, v in columns.items():
            fld = cols[f]
            a = np.ascontiguousarray(v, dtype=fld.dtype)
            if a.shape[1:] != fld.shape:
                raise ValueError(f"append to {series}/{f}: rows of shape {fld.shape} expected")
            arrays[f] = a
        n = {a.shape[0] for a in arrays.values()}
        if len(n) != 1:
            raise ValueError(f"append to {series!r}: fields have different row counts {n}")
        k = n.pop()
        if k == 0:
            return
        start = self._pending[series]
        cap = next(iter(cols.values())).capacity
        if start + k > cap:
            raise ValueError(f"append to {series!r}: {start + k} rows exceed its capacity {cap}")
        try:
            for f, a in arrays.items():
                fld = cols[f]
                _pwrite(self._fd, a, fld.offset + start * fld.row_bytes)
        except OSError as exc:
            raise self._io_error(exc) from None
        for f, a in arrays.items():
            key = f"{series}/{f}"
            self._pending_crc[key] = zlib.crc32(a, self._pending_crc[key])
        self._pending[series] = start + k

    def write_rows(self, series: str, start: int, **columns: np.ndarray) -> None:
        """Write rows ``start, start + 1, ...`` of ``series`` in place (a table filled out of
        order, such as a sweep's rows in grid order).

        The bytes go by raw ``pwrite`` to the rows' fixed offsets, as with :meth:`append`, and
        the next :meth:`commit` syncs them before its record. They do not count as committed
        rows: :attr:`rows`, :meth:`RunFile.read` and the record's CRC (what
        :meth:`RunFile.verify` checks) cover appended rows only, so the caller's checkpoint
        must say which rows hold data (and may carry their checksum). Rows below the appended
        ones are refused (committed rows are never rewritten); fill a series by one method.
        """
        cols = self._fields[series]
        if set(columns) != set(cols):
            raise ValueError(
                f"write_rows to {series!r} needs fields {sorted(cols)}, got {sorted(columns)}"
            )
        arrays = {f: np.ascontiguousarray(v, dtype=cols[f].dtype) for f, v in columns.items()}
        n = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
        bad = [f for f, a in arrays.items() if a.shape[1:] != cols[f].shape]
        if bad or len(n) != 1:
            raise ValueError(
                f"write_rows to {series!r}: each field needs rows of its shape, the same count"
            )
        k, cap = n.pop(), next(iter(cols.values())).capacity
        if not self._pending[series] <= start <= start + k <= cap:
            raise ValueError(
                f"write_rows to {series!r}: rows {start}:{start + k} are outside the free rows "
                f"{self._pending[series]}:{cap}"
            )
        try:
            for f, a in arrays.items():
                if a.nbytes:
                    _pwrite(self._fd, a, cols[f].offset + start * cols[f].row_bytes)
        except OSError as exc:
            raise self._io_error(exc) from None

    def commit(self, **checkpoint: Any) -> None:
        """Make the appended rows durable and store ``checkpoint`` (arrays and JSON values).

        The rows are synced to disk before the new commit record is written and synced. SIGINT
        and SIGTERM are held back meanwhile, so the writer's record of what is committed never
        falls out of step with the file (they are delivered when the commit is done).
        """
        # a copy: the run may update its state arrays in place before the next commit, and the
        # closing record must pair the committed rows with the committed state
        saved = copy.deepcopy(dict(checkpoint))
        with _signals_held():
            try:
                os.fdatasync(self._fd)
                self._write_record(
                    "running", "", self._pending, self._pending_crc, saved, self._chunks + 1
                )
            except OSError as exc:
                raise self._io_error(exc) from None
            self._rows = dict(self._pending)
            self._crc = dict(self._pending_crc)
            self._chunks += 1
            self._checkpoint = saved

    def summarize(self, **values: Any) -> None:
        """Add JSON-able results (e.g. final exponents) to the record; stored with the next
        commit or the closing status."""
        self._summary.update(values)

    def _write_record(self, status, message, rows, crc, checkpoint, chunks) -> None:
        slot = "B" if self._slot == "A" else "A"
        meta = {
            "status": status,
            "message": message,
            "rows": dict(rows),
            "crc": dict(crc),
            "chunks": chunks,
            "summary": self._summary,
        }
        raw = _encode_record(self._seq + 1, meta, checkpoint)
        offset, size = self._slots[slot]
        if len(raw) > size:
            raise _RecordTooLarge(
                f"checkpoint of {len(raw)} bytes exceeds the record size {size} fixed at creation"
            )
        _pwrite(self._fd, raw, offset)
        os.fdatasync(self._fd)
        self._slot, self._seq = slot, self._seq + 1

    def _io_error(self, exc: OSError) -> RunFileError:
        what = os.strerror(exc.errno) if exc.errno else str(exc)
        return RunFileError(
            f"writing {self._path!r} failed ({what}); the file keeps the rows committed so far "
            f"({', '.join(f'{s}: {n}' for s, n in self._rows.items())}, after {self._chunks} "
            "commits) and can be resumed once there is room",
            path=self._path,
            committed=dict(self._rows),
        )

    def release(self) -> None:
        """Close the file without writing anything (a refused resume leaves it untouched)."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def close(self, status: str = "complete", message: str = "") -> None:
        """Write the final status (``complete``, ``failed``, ``interrupted``) and close.

        Rows appended after the last commit are not part of the run. A failure to write the
        status (a full disk) leaves the last record, which then reads as ``interrupted``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if status not in STATUSES[1:]:
                raise ValueError(f"status must be one of {list(STATUSES[1:])}, got {status!r}")
            with _signals_held():
                try:
                    self._write_record(
                        status, message, self._rows, self._crc, self._checkpoint, self._chunks
                    )
                except _RecordTooLarge:  # a summary too large for the record: status first
                    self._summary = {"summary_dropped": "larger than the commit record"}
                    self._write_record(
                        status, message, self._rows, self._crc, self._checkpoint, self._chunks
                    )
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close("complete")
        elif isinstance(exc, KeyboardInterrupt):
            self.close("interrupted", f"{exc_type.__name__}: {exc}".rstrip(": "))
        else:
            self.close("failed", f"{exc_type.__name__}: {exc}")


def _check_room(p: Path, need: int) -> None:
    """Refuse a run whose file would exceed the free disk or the process's file-size limit."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and need + (1 << 20) > limit:
        raise ValueError(
            f"out: cannot create {str(p)!r}: the run file needs {need / 2**20:.1f} MiB but this "
            f"process may write files of at most {limit / 2**20:.1f} MiB (ulimit -f); save "
            "fewer frames (save_every) or raise the limit"
        )
    parent = p.parent if str(p.parent) else Path(".")
    st = os.statvfs(parent)
    free = st.f_bavail * st.f_frsize
    if st.f_blocks and need > free:  # (pseudo file systems report no blocks at all)
        raise ValueError(
            f"out: the run needs {need / 2**20:.1f} MiB at {str(p)!r} but only "
            f"{free / 2**20:.1f} MiB are free there; save fewer frames (save_every) or choose "
            "another folder"
        )


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder if str(folder) else ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_h5(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except (OSError, FileNotFoundError) as exc:
        raise ValueError(f"cannot open run file {str(path)!r}: {exc}") from None


def _series_of(h5: h5py.File, path: str) -> list[str]:
    if _plain(h5.attrs.get("schema")) != SCHEMA:
        raise ValueError(f"{path!r} is not a {SCHEMA} file (written by nndyn_fast)")
    version = int(h5.attrs.get("schema_version", 0))
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"{path!r} has run-file schema version {version}; this nndyn_fast reads version "
            f"{SCHEMA_VERSION}"
        )
    return [k for k, v in h5.items() if isinstance(v, h5py.Group) and "fields" in v.attrs]


def _check_record(record, fields: dict, path: str) -> None:
    if record is None:
        raise ValueError(f"{path!r} holds no valid commit record; the file is damaged")
    meta = record[2]
    if set(meta["rows"]) != set(fields):
        raise ValueError(f"{path!r}: the commit record names series the file does not hold")
    for s, n in meta["rows"].items():
        cap = next(iter(fields[s].values())).capacity
        if not 0 <= n <= cap:
            raise ValueError(f"{path!r}: the commit record names {n} rows of {s!r}, room {cap}")


class RunFile:
    """Read access to a run file; datasets stay lazy (h5py datasets, read on slicing).

    ``run["trajectory/value"]`` is the raw dataset, preallocated to the run's capacity;
    :meth:`read` returns committed rows only, so a file left by a killed run, or one still being
    written, reads exactly what was committed when it was opened.
    """

    def __init__(self, path: str | Path):
        self._path = str(path)
        self._held = _is_held(self._path)  # before the record: a run ending now reads complete
        self._h5 = _open_h5(path)
        try:
            series = _series_of(self._h5, self._path)
            self._fields, _ = _layout(self._h5, series)
            record = _pick_record({k: self._h5["commit"][k][()].tobytes() for k in ("A", "B")})
            _check_record(record, self._fields, self._path)
        except BaseException:
            self._h5.close()
            raise
        _, _, self._meta, self._checkpoint = record

    @property
    def attrs(self) -> dict[str, Any]:
        """Root attributes (kind, versions, ...), with status, message and the run's summary."""
        out = {k: _plain(v) for k, v in self._h5.attrs.items()}
        out.update(self._meta.get("summary", {}))
        out["status"], out["message"] = self.status, self._meta["message"]
        return out

    @property
    def kind(self) -> str:
        return _plain(self._h5.attrs["kind"])

    @property
    def status(self) -> str:
        """``complete``, ``failed``, ``interrupted`` (also: killed), or ``running``."""
        s = self._meta["status"]
        return "interrupted" if s == "running" and not self._held else s

    @property
    def message(self) -> str:
        return self._meta["message"]

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self._meta.get("summary", {}))

    @property
    def params(self) -> dict[str, Any]:
        return _read_params(self._h5["params"])

    @property
    def rows(self) -> dict[str, int]:
        """Committed rows per series."""
        return dict(self._meta["rows"])

    @property
    def chunks(self) -> int:
        return self._meta["chunks"]

    @property
    def checkpoint(self) -> dict[str, Any]:
        return dict(self._checkpoint)

    def __getitem__(self, key: str) -> h5py.Dataset:
        return self._h5[key]

    def read(self, series: str, field: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Committed rows ``start:stop`` of ``series/field`` as an array."""
        n = self._meta["rows"][series]
        stop = n if stop is None else min(stop, n)
        return self._h5[series][field][start:stop]

    def to_xarray(self, series: str | None = None) -> Any:
        """The committed rows of ``series`` as an ``xarray.Dataset`` with named dimensions,
        coordinates, units and the run's attributes (see :func:`nndyn_fast.frames.to_xarray`;
        needs the ``[io]`` extra)."""
        from .frames import to_xarray

        return to_xarray(self, series)

    def to_pandas(self, series: str | None = None) -> Any:
        """The committed rows of ``series`` as a ``pandas.DataFrame`` indexed by its row field
        (see :func:`nndyn_fast.frames.to_pandas`; needs the ``[io]`` extra)."""
        from .frames import to_pandas

        return to_pandas(self, series)

    def verify(self) -> None:
        """Check every committed row against the record's CRC-32; ValueError if one differs."""
        for s, cols in self._fields.items():
            n = self._meta["rows"][s]
            for f in cols:
                crc = 0
                for start in range(0, n, 4096):
                    crc = zlib.crc32(
                        np.ascontiguousarray(self.read(s, f, start, start + 4096)), crc
                    )
                if crc != self._meta["crc"][f"{s}/{f}"]:
                    raise ValueError(
                        f"{self._path!r}: the committed rows of {s}/{f} fail their checksum"
                    )

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> RunFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_run(path: str | Path) -> RunFile:
    """Open a run file for reading (see :class:`RunFile`); also while a run writes it."""
    return RunFile(path)
