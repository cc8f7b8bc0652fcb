"""Run files describe themselves: every dataset has ``units`` and ``long_name``, the root says
what the run is, every axis has an HDF5 dimension scale (so netCDF readers see named
dimensions), and the readers ``to_xarray``/``to_pandas`` give exactly the committed rows."""

import json

import h5py
import numpy as np
import pytest
from run_kinds import KIND_OF, KINDS

from nndyn_fast import open_run

# one worker builds the session's run files (tests/conftest.py run_files) and reads them all
pytestmark = pytest.mark.xdist_group("run_files")


def _datasets(h5):
    found = []
    h5.visititems(
        lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None
    )
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_every_dataset_has_units_names_and_dimension_scales(run_files, kind):
    with h5py.File(run_files[kind], "r", locking=False) as h5:
        assert h5.attrs["kind"] == KIND_OF.get(kind, kind)
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


@pytest.mark.parametrize("kind", KINDS)
def test_to_xarray_and_to_pandas_hold_the_committed_rows(run_files, kind):
    pytest.importorskip("xarray")
    pytest.importorskip("pandas")
    with open_run(run_files[kind]) as f:
        rows = f.rows
        if kind == "sweep":
            done = np.asarray(f.checkpoint["done"])
            assert done.all()  # a finished sweep: every row in grid order
            expect = {(s, k): f[s][k][done] for s in rows for k in json.loads(f[s].attrs["fields"])}
        else:
            expect = {(s, k): f.read(s, k) for s in rows for k in json.loads(f[s].attrs["fields"])}
        tree, frames = f.to_xarray(), f.to_pandas()
    for s in rows:
        ds = tree if len(rows) == 1 else tree[s].to_dataset()
        df = frames if len(rows) == 1 else frames[s]
        assert ds.attrs["kind"] == KIND_OF.get(kind, kind) and ds.attrs["status"] == "complete"
        for (s2, k), want in expect.items():
            if s2 != s:
                continue
            np.testing.assert_array_equal(ds[k].values, want)
            assert ds[k].attrs["units"] and ds[k].attrs["long_name"]
            got = df.index.values if k == df.index.name else df.filter(regex=rf"^{k}(\[|$)")
            np.testing.assert_array_equal(np.asarray(got).reshape(want.shape), want)


def test_sweep_to_pandas_equals_the_in_memory_table(tmp_path):
    pytest.importorskip("pandas")
    from sweep_targets import affine_noise

    from nndyn_fast import sweep

    grid = {"a": [0.0, 1.0, 2.0], "b": [1, 2]}
    res = sweep(affine_noise, grid, scheduler="serial", out=tmp_path / "s.h5")
    with open_run(res.path) as f:
        df = f.to_pandas()
        ds = f.to_xarray()
    np.testing.assert_array_equal(df.index.values, np.arange(len(res)))
    for name in res.names:
        np.testing.assert_array_equal(df[name].values, res.grid[name])
    for key, values in res.results.items():
        cols = df.filter(regex=rf"^{key}(\[|$)").values
        np.testing.assert_array_equal(cols.reshape(values.shape), values)
        np.testing.assert_array_equal(ds[key].values, values)


def test_readers_name_the_missing_extra(run_files, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_xarray(name, *args, **kw):
        if name in ("xarray", "pandas"):
            raise ImportError(name)
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_xarray)
    monkeypatch.delitem(__import__("sys").modules, "xarray", raising=False)
    monkeypatch.delitem(__import__("sys").modules, "pandas", raising=False)
    with open_run(run_files["ode"]) as f:
        with pytest.raises(ImportError, match=r"nndyn_fast\[io\]"):
            f.to_xarray()
        with pytest.raises(ImportError, match=r"nndyn_fast\[io\]"):
            f.to_pandas()


def test_the_fokker_planck_limit_names_its_fourier_modes(run_files):
    with h5py.File(run_files["meanfield_limit_fp"], "r", locking=False) as h5:
        g = h5["trajectory"]
        assert [d.label or d[0].name.rsplit("/", 1)[1] for d in g["value"].dims][1:] == [
            "part",
            "mode",
        ]
        np.testing.assert_array_equal(g["mode"][()], np.arange(1, 9))
        assert list(g["part"].asstr()[()]) == ["re", "im"]
