"""Every figure the package draws, with the theory beside the simulation.

Each ``plot_*`` function takes ``ax=None`` (an Axes, or a sequence of Axes for multi-panel
figures; when omitted a new :class:`matplotlib.figure.Figure` is made without pyplot), draws,
saves to ``path`` when given (the format from its suffix) and returns the figure. None of them
selects a matplotlib backend: a notebook keeps its own, and files are written by the figure's
canvas directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .eigen import gd_threshold

__all__ = [
    "plot_eos",
    "plot_memory_capacity",
    "plot_network_run",
    "plot_stability_diagram",
]


def _axes(ax: Any, grid: tuple[int, int], figsize: tuple[float, float], **subplots: Any):
    """``(fig, axes)``: the given Axes (as many as the grid has), or a new figure's grid."""
    n = grid[0] * grid[1]
    if ax is not None:
        from matplotlib.axes import Axes

        axes = list(np.ravel(ax)) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if not all(isinstance(a, Axes) for a in axes):
            raise TypeError(f"ax must be a matplotlib Axes (or {n} of them), got {ax!r:.60}")
        if len(axes) != n:
            raise ValueError(f"ax must be {n} Axes for this figure, got {len(axes)}")
        return axes[0].figure, axes
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, list(fig.subplots(*grid, squeeze=False, **subplots).ravel())


def _check_path(path: str | Path | None) -> None:
    """Refuse an unwritable figure path before anything is drawn."""
    if path is not None:
        from ._validate import check_out_path

        check_out_path("path", path, overwrite=True)


def _save(fig, path: str | Path | None) -> None:
    if path is not None:
        fig.savefig(path, dpi=150)


def plot_stability_diagram(diagram: Any, path: str | Path | None = None, ax: Any = None):
    """The top Lyapunov exponent λ(η, B) of SGD at a minimum, with its zero contours.

    Colours: λ on a diverging scale centred on 0 (blue stable, red unstable); solid contour:
    λ = 0 (almost-sure stability); dashed: the mean-square exponent = 0; vertical line: the
    gradient-descent threshold η = 2/λ_max. Cells are drawn between the grid's edges (the
    geometric midpoints of neighbouring η and B), and the batch axis shows the batch sizes.
    """
    from matplotlib.colors import SymLogNorm
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    from .sgd_stability import StabilityDiagram

    if not isinstance(diagram, StabilityDiagram):
        raise TypeError(f"diagram must be a StabilityDiagram, got {type(diagram).__name__}")
    _check_path(path)

    fig, (ax,) = _axes(ax, (1, 1), (6.4, 4.4))
    lrs, bs, lam = np.asarray(diagram.lrs), np.asarray(diagram.batch_sizes), diagram.lam
    vmax = float(np.nanmax(np.abs(lam))) or 1.0
    mesh = ax.pcolormesh(
        _edges(lrs),
        _edges(bs),
        lam,
        cmap="RdBu_r",
        norm=SymLogNorm(linthresh=1e-3 * vmax, vmin=-vmax, vmax=vmax),
        shading="flat",
    )
    fig.colorbar(mesh, ax=ax, label=r"top Lyapunov exponent $\lambda$ per step")
    if lam.shape[0] > 1 and lam.shape[1] > 1:
        ax.contour(lrs, bs, lam, levels=[0.0], colors="k", linewidths=1.2)
        ax.plot([], [], "k-", label=r"$\lambda = 0$")
        if np.all(np.isfinite(diagram.ms)):
            ax.contour(lrs, bs, diagram.ms, levels=[0.0], colors="k", linestyles="dashed")
            ax.plot([], [], "k--", label="mean-square exponent = 0")
    ax.axvline(
        diagram.gd_threshold, color="tab:green", lw=1.5, label=r"GD threshold $2/\lambda_{\max}$"
    )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(FixedLocator(bs))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_yticks(bs, [f"{int(b)}" for b in bs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(r"learning rate $\eta$")
    ax.set_ylabel(r"batch size $B$")
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)
    return fig


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges of a positive, increasing grid on a log axis (geometric midpoints)."""
    x = np.asarray(x, dtype=float)
    if x.size == 1:
        return np.array([x[0] / 1.5, x[0] * 1.5])
    mid = np.sqrt(x[1:] * x[:-1])
    return np.concatenate([[x[0] ** 2 / mid[0]], mid, [x[-1] ** 2 / mid[-1]]])


def plot_eos(runs: Mapping[float, Any], path: str | Path | None = None, ax: Any = None):
    """Edge of stability: loss (log scale, top) and sharpness λ_max(H) (bottom) against the
    step for each learning rate η, with the stability threshold 2/η of each run drawn dashed
    in the run's colour. ``ax``: two Axes (loss, sharpness)."""
    from .training import check_runs

    check_runs(runs)
    _check_path(path)
    fig, (ax1, ax2) = _axes(ax, (2, 1), (7.0, 6.0), sharex=True)
    for i, (lr, run) in enumerate(sorted(runs.items())):
        c = f"C{i}"
        ax1.semilogy(run.step, run.loss, color=c, lw=0.8, label=rf"$\eta = {lr:g}$")
        ax2.plot(run.sharpness_step, run.sharpness[:, 0], color=c, lw=1.2)
        two = gd_threshold(lr)
        ax2.axhline(two, color=c, ls="--", lw=0.8, label=rf"$2/\eta = {two:g}$")
    ax1.set_ylabel("training loss")
    ax1.legend(fontsize=8)
    ax2.set_ylabel(r"sharpness $\lambda_{\max}(H)$")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8, title="GD threshold", title_fontsize=8)
    _save(fig, path)
    return fig


