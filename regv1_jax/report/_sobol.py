"""Files of a Sobol' study: tables, the summary JSON and the bar figure (numpy in, files
out; no JAX transforms here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

__all__ = ["sobol_tables", "sobol_summary", "plot_sobol", "write_sobol"]


def _f(x):
    x = float(x)
    return x if math.isfinite(x) else None


def sobol_tables(study):
    """``sobol.csv``, ``sobol_s2.csv`` (or None) and ``dgsm.csv`` (or None) as DataFrames."""
    import pandas as pd

    i = study.indices
    main = pd.DataFrame({"parameter": study.names, "S1": i.S1, "S1_lo": i.S1_lo,
                         "S1_hi": i.S1_hi, "ST": i.ST, "ST_lo": i.ST_lo, "ST_hi": i.ST_hi})
    s2 = None
    if i.S2 is not None:
        j, k = np.triu_indices(len(study.names), 1)
        s2 = pd.DataFrame({"parameter_1": np.asarray(study.names)[j],
                           "parameter_2": np.asarray(study.names)[k], "S2": i.S2[j, k],
                           "S2_lo": i.S2_lo[j, k], "S2_hi": i.S2_hi[j, k]})
    dg = None
    if study.dgsm is not None:
        dg = pd.DataFrame({"parameter": study.names, "nu": study.dgsm.nu,
                           "ST_bound": study.dgsm.bound, "ST": i.ST,
                           "bound_holds": i.ST <= study.dgsm.bound})
    return main, s2, dg


def sobol_summary(study, qoi, settings: dict, sampling: dict) -> dict:
    ev = study.evaluation
    counts = {int(s): int(c) for s, c in zip(*np.unique(ev.status, return_counts=True))}
    out = {
        "qoi": {"name": qoi.name, "units": qoi.units, "description": qoi.description,
                "mean": _f(study.mean), "variance": _f(study.variance)},
        "settings": settings,
        "N": study.N, "d": len(study.names), "parameters": list(study.names),
        "second_order": study.second_order, "model_runs": study.n_rows,
        "sampling": sampling,
        "failed_samples": study.failed_rows, "failed_blocks": study.failed_blocks,
        "blocks_used": study.indices.n_blocks, "status_counts": counts,
        "failure_rule": "a Saltelli block (one base point: its A, B, AB_j and BA_j rows) "
                        "with any failed row (solver status != 0 or a non-finite QoI) is "
                        "dropped whole; the indices use the complete blocks only",
        "confidence": {"level": study.indices.conf_level,
                       "resamples": study.indices.num_resamples,
                       "method": "bootstrap over Saltelli blocks, percentile interval"},
        "estimators": {"S1": "Saltelli et al. 2010", "ST": "Jansen 1999",
                       "S2": "Saltelli 2002", "normalisation":
                       "Y centred and scaled by its mean and SD over all rows (as SALib)"},
        "seconds": {"evaluate": round(ev.seconds, 3),
                    "indices": round(study.seconds_indices, 3),
                    "dgsm": round(study.seconds_dgsm, 3)},
        "chunks_resumed": ev.chunks_resumed,
    }
    if study.dgsm is not None:
        out["dgsm"] = {"rows": study.dgsm.n, "failed_rows": study.dgsm.n_failed,
                       "bound": "ST_i <= (b_i - a_i)^2 nu_i / (pi^2 Var f), x_i on its "
                                "sampling scale (log for log-scale parameters)",
                       "bound_holds_all": bool(np.all(study.indices.ST <= study.dgsm.bound))}
    return out


def plot_sobol(study, path, title: str = ""):
    """Bars of S1 and ST with their intervals, one pair per parameter, ST-ordered."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    i = study.indices
    order = np.argsort(-np.nan_to_num(i.ST, nan=-1))
    names = np.asarray(study.names)[order]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * len(names) + 2), 3.6))
    for off, key, color in ((-0.2, "S1", "C0"), (0.2, "ST", "C3")):
        v = getattr(i, key)[order]
        lo, hi = getattr(i, key + "_lo")[order], getattr(i, key + "_hi")[order]
        ax.bar(x + off, v, 0.4, color=color, label=key,
               yerr=np.vstack([np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)]),
               capsize=2, error_kw={"lw": 0.8})
    if study.dgsm is not None:
        ax.plot(x + 0.2, study.dgsm.bound[order], "k_", ms=10, label="DGSM bound on ST")
    ax.axhline(0, color="0.5", lw=0.6)
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("Sobol' index")
    ax.set_ylim(min(-0.05, float(np.nanmin(i.S1_lo)) - 0.02),
                max(1.0, float(np.nanmax(i.ST_hi)) + 0.05))
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_sobol(study, qoi, settings: dict, sampling: dict, folder: Path,
                title: str = "") -> list[str]:
    """Write sobol.csv, [sobol_s2.csv], [dgsm.csv], sobol.json, sobol.png into ``folder``."""
    main, s2, dg = sobol_tables(study)
    files = ["sobol.csv"]
    main.to_csv(folder / "sobol.csv", index=False, float_format="%.6g")
    if s2 is not None:
        s2.to_csv(folder / "sobol_s2.csv", index=False, float_format="%.6g")
        files.append("sobol_s2.csv")
    if dg is not None:
        dg.to_csv(folder / "dgsm.csv", index=False, float_format="%.6g")
        files.append("dgsm.csv")
    (folder / "sobol.json").write_text(json.dumps(sobol_summary(study, qoi, settings,
                                                                sampling), indent=2))
    plot_sobol(study, folder / "sobol.png", title)
    return files + ["sobol.json", "sobol.png"]
