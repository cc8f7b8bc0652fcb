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
    "RUN_PLOTS",
    "plot_coupling_spectrum",
    "plot_dde_lyapunov",
    "plot_diagram_run",
    "plot_eos",
    "plot_finite_size_gap",
    "plot_gap_run",
    "plot_gd_run",
    "plot_limit_run",
    "plot_lyapunov_run",
    "plot_memory_capacity",
    "plot_memory_exponents",
    "plot_network_run",
    "plot_run",
    "plot_spectrum_run",
    "plot_stability_diagram",
    "plot_sweep_run",
    "plot_trajectory_run",
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


# -- run files of every kind ------------------------------------------------------------------
def _open(run: Any):
    """``(RunFile, opened_here)`` for a path or an open run file."""
    from .storage import RunFile, open_run

    return (run, False) if isinstance(run, RunFile) else (open_run(run), True)


def _label(f: Any, series: str, field: str, fallback: str) -> str:
    """An axis label from a field's ``long_name`` and ``units`` (``"1"``: none shown)."""
    attrs = f[series][field].attrs
    name = attrs.get("long_name", fallback)
    name = name.decode() if isinstance(name, bytes) else str(name)
    units = attrs.get("units", "1")
    units = units.decode() if isinstance(units, bytes) else str(units)
    return name if units in ("1", "") else f"{name} [{units}]"


def _rows(f: Any, series: str) -> int:
    n = f.rows[series]
    if n == 0:
        raise ValueError(f"{f._path!r} holds no committed row of {series!r} yet")
    return n


