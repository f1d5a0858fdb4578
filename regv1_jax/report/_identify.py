"""The identifiability outputs (``regv1 identify``, ``calibrate --uncertainty``): CSV tables,
identify.json, the correlation heat map and the report section."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..analysis import VIF_FLAG, Identifiability
from ..fit import CORR_FLAG
from ._format import json_safe

__all__ = ["plot_correlations", "write_identify", "identify_fragment"]


def _matrix_rows(ident: Identifiability):
    return [{"source": ident.source, "parameter": n,
             **{m: float(ident.corr[i, j]) for j, m in enumerate(ident.names)}}
            for i, n in enumerate(ident.names)]


def plot_correlations(idents, path, title: str = ""):
    """Heat map of each source's correlation matrix; |r| > 0.9 cells outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    k = max(len(i.names) for i in idents)
    fig, axes = plt.subplots(1, len(idents), squeeze=False,
                             figsize=(len(idents) * (1.8 + 0.45 * k), 1.6 + 0.45 * k))
    for ax, ident in zip(axes[0], idents):
        names, C = list(ident.names), ident.corr
        im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{C[i, j]:.2f}" if np.isfinite(C[i, j]) else "n.i.",
                        ha="center", va="center", fontsize=6)
                if i != j and np.isfinite(C[i, j]) and abs(C[i, j]) > CORR_FLAG:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=1.8,
                                           edgecolor="k"))
        what = ("data rows at the estimate (Gauss-Newton)" if ident.source == "data"
                else f"sample of {ident.n} replicates")
        ax.set_title(f"correlation, {what}", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8).set_label("r (dimensionless)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_identify(idents, folder, settings: dict, title: str = "") -> list[str]:
    """correlation.csv, vif.csv, sloppy.csv (one block per source, column ``source``),
    identify.json and correlation.png into ``folder``; returns the file names."""
    import pandas as pd

    folder = Path(folder)
    pd.DataFrame([r for i in idents for r in _matrix_rows(i)]).to_csv(
        folder / "correlation.csv", index=False, float_format="%.6g")
    pd.DataFrame([{"source": i.source, "parameter": n, "VIF": float(v),
                   "flag_VIF_gt_10": bool(not v <= VIF_FLAG)}
                  for i in idents for n, v in zip(i.names, i.vif)]).to_csv(
        folder / "vif.csv", index=False, float_format="%.6g")
    rows = []
    for i in idents:
        for j in range(len(i.names)):
            v = i.directions[:, j]
            v = v * np.sign(v[np.argmax(np.abs(v))])
            rows.append({"source": i.source, "direction": j + 1,
                         "information": float(i.information[j]),
                         "weak": bool(i.information[j] < 1.0),
                         **{n: float(x) for n, x in zip(i.names, v)}})
    pd.DataFrame(rows).to_csv(folder / "sloppy.csv", index=False, float_format="%.6g")
    doc = {"settings": settings, "flags": {"abs_r_gt": CORR_FLAG, "VIF_gt": VIF_FLAG},
           "results": [i.summary() for i in idents],
           "schema": {
               "correlation.csv": "source (data|sample), parameter, then one column per "
               "parameter: correlation coefficient (NaN: not identified by the data)",
               "vif.csv": "source, parameter, VIF, flag_VIF_gt_10",
               "sloppy.csv": "source, direction (1 = least information), information "
               "(eigenvalue in units of the prior's information), weak (< 1), then the "
               "direction's loading on each parameter (unit vector on the transform scale "
               "in prior-sd units)"}}
    (folder / "identify.json").write_text(json.dumps(json_safe(doc), indent=2))
    plot_correlations(idents, folder / "correlation.png", title)
    return ["correlation.csv", "vif.csv", "sloppy.csv", "identify.json", "correlation.png"]



def identify_fragment(idents) -> str:
    """A markdown section for the calibrate report: per source the flagged pairs, the VIF
    flags and the least-informed direction."""
    lines = ["## Identifiability", "",
             "| source | abs(r) > 0.9 | VIF > 10 | least-informed direction (information) |",
             "|---|---|---|---|"]
    for i in idents:
        pairs = ", ".join(f"{a}-{b} ({r:+.2f})" for (a, b), r in
                          ((p["pair"], p["corr"]) for p in i.pairs() if p["flag"])) or "none"
        top = i.sloppy(1)[0]
        load = ", ".join(f"{n} {v:+.2f}" for n, v in list(top["loadings"].items())[:3])
        lines.append(f"| {i.source} (n = {i.n}) | {pairs} | {', '.join(i.vif_flags()) or 'none'}"
                     f" | {load} ({top['information']:.3g}) |")
    return "\n".join(lines + ["", "Information in units of the prior's: below 1 the data "
                              "constrain that combination less than the prior does.", ""])
