"""Figures (matplotlib, Agg backend): numpy/pandas in, PNG out; no JAX transforms here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_simulation", "plot_bifurcation"]

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