def plot_trajectory_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """An ``ode`` or ``dde`` run file: every state component x_j(t) of the first batch
    members against t (at most 4 members, one colour per component), and for a delay run the
    delay embedding x(t − τ) against x(t) of the first component (the attractor of a chaotic
    Mackey–Glass run). ``ax``: one Axes (ode) or two (dde)."""
    f, mine = _open(run)
    try:
        if f.kind not in ("ode", "dde"):
            raise ValueError(f"plot_trajectory_run draws ode and dde runs, not {f.kind!r}")
        _check_path(path)
        n = _rows(f, "trajectory")
        t = f.read("trajectory", "time")
        y = f.read("trajectory", "value")
        params, kind = f.params, f.kind
        ylabel = _label(f, "trajectory", "value", "state")
    finally:
        if mine:
            f.close()
    delays = np.atleast_1d(params.get("delays", params.get("tau", []))).astype(float)
    embed = kind == "dde" and delays.size > 0 and n > 2
    fig, axes = _axes(ax, (1, 2) if embed else (1, 1), (10.0, 4.0) if embed else (6.4, 4.2))
    ax1 = axes[0]
    B, d = y.shape[1], y.shape[2]
    for b in range(min(B, 4)):
        for j in range(min(d, 8)):
            ax1.plot(
                t,
                y[:, b, j],
                color=f"C{j}",
                lw=1,
                alpha=1.0 if b == 0 else 0.45,
                label=rf"$x_{{{j + 1}}}(t)$" if b == 0 else None,
            )
    ax1.set_xlabel(r"time $t$")
    ax1.set_ylabel(ylabel)
    ax1.legend(fontsize=8, title=f"{min(B, 4)} of {B} trajectories" if B > 1 else None)
    if embed:
        tau = float(delays[0])
        ax2 = axes[1]
        late = t >= t[0] + tau
        lagged = np.interp(t[late] - tau, t, y[:, 0, 0])
        ax2.plot(y[late, 0, 0], lagged, lw=0.8, label=rf"delay embedding, $\tau = {tau:g}$")
        ax2.set_xlabel(r"$x(t)$")
        ax2.set_ylabel(r"$x(t - \tau)$")
        ax2.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_gd_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A ``gradient_descent`` run file (``nndyn eos`` writes one per learning rate): the loss
    and the sharpness against the step with the stability threshold 2/η drawn
    (:func:`plot_eos` of the one run). ``ax``: two Axes."""
    from .training import GDRun

    f, mine = _open(run)
    try:
        if f.kind != "gradient_descent":
            raise ValueError(f"plot_gd_run draws gradient_descent runs, not {f.kind!r}")
        lr = float(f.params["lr"])
        gd = GDRun(
            f.read("trajectory", "step"),
            f.read("trajectory", "loss"),
            f.read("trajectory", "grad_norm"),
            f.read("sharpness", "step"),
            f.read("sharpness", "value"),
            lr,
            np.zeros(0),
            f._path,
        )
        if gd.step.size == 0:
            raise ValueError(f"{f._path!r} holds no committed step yet")
    finally:
        if mine:
            f.close()
    return plot_eos({lr: gd}, path, ax=ax)


def plot_lyapunov_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A Lyapunov run file (``lyapunov_spectrum``, ``product_lyapunov``, ``sgd_lyapunov``):
    the running estimates λ_j(t) = (1/t) Σ log|R_jj| against time, the final estimates as
    dotted lines and the zero line that separates expanding from contracting directions.
    SGD runs show each replica's top exponent. ``ax``: one Axes."""
    f, mine = _open(run)
    try:
        kind = f.kind
        if kind in ("lyapunov_spectrum", "product_lyapunov"):
            _rows(f, "running")
            t = f.read("running", "time")
            est = f.read("running", "estimate")
            xlabel = "step" if kind == "product_lyapunov" else _label(f, "running", "time", "t")
            names = [rf"$\lambda_{{{j + 1}}}$" for j in range(est.shape[1])]
            ylabel = r"running estimate $\lambda_j(t)$ per " + (
                "step" if kind == "product_lyapunov" else "unit time"
            )
        elif kind == "sgd_lyapunov":
            _rows(f, "blocks")
            t = f.read("blocks", "step").astype(float)
            est = f.read("blocks", "logsum")[:, :, 0] / t[:, None]  # top exponent per replica
            xlabel = "SGD step"
            ylabel = r"running estimate of the top exponent $\lambda$ per step"
            names = [rf"replica {r + 1}" for r in range(est.shape[1])]
        else:
            raise ValueError(f"plot_lyapunov_run draws Lyapunov runs, not {kind!r}")
        summary = f.summary
        _check_path(path)
    finally:
        if mine:
            f.close()
    fig, (ax,) = _axes(ax, (1, 1), (6.4, 4.2))
    for j in range(est.shape[1]):
        ax.plot(t, est[:, j], color=f"C{j}", lw=1.2, label=names[j])
    for j, lam in enumerate(summary.get("exponents", [])[: est.shape[1]]):
        ax.axhline(lam, color=f"C{j}", ls=":", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.8, label=r"$\lambda = 0$ (neutral)")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)
    return fig


def plot_diagram_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """An ``sgd_stability_diagram`` run file (``nndyn sgd-lyapunov``) as
    :func:`plot_stability_diagram` (the committed batch sizes)."""
    from .sgd_stability import StabilityDiagram

    f, mine = _open(run)
    try:
        if f.kind != "sgd_stability_diagram":
            raise ValueError(f"plot_diagram_run draws sgd_stability_diagram runs, not {f.kind!r}")
        n = _rows(f, "diagram")
        s = f.summary
        d = StabilityDiagram(
            np.asarray(f.params["lrs"]),
            f.read("diagram", "batch_size")[:n],
            *(f.read("diagram", c) for c in ("lam", "lam_low", "lam_high", "ms")),
            float(s["lam_max"]),
            float(s["gd_threshold"]),
        )
    finally:
        if mine:
            f.close()
    return plot_stability_diagram(d, path, ax=ax)


