"""Options shared by the verbs that write a run file."""

from __future__ import annotations

import argparse

__all__ = ["add_run_file_options"]


def add_run_file_options(
    p: argparse.ArgumentParser,
    *,
    resume_help: str = "continue the run in --out from its last committed chunk (give the "
    "same options: each is compared with the file)",
    overwrite_help: str = "replace an existing --out",
    chunk_frames: bool = False,
) -> None:
    """``--overwrite`` and ``--resume`` (and ``--chunk-frames`` where a verb streams frames)."""
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--resume", action="store_true", help=resume_help)
    if chunk_frames:
        p.add_argument(
            "--chunk-frames",
            type=int,
            default=None,
            help="frames per committed chunk (default: about 1 MiB)",
        )
