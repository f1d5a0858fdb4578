"""Figures (matplotlib, Agg backend): numpy/pandas in, PNG out; no JAX transforms here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fit import CORR_FLAG, TARGET_VARIABLES, SiteCalibration, simulated

__all__ = ["plot_simulation", "plot_bifurcation", "plot_fit", "plot_correlation",
           "VARIABLE_LABELS"]

# Axis label (quantity and unit) of each fitted variable: figures and tables use these.
VARIABLE_LABELS = {
    "veg_cover_%": "vegetation cover (%)",
    "SOM_%": "SOM, 0-20 cm (% of soil mass)",
    "SOM_0-10_%": "SOM, 0-10 cm (% of soil mass)",
    "SOM_10-20_%": "SOM, 10-20 cm (% of soil mass)",
    "SOM_20-40_%": "SOM, 20-40 cm (% of soil mass)",
    "runoff_mm": "runoff (mm/yr)",
    "erosion_t/ha": "sediment yield (t/ha/yr)",
    "theta_m3/m3": "soil moisture (m³/m³)",
}

PANELS = (
    ("veg_cover_%", "veg_cover_%", "vegetation cover (%)"),
    ("SOM_%", "SOM_%", "SOM 0-20 cm (%)"),
    ("runoff_mm", "runoff_mm", "runoff (mm/yr)"),
    ("erosion_t/ha", "erosion_t/ha", "sediment (t/ha/yr)"),
    ("theta_m3/m3", "theta_m3/m3", "soil moisture (m³/m³)"),
    ("ET_mm", None, "ET, drainage (mm/yr)"),
)


def _figure(n_panels: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 3
    nrows = int(np.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharex=True)
    return plt, fig, np.atleast_1d(axes).ravel()


def plot_simulation(table, observations, path, title: str = "", holdout: tuple | None = None,
                    label: str = "simulated", obs_label: str = "observed"):
    """Simulated annual series (lines) with observed points where the data have them.

    Arguments:
        table: DataFrame from ``cli.simulation_table`` (one row per year).
        observations: ``Observations`` of the site, or None.
        path: PNG file to write.
        holdout: optional (first, last) year range to shade as holdout.
    """
    plt, fig, axes = _figure(len(PANELS))
    years = table["year"].to_numpy()
    for ax, (col, obs_key, ylabel) in zip(axes, PANELS):
        ax.plot(years, table[col], color="C0", lw=2, label="ET" if col == "ET_mm" else label)
        if col == "ET_mm":
            ax.plot(years, table["drainage_mm"], color="C2", lw=2, label="drainage")
            ax.plot(years, table["rainfall_mm"], color="0.6", lw=1, ls="--", label="rainfall")
            ax.legend(fontsize=7, loc="best")
        if col == "SOM_%":
            for k, c in zip(("SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%"), ("C1", "C4", "C5")):
                ax.plot(years, table[k], color=c, lw=1, ls=":", label=k[4:-2] + " cm")
        if observations is not None and obs_key is not None:
            m = observations.masks[obs_key]
            if m.any():
                ax.plot(observations.years[m], observations.values[obs_key][m], "o",
                        color="k", ms=5, label=obs_label)
            if col == "SOM_%":
                for k, c in zip(("SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%"),
                                ("C1", "C4", "C5")):
                    mk = observations.masks[k]
                    if mk.any():
                        ax.plot(observations.years[mk], observations.values[k][mk], "s",
                                color=c, ms=4)
        if holdout is not None:
            ax.axvspan(holdout[0] - 0.5, holdout[1] + 0.5, color="0.9", zorder=0)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[-3:]:
        ax.set_xlabel("year")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bifurcation(table, summary: dict, path, title: str = ""):
    """Equilibrium cover over mean annual rainfall: stable branches solid, the saddle
    (V_crit) dashed, the rainfall limit and the loss of bare-soil stability as vertical
    lines; the hysteresis loop is the region between them where both states are stable.

    ``table``: rows of ``bifurcation.csv`` (rainfall_mm, V, stable, valid).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    t = table[table["valid"]]
    styles = ((True, "-", "stable"), (False, "--", "unstable (the saddle is V_crit)"))
    for stable, style, label in styles:
        part = t[t["stable"] == stable]
        for kind, grp in part.groupby("branch"):
            ax.plot(grp["rainfall_mm"], 100 * grp["V"], style, color="C0" if stable else "C3",
                    marker="." if len(grp) < 3 else None,
                    label=label if kind == part["branch"].min() else None)
    for key, col, lab in (("P_veg_mm", "C2", "rainfall limit to revegetation"),
                          ("P_bare_unstable_mm", "C1", "bare soil loses stability")):
        v = summary.get(key)
        if v is not None and np.isfinite(v):
            ax.axvline(v, color=col, lw=1, ls=":", label=f"{lab}: {v:.0f} mm")
    ax.set_xlabel("mean annual rainfall (mm/yr)")
    ax.set_ylabel("equilibrium vegetation cover (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fit(cal: SiteCalibration, path: Path, boot=None):
    """Observed vs calibrated per variable (prior dashed, holdout shaded); with a bootstrap
    the 95% band of the simulated series over the used replicates."""
    obs, sim = cal.observations, cal.sim
    years = np.asarray(sim.years)
    vars_ = [v for v in TARGET_VARIABLES if obs.masks[v].any()] or ["veg_cover_%"]
    panels = vars_ + [v for v in ("veg_cover_%", "SOM_%", "runoff_mm", "erosion_t/ha")
                      if v not in vars_]
    panels = panels[:9]
    plt, fig, axes = _figure(len(panels))
    hold = cal.holdout_years
    prior_sim = cal.prior_sim
    band = boot.band() if boot is not None else None
    for ax, var in zip(axes, panels):
        if band is not None:
            k = TARGET_VARIABLES.index(var) if var in TARGET_VARIABLES else None
            if k is not None:
                ax.fill_between(years, band[0][k], band[1][k], color="C0", alpha=0.25,
                                lw=0, label="bootstrap 95%")
        ax.plot(years, np.asarray(simulated(sim, var)), color="C0", lw=2, label="calibrated")
        if prior_sim is not None:
            ax.plot(years, np.asarray(simulated(prior_sim, var)), color="C0", lw=1, ls="--",
                    alpha=0.6, label="prior")
        m = obs.masks[var]
        if m.any():
            ax.plot(obs.years[m], obs.values[var][m], "o", color="k", ms=4, label="observed")
        if hold:
            ax.axvspan(hold[0] - 0.5, hold[1] + 0.5, color="0.9", zorder=0, label="holdout")
        ax.set_ylabel(VARIABLE_LABELS.get(var, var), fontsize=9)
        ax.set_xlabel("year", fontsize=9)
        ax.tick_params(labelbottom=True, labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    what = "" if boot is None else (f"; block bootstrap 95% band, {int(boot.used.sum())} of "
                                    f"{boot.B} refits")
    fig.suptitle(f"{cal.site}: observed vs calibrated (holdout shaded{what})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_correlation(cal: SiteCalibration, path: Path):
    """The correlation matrix; the cells of the flagged pairs (the report's pair table) are
    outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ident = cal.identifiability
    assert ident is not None, "no local identifiability to draw"
    names = ident["names"]
    C = np.asarray(ident["corr"])
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * len(names), 1.2 + 0.45 * len(names)))
    # grey: no correlation (a parameter the data do not identify)
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    im = ax.imshow(np.ma.masked_invalid(C), cmap=cmap, vmin=-1, vmax=1)
    # "(n.i.)" marks the parameters the data do not identify (grey rows and columns).
    ni = [not np.isfinite(C[i]).any() or not np.isfinite(C[i, i]) for i in range(len(names))]
    labels = [n + (" (n.i.)" if f else "") for n, f in zip(names, ni)]
    ax.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels, fontsize=8)
    ax.set_xlabel("parameter", fontsize=8)
    ax.set_ylabel("parameter", fontsize=8)
    # Values in the cells up to 12 parameters (the metrics.json matrix has them all); a
    # larger matrix shows colours only.
    if len(names) <= 12:
        for i in range(len(names)):
            for j in range(len(names)):
                if np.isfinite(C[i, j]):
                    ax.text(j, i, f"{C[i, j]:.2f}", ha="center", va="center", fontsize=6)
    for p in ident["pairs"]:
        if p["flag"]:
            i, j = names.index(p["pair"][0]), names.index(p["pair"][1])
            for a, b in ((i, j), (j, i)):
                ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=1.8,
                                       edgecolor="k"))
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("correlation coefficient r (dimensionless)", fontsize=8)
    ax.set_title(f"local parameter correlation (Gauss-Newton); |r| > {CORR_FLAG:g} outlined",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