def plot_sweep_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A ``sweep`` run file: each scalar result against the first grid parameter (one line
    per value of the others). For :func:`nndyn_fast.meanfield.kuramoto_order_parameter`
    (``nndyn sweep kuramoto``) the Ott–Antonsen curve r(K) = sqrt(1 − 2γ/K) is drawn with
    the critical coupling K_c = 2γ. ``ax``: one Axes."""
    import json

    f, mine = _open(run)
    try:
        if f.kind != "sweep":
            raise ValueError(f"plot_sweep_run draws sweep runs, not {f.kind!r}")
        done = np.asarray(f.checkpoint.get("done", ()), dtype=bool)
        if not done.any():
            raise ValueError(f"{f._path!r} holds no finished point yet")
        params = f.params
        names = list(json.loads(params["grid_names"]) if isinstance(params["grid_names"], str)
                     else params["grid_names"])  # fmt: skip
        fields = json.loads(f["points"].attrs["fields"])
        cols = {k: f["points"][k][()][done] for k in fields}
        fn = str(params.get("fn", ""))
        _check_path(path)
    finally:
        if mine:
            f.close()
    x_name = names[0]
    results = [k for k in fields if k not in names and k != "index" and cols[k].ndim == 1]
    fig, (ax,) = _axes(ax, (1, 1), (6.4, 4.2))
    x = cols[x_name].astype(float)
    others = [n for n in names[1:] if np.unique(cols[n]).size > 1]
    groups = np.unique(np.stack([cols[n] for n in others], 1), axis=0) if others else [None]
    for gi, g in enumerate(groups):
        sel = (
            np.ones(x.size, bool)
            if g is None
            else np.all(np.stack([cols[n] for n in others], 1) == g, axis=1)
        )
        order = np.argsort(x[sel])
        tag = "" if g is None else ", ".join(f"{n} = {v:g}" for n, v in zip(others, g, strict=True))
        for ri, key in enumerate(results[:1] if fn.endswith("kuramoto_order_parameter")
                                 else results):  # fmt: skip
            y = cols[key][sel][order]
            err = cols.get(f"{key}_std")
            label = f"{key} (simulation){', ' + tag if tag else ''}"
            if err is not None and fn.endswith("kuramoto_order_parameter"):
                ax.errorbar(x[sel][order], y, err[sel][order], fmt="o-", ms=4, capsize=2,
                            color=f"C{gi + ri}", label=label)  # fmt: skip
            else:
                ax.plot(x[sel][order], y, "o-", ms=4, color=f"C{gi + ri}", label=label)
    if fn.endswith("kuramoto_order_parameter") and {"K", "gamma"} <= set(cols):
        gamma = float(np.median(cols["gamma"]))
        K = np.linspace(min(x.min(), 2 * gamma) * 0.9, x.max() * 1.05, 400)
        r = np.sqrt(np.clip(1.0 - 2.0 * gamma / K, 0.0, None))
        ax.plot(K, r, "k--", lw=1.2, label=r"Ott–Antonsen $r = \sqrt{1 - 2\gamma/K}$")
        ax.axvline(2 * gamma, color="0.5", ls=":", lw=1, label=rf"$K_c = 2\gamma = {2 * gamma:g}$")
        ax.set_xlabel(r"coupling strength $K$")
        ax.set_ylabel(r"stationary order parameter $r$")
    else:
        ax.set_xlabel(x_name)
        ax.set_ylabel(", ".join(results) if results else "result")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_coupling_spectrum(
    spectrum: Any,
    reference: Any = None,
    path: str | Path | None = None,
    ax: Any = None,
    reference_label: str = "reference",
):
    """Eigenvalues of a coupling operator (:func:`nndyn_fast.spectra.coupling_spectrum`).

    Symmetric operators: λ_j against their rank j, with ``reference`` (e.g. a graphon's
    closed-form eigenvalues, array) drawn beside them. Directed operators: the eigenvalues in
    the complex plane. The leading λ_max, which sets the critical coupling, is marked.
    """
    _check_path(path)
    vals = np.asarray(spectrum.eigenvalues)
    fig, (ax,) = _axes(ax, (1, 1), (6.0, 4.2))
    if np.iscomplexobj(vals) and np.any(np.imag(vals) != 0):
        ax.plot(vals.real, vals.imag, "o", ms=5, label=f"{spectrum.method}, N = {spectrum.n}")
        if reference is not None:
            ref = np.asarray(reference, dtype=complex)
            ax.plot(ref.real, ref.imag, "kx", ms=6, label=reference_label)
        ax.axvline(spectrum.lambda_max, color="k", ls="--", lw=0.8, label=r"max Re $\lambda$")
        ax.set_xlabel(r"Re $\lambda$")
        ax.set_ylabel(r"Im $\lambda$")
    else:
        j = np.arange(1, vals.size + 1)
        ax.plot(j, np.real(vals), "o", ms=5, label=f"{spectrum.method}, N = {spectrum.n}")
        if reference is not None:
            ref = np.real(np.asarray(reference))[: vals.size]
            ax.plot(np.arange(1, ref.size + 1), ref, "kx", ms=6, label=reference_label)
        ax.axhline(spectrum.lambda_max, color="k", ls="--", lw=0.8, label=r"$\lambda_{max}$")
        ax.set_xlabel("rank $j$")
        ax.set_ylabel(r"eigenvalue $\lambda_j$ of $W/N$")
    ax.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_finite_size_gap(gap: Any, path: str | Path | None = None, ax: Any = None):
    """The continuum limit beside finite N (:func:`nndyn_fast.continuum.finite_size_gap`).

    Left: the limit's r_∞(t) with the particle runs' time averages r_N. Right: abs(r_N − r_∞)
    against N on log axes, with the N^{-1/2} scale of random sampling. ``ax``: two Axes.
    """
    _check_path(path)
    fig, (ax1, ax2) = _axes(ax, (1, 2), (10.0, 4.0))
    lim = gap.limit
    ax1.plot(lim.t, lim.r, "k", lw=1.2, label=r"limit $r_\infty(t)$")
    for i, (n, r) in enumerate(zip(gap.Ns, gap.r_N, strict=True)):
        ax1.axhline(r, lw=0.8, ls="--", color=f"C{i + 1}",
                    label=f"N = {n}: " + r"$\bar r_N$" + f" = {r:.4f}")  # fmt: skip
    ax1.set_xlabel("t")
    ax1.set_ylabel("order parameter $r$")
    ax1.legend(fontsize=8)
    Ns = np.asarray(gap.Ns, dtype=float)
    ax2.loglog(Ns, np.maximum(gap.gap, 1e-16), "o-", label=r"$|r_N - r_\infty|$")
    ax2.loglog(Ns, Ns**-0.5, "k:", lw=1, label=r"$N^{-1/2}$")
    ax2.set_xlabel("N")
    ax2.set_ylabel("gap")
    ax2.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_limit_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A continuum-limit run file (:func:`nndyn_fast.continuum.meanfield_limit`).

    Left: r(t). Right: the last saved state: abs(z(x)) and arg z(x) over the graphon variable
    (Ott–Antonsen) or the density ρ(θ) = (1/2π)(1 + 2 Re Σ_n z_n e^{−inθ}) (Fokker–Planck).
    ``ax``: two Axes.
    """
    from .storage import RunFile, open_run

    _check_path(path)
    f = run if isinstance(run, RunFile) else open_run(run)
    try:
        if f.kind != "meanfield_limit":
            raise ValueError(
                f"{f._path!r} holds a {f.kind!r} run; plot_limit_run draws meanfield_limit runs"
            )
        params = f.params
        t = f.read("observables", "time")
        obs = f.read("observables", "value")
        n_frames = f.rows["trajectory"]
        last = f.read("trajectory", "value", n_frames - 1)[0]
        grid = np.asarray(f["trajectory"]["x"]) if "x" in f["trajectory"] else None
        t_last = float(f.read("trajectory", "time", n_frames - 1)[0])
    finally:
        if f is not run:
            f.close()
    fig, (ax1, ax2) = _axes(ax, (1, 2), (10.0, 4.0))
    eq = params.get("equation")
    ax1.plot(t, obs[:, 0], lw=1.2, label=f"{eq}, K = {float(params['K']):g}")
    ax1.set_xlabel("t")
    ax1.set_ylabel("order parameter $r$")
    z = last[0] + 1j * last[1]
    if eq == "fokker_planck":
        theta = np.linspace(0, 2 * np.pi, 400)
        nn = np.arange(1, z.size + 1)
        rho = (1 + 2 * np.real(np.exp(-1j * np.outer(theta, nn)) @ z)) / (2 * np.pi)
        ax2.plot(theta, rho, lw=1.2, label=f"t = {t_last:g}")
        ax2.set_xlabel(r"$\theta$")
        ax2.set_ylabel(r"density $\rho(\theta)$")
    else:
        x = np.arange(1, z.size + 1) / z.size if grid is None else grid
        ax2.plot(x, np.abs(z), lw=1.2, label=f"|z(x)| at t = {t_last:g}")
        ax2.plot(x, np.angle(z) / np.pi, lw=0.8, ls="--", label=r"arg z(x) / $\pi$")
        ax2.set_xlabel("graphon variable x")
        ax2.set_ylabel("local order parameter")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_spectrum_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A ``coupling_spectrum`` run file (:func:`nndyn_fast.spectra.save_spectrum`,
    ``nndyn spectrum``): the eigenvalues of W/N as :func:`plot_coupling_spectrum` draws them,
    the closed form of the graph limit beside them where the file holds one, λ_max and the
    critical couplings K_c = σ²/λ_max, (2γ + σ²)/λ_max of its summary. ``ax``: one Axes."""
    from types import SimpleNamespace

    f, mine = _open(run)
    try:
        if f.kind != "coupling_spectrum":
            raise ValueError(f"plot_spectrum_run draws coupling_spectrum runs, not {f.kind!r}")
        _rows(f, "eigenvalues")
        v = np.asarray(f.read("eigenvalues", "value"))
        ref = np.asarray(f.read("eigenvalues", "reference"))
        params, summary = f.params, f.summary
    finally:
        if mine:
            f.close()
    vals = v[:, 0] + 1j * v[:, 1] if np.any(v[:, 1] != 0) else v[:, 0]
    refs = ref[:, 0] + 1j * ref[:, 1]
    known = np.isfinite(refs)
    spec = SimpleNamespace(eigenvalues=vals, method=params.get("method"), n=params.get("N"),
                           lambda_max=float(np.max(v[:, 0])))  # fmt: skip
    what = params.get("graph", params.get("coupling", "graph limit"))
    fig = plot_coupling_spectrum(
        spec, np.where(known, refs, np.nan) if known.any() else None, ax=ax,
        reference_label=f"closed form ({what}, N → ∞)",
    )  # fmt: skip
    ax1 = fig.axes[0] if ax is None else ax
    notes = []
    if "K_c_identical" in summary:
        sigma = params.get("noise")
        notes.append(rf"$K_c = \sigma^2/\lambda_{{max}}$ = {summary['K_c_identical']:.4g} "
                     rf"($\sigma$ = {sigma:g})")  # fmt: skip
    if "K_c_lorentzian" in summary:
        g, sigma = params.get("gamma"), params.get("noise") or 0.0
        notes.append(rf"$K_c = (2\gamma + \sigma^2)/\lambda_{{max}}$ = "
                     f"{summary['K_c_lorentzian']:.4g} "
                     rf"($\gamma$ = {g:g}, $\sigma$ = {sigma:g})")  # fmt: skip
    for note in notes:
        ax1.plot([], [], " ", label=note)
    ax1.set_title(rf"$\lambda_{{max}}$ = {spec.lambda_max:.5g}", fontsize=9)
    ax1.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_gap_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A ``finite_size_gap`` run file (:func:`nndyn_fast.continuum.finite_size_gap` with
    ``out=``, ``nndyn limit --particles``): the figure of :func:`plot_finite_size_gap`, the
    limit r_∞(t) beside the particle runs' r_N and abs(r_N − r_∞) against N^{-1/2}; for a
    constant graphon p also the stationary Ott–Antonsen value sqrt(1 − 2γ/(K p)). ``ax``: two
    Axes."""
    from types import SimpleNamespace

    f, mine = _open(run)
    try:
        if f.kind != "finite_size_gap":
            raise ValueError(f"plot_gap_run draws finite_size_gap runs, not {f.kind!r}")
        _rows(f, "limit")
        lim = SimpleNamespace(t=np.asarray(f.read("limit", "time")),
                              r=np.asarray(f.read("limit", "r")))  # fmt: skip
        sizes = {k: np.asarray(f.read("sizes", k)) for k in ("N", "r_N", "gap")}
        params = f.params
    finally:
        if mine:
            f.close()
    gap = SimpleNamespace(limit=lim, Ns=sizes["N"], r_N=sizes["r_N"], gap=sizes["gap"])
    fig = plot_finite_size_gap(gap, ax=ax)
    ax1 = fig.axes[0] if ax is None else ax[0]
    lp = params.get("limit_params") or []
    if params.get("limit") == "Graphon 'constant'" and len(lp) and float(lp[0]) > 0:
        Kp = float(params["K"]) * float(lp[0])
        r_oa = np.sqrt(max(0.0, 1.0 - 2.0 * float(params["gamma"]) / Kp))
        ax1.axhline(r_oa, color="k", lw=0.8, ls=":",
                    label=rf"Ott–Antonsen $\sqrt{{1 - 2\gamma/(Kp)}}$ = {r_oa:.4f}")  # fmt: skip
        ax1.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_dde_lyapunov(result: Any, path: str | Path | None = None, ax: Any = None):
    """Running estimates of a delay equation's Lyapunov exponents
    (:func:`nndyn_fast.dde_lyapunov.dde_lyapunov`) against the measured time, the final values
    with their standard errors in the legend and zero marked. ``result`` is the returned
    :class:`~nndyn_fast.dde_lyapunov.DDELyapunovSpectrum`, its run file or that file's path."""
    from .storage import RunFile

    if isinstance(result, (str, Path, RunFile)):
        f, mine = _open(result)
        try:
            t = np.asarray(f.read("running", "time"))
            run = np.asarray(f.read("running", "estimate"))
            lam = np.asarray(f.summary.get("exponents", run[-1]))
            se = np.asarray(f.summary.get("stderr", np.full(run.shape[1], np.nan)))
        finally:
            if mine:
                f.close()
    elif all(hasattr(result, a) for a in ("time", "running", "exponents", "stderr")):
        t, run, lam, se = result.time, result.running, result.exponents, result.stderr
    else:
        raise TypeError("result must be a DDELyapunovSpectrum or the path of its run file")
    _check_path(path)
    fig, (ax1,) = _axes(ax, (1, 1), (6.4, 4.2))
    for j in range(run.shape[1]):
        ax1.plot(t, run[:, j], label=rf"$\lambda_{j + 1}$ = {lam[j]:.4g} $\pm$ {se[j]:.1g}")
    ax1.axhline(0.0, color="k", lw=0.8, label=r"$\lambda = 0$ (neutral)")
    ax1.set_xscale("log")
    ax1.xaxis.set_minor_formatter("")  # (log minor labels crowd the major ones)
    ax1.set_xlabel("time after the transient")
    ax1.set_ylabel("running estimate (1/time)")
    ax1.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_memory_exponents(
    result: Mapping[str, Any], path: str | Path | None = None, ax: Any = None
):
    """Top exponents of the neural-DDE family of
    :func:`nndyn_fast.memory_capacity.memory_exponents` against K tau e, with the threshold
    K tau e = 1 and the linearisation's prediction Re W_0(-c tau)/tau."""
    if not isinstance(result, Mapping) or "gap" not in result:
        raise TypeError("result must be the dict returned by memory_exponents")
    _check_path(path)
    fig, (ax1,) = _axes(ax, (1, 1), (6.4, 4.2))
    x = result["K_tau_e"]
    lam = result["exponents"]
    for j in range(lam.shape[1]):
        ax1.plot(x, lam[:, j], "o-", label=rf"$\lambda_{j + 1}$")
    ax1.plot(x, result["linear_prediction"], "k:", label=r"Re $W_0(-c\tau)/\tau$")
    ax1.axvline(result["theory_threshold"], color="k", ls="--", label=r"$K\tau e = 1$")
    ax1.axhline(0.0, color="k", lw=0.8)
    ax1.set_xscale("log")
    ax1.set_xlabel(r"$K\tau e$")
    ax1.set_ylabel("Lyapunov exponent (1/time)")
    ax1.legend(fontsize=8)
    _save(fig, path)
    return fig


