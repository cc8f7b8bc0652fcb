"""Options shared by the verbs that write a run file."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable

__all__ = [
    "DefaultsHelpFormatter",
    "add_run_file_options",
    "cli_params",
    "progress_enabled",
    "use_defaults_formatter",
]


def add_run_file_options(
    p: argparse.ArgumentParser,
    *,
    resume_help: str = "continue the run in --out from its last committed chunk (give the "
    "same options: each is compared with the file)",
    overwrite_help: str = "replace an existing --out",
    chunk_frames: bool = False,
) -> None:
    """``--overwrite``, ``--resume`` and ``--progress/--no-progress`` (and ``--chunk-frames``
    where a verb streams frames)."""
    p.add_argument("--overwrite", action="store_true", help=overwrite_help + " (default: off)")
    p.add_argument("--resume", action="store_true", help=resume_help + " (default: off)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="report progress on stderr once per chunk (default: when stderr is a terminal)",
    )
    if chunk_frames:
        p.add_argument(
            "--chunk-frames",
            type=int,
            default=None,
            help="frames per committed chunk (default: about 1 MiB)",
        )


def cli_params(command: str, o: argparse.Namespace, names: Iterable[str]) -> dict[str, str]:
    """The ``extra_params`` a command stores in its run file: ``cli_command`` and its options
    ``names`` (the ones that decide the result: sizes, seeds, generators) as ``cli_options``
    JSON, so the file says how it was made. Options that do not change the result (``--out``,
    ``--resume``, ``--progress``, schedulers) are left out: a resume compares these."""
    return {"cli_command": command, "cli_options": json.dumps({k: getattr(o, k) for k in names})}


def progress_enabled(o: argparse.Namespace) -> bool:
    """``--progress`` / ``--no-progress``, else whether stderr is a terminal."""
    chosen = getattr(o, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the text already states one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return text
        return super()._get_help_string(action)


def use_defaults_formatter(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` and all its subcommands' parsers :class:`DefaultsHelpFormatter`."""
    parser.formatter_class = DefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                use_defaults_formatter(sub)
