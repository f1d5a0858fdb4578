"""The profile-likelihood outputs (``regv1 profile``, ``calibrate --uncertainty``): the
deviance figure, profile.csv, profile.json and the report section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import CHI2_95, FAILED, POINT_STATUS
from ..status import code
from ._format import json_safe

__all__ = ["plot_profiles", "write_profile", "profile_fragment", "PROFILE_SCHEMA"]


def plot_profiles(profiles, path, title: str = ""):
    """Deviance against the parameter per profile: the 3.84 line (chi2_1, 95%), the
    estimate, the interval's ends (dashed where open) and the failed points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(profiles)
    fig, axes = plt.subplots(1, n, squeeze=False, figsize=(4.2 * n, 3.4))
    for ax, p in zip(axes[0], profiles):
        ok = p.status != FAILED
        ax.plot(p.x[ok], p.deviance[ok], "o-", ms=3, color="C0", label="profile")
        for c, mark, color, label in (
                (code("not_converged"), "s", "C1", "not converged"),
                (code("at_bound"), "^", "C4", "converged, a refitted parameter at its bound")):
            sel = p.status == c
            if sel.any():
                ax.plot(p.x[sel], p.deviance[sel], mark, ms=5, mfc="none", color=color,
                        label=label)
        if (~ok).any():
            top = np.nanmax(p.deviance) if np.isfinite(p.deviance).any() else CHI2_95
            ax.plot(p.x[~ok], np.full(int(np.sum(~ok)), top), "x", color="C3",
                    label="failed")
        ax.axhline(CHI2_95, color="k", lw=0.8, ls=":", label="3.84 (95%, chi2_1)")
        ax.axvline(p.estimate, color="C2", lw=1.0, label=f"estimate {p.estimate:.4g}")
        for end, is_open in ((p.ci[0], p.open_lower), (p.ci[1], p.open_upper)):
            if np.isfinite(end):
                ax.axvline(end, color="C3", lw=0.9, ls="--" if is_open else "-")
        ax.set_xlabel(f"{p.name} [{p.units}]", fontsize=9)
        ax.set_ylabel("deviance 2 (L - L_min) / s (dimensionless)", fontsize=8)
        flat = " (flat)" if p.flat else ""
        ax.set_title(f"{p.name}: 95% [{p.ci[0]:.4g}, {p.ci[1]:.4g}]{flat}", fontsize=9)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROFILE_SCHEMA = {
    "profile.csv": "parameter, value (physical units), loss (0.5 |r|^2 of the refit), "
    "deviance (2 (loss - loss_min) / deviance_scale), status (ok, not_converged, at_bound, "
    "failed), lm_iterations, is_estimate (the grid centre)",
    "profile.json": "settings, and per parameter: estimate, profile_minimum_at, loss_min, "
    "deviance_scale (max(1, chi2/dof)), CI_95_LR [lo, hi] (an open side gives the grid end), "
    "open_lower, open_upper, flat, max_deviance, grid, points, status counts, "
    "failed_points (grid indices), refitted (the parameters refitted at each point)",
}


def write_profile(profiles, folder, settings: dict, title: str = "") -> list[str]:
    """profile.csv, profile.json and profile.png into ``folder``; returns the file names."""
    folder = Path(folder)
    rows = []
    for p in profiles:
        m = p.x.size // 2
        for i in range(p.x.size):
            rows.append({"parameter": p.name, "value": float(p.x[i]),
                         "loss": float(p.loss[i]), "deviance": float(p.deviance[i]),
                         "status": POINT_STATUS[int(p.status[i])],
                         "lm_iterations": int(p.n_iter[i]), "is_estimate": i == m})
    pd.DataFrame(rows).to_csv(folder / "profile.csv", index=False, float_format="%.10g")
    doc = {"settings": settings, "chi2_1_95": CHI2_95, "schema": PROFILE_SCHEMA,
           "profiles": [p.summary() for p in profiles]}
    (folder / "profile.json").write_text(json.dumps(json_safe(doc), indent=2))
    plot_profiles(profiles, folder / "profile.png", title)
    return ["profile.csv", "profile.json", "profile.png"]


def profile_fragment(profiles) -> str:
    """A markdown section for the calibrate report (``_report.report_html`` renders it):
    one row per profile with its LR interval and flags."""
    lines = ["## Profile likelihood", "",
             "| parameter | estimate | 95% LR interval | open | flat | failed points |",
             "|---|---|---|---|---|---|"]
    for p in profiles:
        side = ", ".join(s for s, o in (("lower", p.open_lower), ("upper", p.open_upper))
                         if o) or "no"
        lines.append(f"| {p.name} | {p.estimate:.4g} | [{p.ci[0]:.4g}, {p.ci[1]:.4g}] | "
                     f"{side} | {'yes' if p.flat else 'no'} | {len(p.failed)} |")
    return "\n".join(lines + ["", "Deviance 2 (L - L_min) / max(1, chi2/dof) against "
                              "3.84 (chi2_1, 95%); an open side ends at the grid edge.", ""])
