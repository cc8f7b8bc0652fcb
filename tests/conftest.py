"""Shared pytest set-up.

- The tests folder is importable so that the naive numpy references in ``tests/reference_*.py``
  can be imported by name (pytest runs in importlib mode).
- The whole suite (plain ``pytest``, no paths given) runs on two worker processes when
  pytest-xdist is installed (the ``test`` extra has it): ``-n 2 --dist loadgroup``. Paths, or
  ``-n 0`` / ``-p no:xdist``, run in one process; ``-n N`` picks another count.
- Under workers, a test marked ``exclusive`` runs while no other test runs (its assertion
  reads the wall clock, or races a process it starts), and tests marked ``late`` run after the
  others (they read the kernel cache the rest of the suite filled). Tests that must not run at
  the same time as one another share an ``xdist_group`` (one worker runs them in turn).
"""

import fcntl
import os
import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402

WORKERS = 2  # the CI machine's cores


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Default to ``-n 2 --dist loadgroup`` for the whole suite (before xdist reads -n)."""
    if (
        config.pluginmanager.hasplugin("xdist")
        and not hasattr(config, "workerinput")  # a worker itself
        and config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and config.option.numprocesses is None
        and config.option.dist == "no"
        and not config.option.usepdb
        and not config.option.collectonly
    ):
        config.option.numprocesses = WORKERS
        config.option.dist = "loadgroup"


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """Tell each worker whether the run groups its tests: the default above is set here, not in
    the arguments the workers parse, and a worker marks its tests' groups only when it knows."""
    node.workerinput["nndyn_loadgroup"] = node.config.getvalue("dist") == "loadgroup"


def pytest_configure(config):
    if getattr(config, "workerinput", {}).get("nndyn_loadgroup"):
        config.option.loadgroup = True  # read by xdist when it names the groups of the tests
    config.addinivalue_line(
        "markers", "exclusive: runs while no other test runs (wall-clock bounds, process races)"
    )
    config.addinivalue_line("markers", "late: runs after the other tests")
    config.addinivalue_line("markers", "xdist_group(name): tests one worker runs in turn")


def pytest_collection_modifyitems(config, items):
    # stable: the late tests keep their order among themselves
    items.sort(key=lambda item: item.get_closest_marker("late") is not None)


@contextmanager
def _flock(path, mode):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # releases the lock


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Under workers: every test holds the run's lock shared, an ``exclusive`` one holds it
    alone. A turnstile taken first lets a waiting exclusive test in before further shared ones
    (the other worker cannot starve it)."""
    if not hasattr(item.config, "workerinput"):
        yield
        return
    # the run's base folder (each worker's basetemp is a folder in it), removed with it
    base = Path(item.config.option.basetemp).parent
    exclusive = item.get_closest_marker("exclusive") is not None
    with ExitStack() as held:
        with _flock(base / "tests.turnstile", fcntl.LOCK_EX):
            if exclusive:
                held.enter_context(_flock(base / "tests.lock", fcntl.LOCK_EX))
        if not exclusive:
            held.enter_context(_flock(base / "tests.lock", fcntl.LOCK_SH))
        yield


@pytest.fixture(scope="session")
def run_files(tmp_path_factory):
    """``{kind: path}``: one tiny run file of every kind the package writes (made once)."""
    import run_kinds

    folder = tmp_path_factory.mktemp("run_kinds")
    return {kind: run_kinds.make(kind, folder) for kind in run_kinds.KINDS}
