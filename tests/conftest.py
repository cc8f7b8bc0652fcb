"""Shared pytest set-up: the tests folder is importable so that the naive numpy references in
``tests/reference_*.py`` can be imported by name (pytest runs in importlib mode)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
