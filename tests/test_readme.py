"""The README's Python examples run as written (in a temporary folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})


def test_readme_snippets_can_run_twice():
    """Each call of a snippet that writes a run file (``out=``) also says ``overwrite=True``
    (or ``resume=True``), so running the snippet again does not fail on the existing file
    (checked on the text: running block 0 twice costs half a minute of the suite)."""
    calls = [c for code in BLOCKS for c in re.findall(r"\w+\((?:[^()]|\([^()]*\))*\)", code)]
    writing = [c for c in calls if "out=" in c]
    assert writing
    for call in writing:
        assert "overwrite=True" in call or "resume=True" in call, call


def test_readme_commands_can_run_twice():
    """A README command that writes a run file says --overwrite (or --resume), so pasting it
    again does not fail on the existing file (nndyn plot replaces its figure anyway)."""
    text = README.read_text()
    commands = re.findall(r"nndyn (?!plot)[a-z][^`\n]*--out[^`\n]*", text)
    assert commands
    for cmd in commands:
        assert "--overwrite" in cmd or "--resume" in cmd, cmd
