"""Every option of every ``nndyn`` verb has help text, and the help shows its default."""

import argparse

import pytest

from nndyn_fast import __version__
from nndyn_fast.cli import build_parser, main


def _walk(parser, name="nndyn"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for verb, sub in action.choices.items():
                yield from _walk(sub, f"{name} {verb}")


PARSERS = dict(_walk(build_parser()))


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_with_its_default(name):
    parser = PARSERS[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help.strip(), f"{what} has no help text"
        shown = formatter._get_help_string(action)
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            assert "default" in shown, f"{what}: the help does not show the default"
    assert parser.format_help()


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
