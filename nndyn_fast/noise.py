"""Noisy networks: many realisations of the stochastic Kuramoto and firing-rate models.

dθ_i = [ω_i + (K/N) Σ_j W_ij D(θ_j − θ_i)] dt + σ dB_i,  D(φ) = Σ_m b_m sin(m φ − α),
dx_i = [−x_i + (K/N) Σ_j W_ij σ(x_j) + I_i] dt + σ dB_i,

with independent standard Brownian motions B_i, integrated by Euler–Maruyama or stochastic Heun
(:mod:`nndyn_fast.kernels.stochastic`). :func:`nndyn_fast.simulate` comes here when it is given
``noise=`` (validation of the shared arguments stays there); the run lifecycle is the one of
every streaming entry point (:func:`nndyn_fast.runs.start_run`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numba
import numpy as np

from ._validate import as_array, check_int, check_memory, check_nonnegative, check_seed
from .errors import NonFiniteStateError
from .kernels import kuramoto as kk
from .kernels import stochastic as ks
from .runs import start_run

__all__ = ["NOISY_METHODS", "check_noise_options", "simulate_noisy", "noise_key"]

NOISY_METHODS = {"em": ks.EM, "heun": ks.HEUN}
MAX_HARMONICS = 64


def noise_key(seed: Any) -> tuple[int, int]:
    """The 64-bit Philox key (two 32-bit words) of a seed (int, sequence or SeedSequence)."""
    seed = check_seed("seed", seed)
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    k = ss.generate_state(2, np.uint32)
    return int(k[0]), int(k[1])


def _harmonics(coupling_fn: Any) -> np.ndarray:
    """The sine coefficients b_1..b_M of D, checked odd (no cosine modes, no constant)."""
    if coupling_fn is None:
        return np.ones(1)
    if isinstance(coupling_fn, dict):
        unknown = set(coupling_fn) - {"sin", "cos"}
        if unknown or "sin" not in coupling_fn:
            raise ValueError(
                "coupling_fn as a dict takes the keys 'sin' (b_1..b_M of D = Σ b_m sin(mφ)) and "
                f"optionally 'cos', got keys {sorted(coupling_fn)}"
            )
        cos = as_array("coupling_fn['cos']", coupling_fn.get("cos", [0.0]), ndim=1)
        if np.any(cos != 0.0):
            raise ValueError(
                "coupling_fn must be odd, D(−φ) = −D(φ) (sine modes only); got the cosine "
                f"(even) coefficients {cos.tolist()} (a_0, a_1, ...): put a phase lag in the "
                "model's alpha instead"
            )
        coupling_fn = coupling_fn["sin"]
    b = as_array("coupling_fn", coupling_fn, ndim=1)
    if not 1 <= b.size <= MAX_HARMONICS:
        raise ValueError(
            f"coupling_fn must hold 1 to {MAX_HARMONICS} sine coefficients b_1..b_M, got {b.size}"
        )
    return np.ascontiguousarray(b)


def check_noise_options(
    model: Any, method: str, noise: Any, seed: Any, realisations: Any, coupling_fn: Any
) -> dict[str, Any]:
    """Check the options of a noisy run (before any kernel): returns them normalised."""
    if method not in NOISY_METHODS:
        raise ValueError(
            f"with noise, method must be one of {list(NOISY_METHODS)} (stochastic "
            f"Euler–Maruyama or Heun with fixed steps dt), got {method!r}"
        )
    sigma = check_nonnegative("noise", noise)
    k0, k1 = noise_key(0 if seed is None else seed)
    R = None if realisations is None else check_int("realisations", realisations, minimum=1)
    if coupling_fn is not None and model.model_code != kk.PHASE:
        raise ValueError("coupling_fn is the phase coupling function D; the rate model has none")
    harm = _harmonics(coupling_fn)
    return {"sigma": sigma, "key": (k0, k1), "R": R, "harm": harm, "code": NOISY_METHODS[method]}


def _advance(args: tuple, R: int, par_rows: bool, bufs: tuple, threads_for: Any, work: int) -> int:
    """One kernel call: one realisation with row-parallel sums, or blocks of realisations on
    ``numba.get_num_threads()`` threads (the kernel releases the GIL; blocks change no bit)."""
    if par_rows:
        with threads_for(work):
            return ks.noisy_advance(*args, 0, R, True, *bufs)
    threads = max(1, min(R, numba.get_num_threads()))
    if threads == 1:
        return ks.noisy_advance(*args, 0, R, False, *bufs)
    edges = np.linspace(0, R, threads + 1).astype(int)
    with ThreadPoolExecutor(threads) as pool:
        calls = [
            pool.submit(ks.noisy_advance, *args, int(a), int(b), False, *bufs)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        return max(f.result() for f in calls)


def _noisy_description(model: str, R: int, sigma: float, method: str) -> str:
    """What a noisy network run is (the root ``description`` of its file)."""
    from .meanfield import _NETWORK_DESCRIPTION

    return (
        f"{R} realisations of a noisy {_NETWORK_DESCRIPTION[model]}; with independent white "
        f"noise sigma dB_i (sigma = {sigma:g}, method {method!r}) in every realisation"
    )


def _noisy_series(model: str, R: int, n: int) -> dict:
    """The series of a noisy network run file: those of a deterministic one
    (:func:`nndyn_fast.meanfield._network_series`) with a leading ``realisation`` axis."""
    from .meanfield import _network_series

    spec = _network_series(model, n)
    for s in spec.values():
        v = s["value"]
        s["value"] = {**v, "shape": (R, *v["shape"]), "dims": ("realisation", *v["dims"]),
                      "long_name": f"{v['long_name']}, per realisation"}  # fmt: skip
    return spec


def simulate_noisy(
    model: Any,
    x0: np.ndarray,
    dt: float,
    total: int,
    method: str,
    opts: dict[str, Any],
    *,
    save_every: int,
    steps_per_call: int,
    out: Any,
    overwrite: bool,
    resume: bool,
    progress: bool,
    params: dict[str, Any],
    run_cls: Any,
    progress_cls: Any,
    threads_for: Any,
) -> Any:
    """The noisy branch of :func:`nndyn_fast.simulate` (arguments checked there and by
    :func:`check_noise_options`). ``x0`` is (N,) or (R, N)."""
    n = model.n
    R = opts["R"]
    squeeze = R is None
    if x0.ndim == 2:
        if R is None:
            R = x0.shape[0]
            squeeze = False
        if x0.shape != (R, n):
            raise ValueError(f"state0 must have shape ({n},) or ({R}, {n}), got {x0.shape}")
    R = 1 if R is None else R
    X0 = np.ascontiguousarray(np.broadcast_to(x0, (R, n)), dtype=np.float64)
    sigma, (k0, k1), harm = opts["sigma"], opts["key"], opts["harm"]
    code = opts["code"]
    # at most about 4 MiB of observables a chunk (chunks change no result: the noise of a step
    # depends on its number alone)
    steps_per_call = max(1, min(steps_per_call, (1 << 18) // R))
    frame_rows = steps_per_call // save_every + 1
    kept = (
        0 if out is not None else 16.0 * R * (total + 1) + 8.0 * R * n * (total // save_every + 1)
    )
    check_memory(
        f"a noisy run of {R} realisations in chunks of {steps_per_call} steps"
        + ("" if out is not None else " kept in memory (pass out= to stream it)"),
        16.0 * R * steps_per_call + 8.0 * R * n * frame_rows + 80.0 * R * n + kept,
    )
    params = {
        **params,
        "noise": sigma,
        "noise_key": np.array([k0, k1], dtype=np.int64),
        "realisations": R,
        "coupling_fn": harm,
    }
    c = model._c
    par_rows = R == 1
    names = model.observables

    def record(X: np.ndarray) -> np.ndarray:
        obs = np.empty((1, R, 2))
        for r in range(R):
            ks.record_row(model.model_code, model.act_code, X[r], obs, 0, r)
        return obs

    state = X0.copy()
    step = 0
    writer = None
    if out is not None:
        writer = start_run(
            out,
            kind=params["model"],
            params=params,
            inputs={"state0": X0},
            series=_noisy_series(params["model"], R, n),
            coords={"observables": {"observable": (list(names), "1", "observable")}},
            description=_noisy_description(params["model"], R, sigma, method),
            rows={"trajectory": total // save_every + 1, "observables": total + 1},
            checkpoint={"state": state, "step": 0},
            resume=resume,
            overwrite=overwrite,
        )
        ck = writer.checkpoint
        state = np.ascontiguousarray(ck["state"], dtype=np.float64)
        step = int(ck["step"])
    frames_buf = np.empty((frame_rows, R, n))
    obs_buf = np.empty((steps_per_call, R, 2))
    done_r = np.zeros(R, np.int64)
    keep_t, keep_obs = [np.zeros(1)], [record(X0)]
    keep_ft, keep_frames = [np.zeros(1)], [X0[None].copy()]
    steps_idx = frame_steps = np.zeros(0, np.int64)
    work = c.work * (2 if code == ks.HEUN else 1) * R * harm.size
    bar = progress_cls(total, enabled=progress)
    bar.update(step)
    with writer if writer is not None else nullcontext():
        if writer is not None and writer.chunks == 0:
            zero = np.zeros(1, np.int64)
            writer.append("trajectory", time=np.zeros(1), step=zero, value=state[None])
            writer.append("observables", time=np.zeros(1), step=zero, value=record(state))
            writer.commit(state=state, step=0)
        try:
            while step < total:
                k = min(steps_per_call, total - step)
                start = state.copy()
                args = (
                    model.model_code, model.act_code, state, model.drive, model.K / n,
                    model.alpha, harm, sigma, dt, code, k, save_every, step, k0, k1, 1, c.kind,
                    c.cp, c.wfun,
                )  # fmt: skip
                bufs = (done_r, frames_buf, obs_buf)
                status = _advance(args, R, par_rows, bufs, threads_for, work)
                done = k
                if status != kk.OK:  # every realisation back to the last step all of them made
                    done = int(done_r.min())
                    state[:] = start
                    if done > 0:
                        args = (*args[:10], done, *args[11:])
                        _advance(args, R, par_rows, bufs, threads_for, work)
                steps_idx = np.arange(step + 1, step + done + 1, dtype=np.int64)
                frame_steps = steps_idx[steps_idx % save_every == 0]
                nf = frame_steps.size
                if writer is not None:
                    writer.append(
                        "observables", time=steps_idx * dt, step=steps_idx, value=obs_buf[:done]
                    )
                    writer.append(
                        "trajectory", time=frame_steps * dt, step=frame_steps, value=frames_buf[:nf]
                    )
                    writer.commit(state=state, step=step + done)
                else:
                    keep_t.append(steps_idx * dt)
                    keep_obs.append(obs_buf[:done].copy())
                    keep_ft.append(frame_steps * dt)
                    keep_frames.append(frames_buf[:nf].copy())
                step += done
                bar.update(step)
                if status != kk.OK:
                    bad = int(np.argmin(done_r))
                    raise NonFiniteStateError(
                        f"the state of realisation {bad} became non-finite at step {step + 1} "
                        f"(t = {(step + 1) * dt:g}); {step} good steps were kept"
                        + (f" in {str(out)!r}" if out else ""),
                        step=step + 1,
                        time=(step + 1) * dt,
                    )
        finally:
            bar.close()
    if writer is not None:
        t, obs = steps_idx * dt, obs_buf[: steps_idx.size].copy()
        ft, frames = frame_steps * dt, frames_buf[: frame_steps.size].copy()
        path = writer.path
    else:
        t, obs = np.concatenate(keep_t), np.concatenate(keep_obs)
        ft, frames = np.concatenate(keep_ft), np.concatenate(keep_frames)
        path = None
    if squeeze:
        obs, frames, state = obs[:, 0], frames[:, 0], state[0]
    return run_cls(t, obs, ft, frames, state, names, path, total)
