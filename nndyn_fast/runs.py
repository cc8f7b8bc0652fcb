"""The run lifecycle shared by every streaming entry point.

Every long computation that writes a run file goes through :func:`start_run`::

    with start_run(out, kind="kuramoto", params=params, inputs={"omega": omega, ...},
                   series=series, rows=rows, checkpoint={"state": x0, "step": 0},
                   resume=resume, overwrite=overwrite) as run:
        ck = run.checkpoint                # the initial state, or the last committed one
        while ...:                         # one chunk -> append -> commit step
            run.append("trajectory", time=..., value=...)
            run.commit(state=x, step=k, rng=rng_state(rng))

- **create**, or **resume** after comparing the kind, every parameter and a digest (SHA-256
  over dtype, shape and bytes) of every input array with the file; a refusal names the first
  differing parameter with both values and leaves the file untouched;
- **status**: leaving the block marks the file ``complete``; an exception ``failed`` with the
  error; SIGINT (KeyboardInterrupt) and SIGTERM ``interrupted``. While the block runs, SIGTERM
  raises :class:`RunInterrupted` in the main thread, so the file is closed cleanly;
- **random generators**: :func:`rng_state` / :func:`restore_rng` put a NumPy generator's exact
  state into a checkpoint and back, so a resumed run draws the same numbers.

The file format and its crash consistency are in :mod:`nndyn_fast.storage`.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .storage import TrajectoryWriter, _plain

__all__ = ["Run", "RunInterrupted", "digest", "restore_rng", "rng_state", "start_run"]

# input arrays up to this size are stored in /params beside their digest (enough to rerun);
# larger ones (a dense W) only by digest
_STORE_INPUT_BYTES = 16 << 20


class RunInterrupted(KeyboardInterrupt):
    """A run was stopped by SIGTERM (SIGINT gives KeyboardInterrupt itself).

    Like KeyboardInterrupt it passes ``except Exception``; ``signum`` is the signal.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def digest(a: Any) -> str:
    """``sha256:<hex>`` of an array's dtype, shape and bytes (C order)."""
    arr = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(memoryview(arr.reshape(-1).view(np.uint8)))
    return "sha256:" + h.hexdigest()


def rng_state(rng: np.random.Generator) -> dict:
    """The exact state of a NumPy generator as JSON-able data (for a checkpoint)."""
    return rng.bit_generator.state


def restore_rng(state: Mapping[str, Any]) -> np.random.Generator:
    """A generator in the state saved by :func:`rng_state`."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = dict(state)
    return np.random.Generator(bitgen)


class Run(TrajectoryWriter):
    """A :class:`~nndyn_fast.storage.TrajectoryWriter` that turns SIGTERM into
    :class:`RunInterrupted` while its ``with`` block runs, and marks the closing status."""

    _installed: bool = False
    _old_handler: Any = None

    def __enter__(self) -> Run:
        if threading.current_thread() is threading.main_thread():
            self._old_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
            self._installed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._installed:  # (a handler not set from Python reads as None: the default)
            signal.signal(signal.SIGTERM, self._old_handler or signal.SIG_DFL)
            self._installed = False
        super().__exit__(exc_type, exc, tb)
        if isinstance(exc, KeyboardInterrupt):  # the CLI says what was kept
            exc.run_path, exc.run_rows = self.path, self.rows


def _raise_interrupted(signum, frame):
    raise RunInterrupted(signum)


def start_run(
    out: str | Path,
    *,
    kind: str,
    params: Mapping[str, Any],
    series: Mapping[str, Mapping[str, Any]],
    rows: Mapping[str, int],
    checkpoint: Mapping[str, Any],
    inputs: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    coords: Mapping[str, Mapping[str, Any]] | None = None,
    description: str = "",
) -> Run:
    """Create the run file ``out``, or reopen it to resume after checking it is the same run.

    Parameters
    ----------
    out : the run file.
    kind : what produces the run (``"kuramoto"``, ``"gradient_descent"``, ...).
    params : every option of the run (stored in ``/params``); array values count as inputs.
    series, rows, checkpoint : the series' fields (with their units and long names), their
        capacities and the initial checkpoint (see
        :meth:`nndyn_fast.storage.TrajectoryWriter.create`).
    inputs : dict, optional
        The run's input arrays (weights, data, initial state, ...); their digests are
        stored and compared on resume, and arrays up to 16 MiB are stored themselves.
    resume, overwrite : continue the run in ``out``, or replace ``out``.
    coords, description : coordinate values of named row axes, and what the run is (see
        :meth:`~nndyn_fast.storage.TrajectoryWriter.create`; a resume keeps the file's).

    Raises
    ------
    ValueError
        ``resume`` and ``overwrite`` together; a resume whose kind, parameters or inputs differ
        from the file's (the message names the first difference, the file is left untouched).
    RunLockedError
        Another process writes ``out``.
    """
    if resume and overwrite:
        raise ValueError("give overwrite or resume, not both")
    inputs = {**{k: v for k, v in params.items() if isinstance(v, np.ndarray)}, **(inputs or {})}
    scalars = {k: v for k, v in params.items() if k not in inputs}
    full = {**scalars, "inputs": {k: digest(v) for k, v in inputs.items()}}
    if not resume:
        stored = {
            k: np.asarray(v)
            for k, v in inputs.items()
            if np.asarray(v).nbytes <= _STORE_INPUT_BYTES
        }
        return Run.create(
            out,
            kind=kind,
            params={**full, **stored},
            series=series,
            rows=rows,
            checkpoint=checkpoint,
            overwrite=overwrite,
            coords=coords,
            description=description,
        )
    run = Run.resume(out)
    try:
        from .storage import _open_h5

        with _open_h5(run.path) as h5:
            stored_kind = _plain(h5.attrs["kind"])
        if stored_kind != kind:
            raise ValueError(
                f"cannot resume {str(out)!r}: it holds a {stored_kind!r} run, not {kind!r}"
            )
        _compare(str(out), run.params, full)
        if run.capacity != {s: int(n) for s, n in rows.items()}:
            raise ValueError(
                f"cannot resume {str(out)!r}: its series hold {run.capacity} rows, this run "
                f"needs {dict(rows)}"
            )
    except BaseException:
        run.release()
        raise
    return run


def _normal(value: Any) -> Any:
    """A parameter as it reads back from the file (tuples as lists, numpy scalars as Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (dict, list, tuple)):
        return json.loads(json.dumps(value, default=_plain))
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    if isinstance(a, (bool, str)) or isinstance(b, (bool, str)):  # True is not 1 here
        return type(a) is type(b) and a == b
    return a == b


def _compare(path: str, stored: Mapping[str, Any], params: Mapping[str, Any]) -> None:
    stored_inputs = stored.get("inputs", {})
    for key, value in params.items():
        if key == "inputs":
            for name, d in value.items():
                old = stored_inputs.get(name)
                if old != d:
                    raise ValueError(
                        f"cannot resume {path!r}: input {name} differs from the one the run "
                        f"started with (digest {str(old)[:19]}... in the file, {d[:19]}... now); "
                        "resume with the same data"
                    )
            continue
        new = _normal(value)
        old = stored.get(key, "<absent>")
        if not _same(old, new):
            raise ValueError(
                f"cannot resume {path!r}: parameter {key} is {old!r} in the file and {new!r} "
                "in this run; resume with the same options"
            )
    extra = set(stored_inputs) - set(params.get("inputs", {}))
    if extra:
        raise ValueError(
            f"cannot resume {path!r}: the file's run had input {sorted(extra)[0]}, this one "
            "has none"
        )