def plot_memory_capacity(result: Mapping[str, Any], path: str | Path | None = None, ax: Any = None):
    """The memory-capacity demonstration of :func:`nndyn_fast.memory_capacity.memory_demo`.

    Left: the sign of x(T)/x_0 for x' = −a x(t − τ) over (aτ, T/τ), with the theory's switch
    aτ = 1/e and the observed one. Right: the best fits of x ↦ x² by 1-D neural DDEs for each
    κ = Kτ (monotone below the threshold κ = 1/e). ``ax``: two Axes.
    """
    if not isinstance(result, Mapping) or "sweep" not in result:
        raise TypeError("result must be the dict returned by memory_demo")
    _check_path(path)
    fig, (ax1, ax2) = _axes(ax, (1, 2), (11.0, 4.2))
    a, T, thr = result["a_tau"], result["T"], result["linear_threshold"]
    ax1.pcolormesh(a, T, result["sign"].T, cmap="coolwarm_r", shading="auto", vmin=-1, vmax=1)
    ax1.axvline(result["theory_threshold"], color="k", ls="--", label=r"$a\tau = 1/e$ (theory)")
    ax1.axvline(thr, color="y", ls=":", label=f"observed ({thr:.4f})")
    ax1.set_xlabel(r"$a\tau$")
    ax1.set_ylabel(r"$T/\tau$")
    ax1.legend(loc="upper right", fontsize=8, title=r"sign of $x(T)/x_0$ (red: $<0$)")
    sweep = result["sweep"]
    xs = np.linspace(-1, 1, 201)
    ax2.plot(xs, xs**2, "k--", lw=2, label=r"target $x^2$")
    for f in sweep["fits"]:
        tag = "monotone" if f["monotone"] else "extremum"
        ax2.plot(f["x"], f["y"], label=rf"$K\tau$={f['kappa']:g}: {tag}, rmse {f['rmse']:.1e}")
    ax2.set_xlabel(r"input $x_0$ (constant history)")
    ax2.set_ylabel(r"read-out $\alpha\, x(T) + \beta$")
    ax2.legend(
        fontsize=7,
        title=f"observed threshold {sweep['observed_threshold']:.3g}, theory 1/e = "
        f"{result['theory_threshold']:.3f}",
        title_fontsize=7,
    )
    _save(fig, path)
    return fig