def plot_fit_run(run: Any, path: str | Path | None = None, ax: Any = None):
    """A ``fit`` run file (:func:`nndyn_fast.fit.fit`, ``nndyn ode fit``): the loss
    ℓ = 1/(2B) Σ_i ||F_θ(x_i) − y_i||² against the optimiser's iteration on a log axis, the
    final loss marked. ``ax``: one Axes."""
    f, mine = _open(run)
    try:
        if f.kind != "fit":
            raise ValueError(f"plot_fit_run draws fit runs, not {f.kind!r}")
        _rows(f, "loss")
        step = np.asarray(f.read("loss", "step"))
        loss = np.asarray(f.read("loss", "loss"))
        params = f.params
    finally:
        if mine:
            f.close()
    fig, (ax1,) = _axes(ax, (1, 1), (6.4, 4.2))
    label = f"{params.get('method')} ({params.get('model')}, {params.get('solver')})"
    ax1.plot(step, loss, ".-", lw=1.2, label=label)
    ax1.axhline(loss[-1], color="k", lw=0.8, ls=":", label=f"final loss {loss[-1]:.3g}")
    ax1.set_yscale("log")
    ax1.set_xlabel("iteration")
    ax1.set_ylabel(r"loss $\ell(\theta)$")
    ax1.legend(fontsize=8)
    _save(fig, path)
    return fig


