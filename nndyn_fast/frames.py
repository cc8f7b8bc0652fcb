"""Run files as labelled tables: :mod:`xarray` datasets and :mod:`pandas` data frames.

:meth:`RunFile.to_xarray <nndyn_fast.storage.RunFile.to_xarray>` and
:meth:`RunFile.to_pandas <nndyn_fast.storage.RunFile.to_pandas>` call the functions here. Both
read the committed rows only (for a sweep, the rows its last commit marked done), name every
dimension after the file's HDF5 dimension scales (``time``, ``step``, ``node``, ``lr``, ...),
and carry each dataset's ``units`` and ``long_name``. xarray and pandas are optional: install
them with ``pip install "nndyn_fast[io]"``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    from .storage import RunFile

__all__ = ["series_arrays", "to_pandas", "to_xarray"]


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"reading run files as tables needs {module}; install the optional extra with "
            '`pip install "nndyn_fast[io]"`'
        ) from None


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _attrs(obj: h5py.HLObject) -> dict[str, Any]:
    keep = {}
    for k, v in obj.attrs.items():
        if k in ("DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME", "fields"):
            continue
        keep[k] = _text(v)
    return keep


def _committed(f: RunFile, series: str) -> np.ndarray | slice:
    """The committed rows of a series: a slice, or the done rows of a sweep (grid order)."""
    if f.kind == "sweep" and series == "points":
        return np.flatnonzero(np.asarray(f.checkpoint.get("done", ()), dtype=bool))
    return slice(0, f.rows[series])


def series_arrays(f: RunFile, series: str) -> dict[str, Any]:
    """The committed rows of one series with what names them (the readers' common part).

    Returns ``{"row_dim": name, "fields": {field: (dims, array, attrs)}, "coords": {dim:
    (array, attrs)}}``: ``dims`` the names of the field's axes (the row axis first), ``coords``
    the coordinate values of the other axes that have them (such as the learning rates ``lr``).
    """
    if series not in f.rows:
        raise ValueError(f"series must be one of {sorted(f.rows)}, got {series!r}")
    g = f[series]
    rows = _committed(f, series)
    fields: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    row_dim = "row"
    for name in json.loads(g.attrs["fields"]):
        ds = g[name]
        dims = []
        if ds.ndim == 1 and h5py.h5ds.is_scale(ds.id):  # the row field itself
            dims.append(name)
        for i in range(len(dims), ds.ndim):
            scales = ds.dims[i]
            scale = scales[0] if len(scales) else None
            dim = f"{name}_dim{i}" if scale is None else scale.name.rsplit("/", 1)[-1]
            dims.append(dim)
            if i and scale is not None and "units" in scale.attrs and dim not in coords:
                coords[dim] = (_text_array(scale[()]), _attrs(scale))
        row_dim = dims[0]
        fields[name] = (tuple(dims), ds[rows], _attrs(ds))
    return {"row_dim": row_dim, "fields": fields, "coords": coords}


def _text_array(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "OS":
        return np.array([_text(v) for v in a.ravel()], dtype=str).reshape(a.shape)
    return a


def _run_attrs(f: RunFile) -> dict[str, Any]:
    """Root attributes, status and summary, and the run's scalar parameters (netCDF-able)."""
    out: dict[str, Any] = {}
    for k, v in f.attrs.items():
        out[k] = v if isinstance(v, (str, int, float, np.number)) else json.dumps(v)
    for k, v in f.params.items():
        if isinstance(v, np.ndarray):
            continue
        key = k if k not in out else f"param_{k}"
        if isinstance(v, bool):
            v = int(v)
        out[key] = v if isinstance(v, (str, int, float)) else json.dumps(v)
    return out


def to_xarray(f: RunFile, series: str | None = None) -> Any:
    """The committed rows of ``series`` as an :class:`xarray.Dataset`.

    One variable per field, dimensions named by the file's dimension scales; the series' row
    field (``time``, ``step``, ``index`` or ``batch_size``) and the coordinate axes (``lr``,
    ``observable``) are coordinates. ``attrs`` hold the run's kind, description, status,
    versions and scalar parameters; each variable keeps its ``units`` and ``long_name``. With
    ``series=None`` a file of one series gives its Dataset, a file of several an
    :class:`xarray.DataTree` with one node per series.
    """
    xr = _need("xarray")
    names = list(f.rows) if series is None else [series]
    sets = {}
    for s in names:
        parts = series_arrays(f, s)
        data_vars, coords = {}, {}
        for name, (dims, data, attrs) in parts["fields"].items():
            if len(dims) == 1 and dims[0] == name:
                coords[name] = xr.Variable(dims, data, attrs)
            else:
                data_vars[name] = xr.Variable(dims, data, attrs)
        for dim, (values, attrs) in parts["coords"].items():
            coords[dim] = xr.Variable((dim,), values, attrs)
        ds = xr.Dataset(data_vars, coords=coords, attrs=_run_attrs(f))
        ds.attrs["series"] = s
        sets[s] = ds
    if len(sets) == 1:
        return next(iter(sets.values()))
    return xr.DataTree.from_dict({f"/{s}": ds for s, ds in sets.items()})


def to_pandas(f: RunFile, series: str | None = None) -> Any:
    """The committed rows of ``series`` as a :class:`pandas.DataFrame`, one row per row of the
    series, indexed by its row field (``time``, ``step``, ``index`` or ``batch_size``).

    A field with several values per row gives one column per value, named
    ``field[label]`` with the label from the axis' coordinate (``value[r]``, ``lam[0.25]``) or
    the position (``value[3]``; ``value[1,2]`` for two axes). A sweep's table also has its
    grid parameters as columns (its rows are the finished points in grid order). With
    ``series=None`` a file of one series gives its frame, a file of several a dict
    ``{series: DataFrame}``.
    """
    pd = _need("pandas")
    names = list(f.rows) if series is None else [series]
    frames = {}
    for s in names:
        parts = series_arrays(f, s)
        row_dim = parts["row_dim"]
        cols: dict[str, np.ndarray] = {}
        index = None
        for name, (dims, data, _) in parts["fields"].items():
            data = np.asarray(data)
            if name == row_dim:
                index = pd.Index(data, name=name)
                continue
            if data.ndim == 1:
                cols[name] = data
                continue
            labels = [
                _labels(parts["coords"], d, n)
                for d, n in zip(dims[1:], data.shape[1:], strict=True)
            ]
            flat = data.reshape(data.shape[0], -1)
            for j, combo in enumerate(np.ndindex(*data.shape[1:])):
                tag = ",".join(labels[a][i] for a, i in enumerate(combo))
                cols[f"{name}[{tag}]"] = flat[:, j]
        df = pd.DataFrame(cols, index=index)
        df.attrs.update(_run_attrs(f))
        frames[s] = df
    return next(iter(frames.values())) if len(frames) == 1 else frames


def _labels(coords: dict[str, Any], dim: str, n: int) -> list[str]:
    if dim in coords:
        values = coords[dim][0]
        return [v if isinstance(v, str) else f"{v:g}" for v in values.tolist()]
    return [str(i) for i in range(n)]