def plot_network_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A Kuramoto or firing-rate run file (path or open :class:`~nndyn_fast.storage.RunFile`).

    Left: the order parameter r(t) (or the mean rate), with the Ott–Antonsen value
    r_∞ = sqrt(1 − 2γ/K) drawn when the run is all-to-all with Lorentzian frequencies of width
    γ (recorded by ``nndyn kuramoto``). Right: the last saved phases θ_i mod 2π against the
    natural frequencies ω_i (locked oscillators line up, drifting ones scatter). Noisy runs
    with realisations: the mean of r over them with a ±1 std band, and the phases of the
    first. ``ax``: two Axes.
    """
    import json

    from .storage import RunFile, open_run

    _check_path(path)
    f = run if isinstance(run, RunFile) else open_run(run)
    try:
        if f.kind not in ("kuramoto", "firing_rate"):
            raise ValueError(
                f"{f._path!r} holds a {f.kind!r} run; plot_network_run draws network runs "
                "(kuramoto, firing_rate) written by simulate or nndyn kuramoto"
            )
        params = f.params
        t = f.read("observables", "time")
        obs = f.read("observables", "value")
        n_frames = f.rows["trajectory"]
        if n_frames == 0:
            raise ValueError("the run file holds no saved frame")
        last = f.read("trajectory", "value", n_frames - 1)[0]
        t_last = float(f.read("trajectory", "time", n_frames - 1)[0])
    finally:
        if f is not run:
            f.close()
    phase = params.get("model") == "kuramoto"
    fig, (ax1, ax2) = _axes(ax, (1, 2), (10.0, 4.0))
    label = f"N = {params.get('N')}, K = {params.get('K'):g}" if "K" in params else None
    if obs.ndim == 3:  # noisy runs with R realisations: their mean, a band of ±1 std
        label = f"{label}, σ = {params.get('noise'):g}, mean of {obs.shape[1]}"
        mean, std = obs[:, :, 0].mean(axis=1), obs[:, :, 0].std(axis=1)
        ax1.fill_between(t, mean - std, mean + std, alpha=0.3, lw=0, label="±1 std")
        obs, last = mean[:, None], last[0]  # phases of the first realisation
    ax1.plot(t, obs[:, 0], lw=1, label=label)
    ax1.set_xlabel("t")
    ax1.set_ylabel("order parameter $r$" if phase else "mean rate")
    options = json.loads(params.get("cli_options") or "{}")
    if (
        phase
        and options.get("freq") == "lorentzian"
        and options.get("graph") == "complete"
        and float(params.get("alpha", 0.0)) == 0.0
        and params.get("noise") is None
    ):
        gamma, K = float(options["width"]), float(params["K"])
        r_inf = np.sqrt(1.0 - 2.0 * gamma / K) if K > 2.0 * gamma else 0.0
        ax1.axhline(
            r_inf, color="k", ls="--", lw=1, label=rf"Ott–Antonsen $r_\infty = {r_inf:.3f}$"
        )
    else:
        r_inf = None
    ax1.legend(fontsize=8)
    drive = params.get("omega" if phase else "I")
    y = np.mod(last, 2 * np.pi) if phase else last
    if drive is not None and np.size(drive) == last.size:  # stored with the run (N <= 2M)
        x = np.asarray(drive)
        ax2.set_xlabel(r"natural frequency $\omega_i$" if phase else r"input $I_i$")
        lim = float(np.nanpercentile(np.abs(x), 98)) or 1.0
        ax2.set_xlim(-lim, lim)
        if r_inf:  # oscillators with |ω| <= K r lock to the mean field
            for sign in (-1, 1):
                ax2.axvline(sign * K * r_inf, color="k", ls="--", lw=0.8)
            ax2.plot([], [], "k--", lw=0.8, label=r"locking edge $|\omega| = K r_\infty$")
    else:
        x = np.arange(1, last.size + 1) / last.size
        ax2.set_xlabel("node position $i/N$")
    ax2.plot(x, y, ".", ms=1.5, label=f"phases at t = {t_last:g}")
    ax2.set_ylabel(r"$\theta_i$ mod $2\pi$" if phase else "$x_i$")
    ax2.legend(fontsize=8, markerscale=6)
    _save(fig, path)
    return fig
