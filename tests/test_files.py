"""Run files describe themselves: every dataset has ``units`` and ``long_name``, the root says
what the run is, every axis has an HDF5 dimension scale (so netCDF readers see named
dimensions), and the readers ``to_xarray``/``to_pandas`` give exactly the committed rows."""

import json

import h5py
import pytest
from run_kinds import KINDS

from nndyn_fast import open_run


def _datasets(h5):
    found = []
    h5.visititems(
        lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None
    )
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_has_units_names_and_dimension_scales(run_files, kind):
    with h5py.File(run_files[kind], "r", locking=False) as h5:
        assert h5.attrs["kind"] == kind
        assert len(h5.attrs["description"]) > 10
        for name, ds in _datasets(h5):
            if h5py.h5ds.is_scale(ds.id) and "units" not in ds.attrs:
                # a bare netCDF dimension: no values, only a size
                assert ds.attrs["NAME"].startswith(b"This is a netCDF dimension"), name
                continue
            assert "units" in ds.attrs and "long_name" in ds.attrs, name
            for i, dim in enumerate(ds.dims):
                assert h5py.h5ds.is_scale(ds.id) and ds.ndim == 1 or len(dim) == 1, (name, i)
        # the series fields got real descriptions from their run kind, not just their names
        for s, g in h5.items():
            if "fields" in g.attrs:
                fields = json.loads(g.attrs["fields"])
                assert any(g[f].attrs["long_name"] != f for f in fields), s


@pytest.mark.parametrize("kind", KINDS)
def test_xarray_opens_every_series_with_named_dimensions(run_files, kind):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    with open_run(run_files[kind]) as f:
        series = list(f.rows)
    for s in series:
        with xr.open_dataset(run_files[kind], engine="h5netcdf", group=s) as ds:
            assert ds.data_vars, s
            assert not [d for d in ds.dims if str(d).startswith("phony_dim")], ds.dims
            for v in ds.data_vars.values():
                assert "units" in v.attrs