# kind of a run file -> the function that draws it (``nndyn plot`` dispatches here); each takes
# ``(run, path=None, ax=None)`` with ``run`` a path or an open RunFile and returns the figure.
# A module that writes a new kind of run file adds its entry.
RUN_PLOTS: dict[str, Any] = {
    "kuramoto": plot_network_run,
    "firing_rate": plot_network_run,
    "ode": plot_trajectory_run,
    "dde": plot_trajectory_run,
    "gradient_descent": plot_gd_run,
    "lyapunov_spectrum": plot_lyapunov_run,
    "product_lyapunov": plot_lyapunov_run,
    "sgd_lyapunov": plot_lyapunov_run,
    "sgd_stability_diagram": plot_diagram_run,
    "sweep": plot_sweep_run,
    "meanfield_limit": plot_limit_run,
    "coupling_spectrum": plot_spectrum_run,
    "finite_size_gap": plot_gap_run,
    "dde_lyapunov": plot_dde_lyapunov,
    "fit": plot_fit_run,
}


def plot_run(run: str | Path, path: str | Path | None = None, *, dpi: float = 150, ax: Any = None):
    """Draw any run file the package writes with the function :data:`RUN_PLOTS` holds for its
    kind, and save it to ``path`` (PDF, PNG, SVG, ... from the suffix) at ``dpi``; returns the
    figure. ``ax``: the Axes to draw into (as many as the kind's figure has panels), else a
    new figure.

    Raises
    ------
    ValueError
        Not a run file of this package, a kind without a plot (the message lists the kinds
        that have one), an unwritable ``path``, or a run with no committed rows.
    """
    from .storage import open_run

    _check_path(path)
    with open_run(run) as f:
        draw = RUN_PLOTS.get(f.kind)
        if draw is None:
            raise ValueError(
                f"{str(run)!r} holds a {f.kind!r} run, which has no plot; nndyn plot draws "
                f"{sorted(RUN_PLOTS)}"
            )
        fig = draw(f, ax=ax)
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig
