"""Meta-tests that keep the package's conventions true (layout, kernels, public API)."""

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import numba
import pytest
from numba.core.caching import NullCache
from numba.core.registry import CPUDispatcher

import nndyn_fast
import nndyn_fast.kernels

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = sorted(m.name for m in pkgutil.iter_modules(nndyn_fast.kernels.__path__))


def test_every_kernel_module_imports_under_the_package_name():
    assert KERNEL_MODULES, "no kernel modules found"
    for name in KERNEL_MODULES:
        mod = importlib.import_module(f"nndyn_fast.kernels.{name}")
        assert mod.__name__ == f"nndyn_fast.kernels.{name}"


def _kernel_sources():
    for path in sorted((ROOT / "kernels").glob("*.py")):
        yield path, path.read_text()


def test_kernels_are_jitted_cached_without_fastmath_print_or_io():
    for path, src in _kernel_sources():
        tree = ast.parse(src)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = [n for n in names if n.split(".")[0] in {"h5py", "matplotlib", "dask"}]
                assert not bad, f"{path.name} imports {bad}: kernels do no I/O"
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                pytest.fail(f"{path.name}:{node.lineno} calls print inside kernels/")
            if isinstance(node, ast.keyword) and node.arg == "fastmath":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), (
                    f"{path.name}:{node.value.lineno} uses fastmath=True"
                )
        mod = importlib.import_module(f"nndyn_fast.kernels.{path.stem}")
        for name, obj in vars(mod).items():
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                pytest.fail(f"{path.name}: {name} is a plain Python function in kernels/")
            if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
                # kernels taking a user's jitted function may opt out of caching, say so
                cached = not isinstance(obj._cache, NullCache)
                assert cached or "user" in (obj.__doc__ or "").lower(), (
                    f"{path.name}: {name} is not cache=True"
                )


def test_no_bare_kernels_import_anywhere():
    pattern = re.compile(r"^\s*(from|import)\s+kernels\b", re.M)
    for folder in ("nndyn_fast", "kernels", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not pattern.search(path.read_text()), f"{path} imports bare 'kernels'"


def test_no_runnable_python_files_at_the_root():
    assert not list(ROOT.glob("*.py"))


def test_public_api_is_documented():
    for name in nndyn_fast.__all__:
        obj = getattr(nndyn_fast, name)
        if name.startswith("__"):
            continue
        doc = inspect.getdoc(obj)
        assert doc and len(doc) > 20, f"nndyn_fast.{name} has no docstring"


def test_numba_threading_layer_is_usable():
    assert numba.get_num_threads() >= 1


def test_layout_conventions_hold_package_wide():
    """The CLI imports only public names; no library module selects a matplotlib backend; no
    public function takes a private keyword."""
    import ast
    import importlib
    import inspect
    import pkgutil
    import re
    from pathlib import Path

    import nndyn_fast

    root = Path(nndyn_fast.__file__).parent
    for path in root.rglob("*.py"):
        assert not re.search(r"matplotlib\.use\(", path.read_text()), path
    for path in (root / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and "nndyn_fast" in node.module:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private or private == ["__version__"], (path.name, private)
    for info in pkgutil.iter_modules(nndyn_fast.__path__, "nndyn_fast."):
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isfunction(obj):
                private = [p for p in inspect.signature(obj).parameters if p.startswith("_")]
                assert not private, f"{info.name}.{name} takes {private}"


def test_every_public_module_has_an_api_page_in_the_index():
    modules = sorted(p.stem for p in (ROOT / "nndyn_fast").glob("*.py") if not p.stem[0] == "_")
    assert modules, "no public modules found"
    index = (ROOT / "docs" / "api" / "index.rst").read_text()
    listed = set(re.findall(r"^\s+(\w+)\s*$", index.split(":maxdepth:", 1)[1], re.M))
    for name in modules:
        page = ROOT / "docs" / "api" / f"{name}.rst"
        assert page.is_file(), f"nndyn_fast/{name}.py has no API page docs/api/{name}.rst"
        assert f"automodule:: nndyn_fast.{name}" in page.read_text(), page
        assert name in listed, f"docs/api/{name}.rst is not listed in docs/api/index.rst"
