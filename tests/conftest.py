"""Shared pytest set-up: the tests folder is importable so that the naive numpy references in
``tests/reference_*.py`` can be imported by name (pytest runs in importlib mode)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def run_files(tmp_path_factory):
    """``{kind: path}``: one tiny run file of every kind the package writes (made once)."""
    import run_kinds

    folder = tmp_path_factory.mktemp("run_kinds")
    return {kind: run_kinds.make(kind, folder) for kind in run_kinds.KINDS}
