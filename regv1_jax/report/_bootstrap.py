"""The block bootstrap's outputs: bootstrap.json, the CSV tables, the band figure and the
report section (``regv1 bootstrap``, ``regv1 calibrate --uncertainty``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..analysis import DERIVED, REPLICATE_STATUS
from ..fit import TARGET_VARIABLES, SiteCalibration
from ._figures import plot_fit
from ._format import fmt, json_safe, md_table

__all__ = ["bootstrap_settings", "bootstrap_summary", "bootstrap_tables", "write_bootstrap",
           "bootstrap_markdown", "bootstrap_entry"]


def bootstrap_entry(entry: dict, boot, name: str) -> None:
    iv = boot.intervals[name]
    bca, pct = iv["BCa"], iv["percentile"]
    use_bca = all(math.isfinite(x) for x in bca)
    local = entry["CI_95"]
    entry.update(
        CI_95=list(bca if use_bca else pct), CI_95_local=local,
        CI_kind_local=entry.pop("CI_kind", None),
        CI_method=(f"block bootstrap ({boot.scheme} blocks of {boot.block_length} years, "
                   f"{iv['n_used']} of {boot.B} replicates used), "
                   + ("BCa" if use_bca else "percentile (BCa undefined)")),
        CI_95_bootstrap_BCa=bca, CI_95_bootstrap_percentile=pct,
        note="CI_95: block bootstrap (staged refits on resampled years); CI_95_local: the "
        "local Gauss-Newton interval at the optimum")


def _units(cal: SiteCalibration, name: str) -> str:

    return DERIVED[name][0] if name in DERIVED else cal.space.spec(name).units


def bootstrap_settings(boot) -> dict:
    """How the bootstrap ran (params.json ``_meta.bootstrap`` and bootstrap.json)."""

    return {
        "B": boot.B, "scheme": boot.scheme, "block_length_years": boot.block_length,
        "block_length_rule": boot.block_rule, "seed": boot.seed, "level": 0.95,
        "training_years_resampled": [int(y) for y in boot.train_years],
        "replicates_used": int(boot.used.sum()),
        "replicates_excluded": int(boot.B - boot.used.sum()),
        "status_counts": {str(k): v for k, v in boot.status_counts.items()},
        "status_meaning": {str(k): v for k, v in REPLICATE_STATUS.items()},
        "not_converged_excluded": boot.exclude_not_converged,
        "jackknife_refits": int(boot.jackknife.shape[0]),
        "jackknife_used": int(np.sum(boot.jackknife_status == 0)),
        "point_refit_stage_codes": boot.point_refit_codes,
        "refit": "fit_staged: every stage of the config, one start (the point estimate), "
                 "per-cell weights = the year's count in the resample",
        "intervals": "percentile: 2.5/97.5% quantiles of the used replicates; BCa: Efron "
                     "(1987), z0 from the replicates, acceleration from the delete-one-block "
                     "jackknife",
        "seconds": round(boot.seconds, 3), "chunks_resumed": boot.chunks_resumed,
    }


def bootstrap_summary(cal: SiteCalibration, boot) -> dict:
    """bootstrap.json: settings and, per quantity, the point value and the intervals."""

    local = (cal.identifiability or {}).get("CI_95", {})
    out = {"site": cal.site, "region": cal.region, **bootstrap_settings(boot),
           "intervals": {}}
    for n in boot.names + boot.derived:
        iv = boot.intervals[n]
        out["intervals"][n] = {
            "kind": "derived" if n in DERIVED else "parameter", "units": _units(cal, n),
            "point": boot.point[n], "percentile": iv["percentile"], "BCa": iv["BCa"],
            "z0": iv["z0"], "acceleration": iv["acceleration"], "sd": iv["sd"],
            "n_used": iv["n_used"], "point_inside_percentile": iv["point_inside_percentile"],
            "CI_95_local": list(local[n]) if n in local else None,
            "description": DERIVED[n][1] if n in DERIVED else None}
    return json_safe(out)


def bootstrap_tables(cal: SiteCalibration, boot):
    """bootstrap_params.csv, bootstrap_replicates.csv and bootstrap_bands.csv frames."""
    qs = boot.names + boot.derived
    iv = boot.intervals
    params = pd.DataFrame({
        "quantity": qs, "units": [_units(cal, n) for n in qs],
        "point": [boot.point[n] for n in qs],
        "percentile_lo": [iv[n]["percentile"][0] for n in qs],
        "percentile_hi": [iv[n]["percentile"][1] for n in qs],
        "BCa_lo": [iv[n]["BCa"][0] for n in qs], "BCa_hi": [iv[n]["BCa"][1] for n in qs],
        "sd": [iv[n]["sd"] for n in qs], "z0": [iv[n]["z0"] for n in qs],
        "acceleration": [iv[n]["acceleration"] for n in qs],
        "n_used": [iv[n]["n_used"] for n in qs]})
    reps = pd.DataFrame(boot.replicates, columns=qs)
    for j, st in enumerate(cal.config.stages):
        reps[f"stage_code:{st.name}"] = boot.stage_codes[:, j]
    reps.insert(0, "status", boot.status)
    reps.insert(0, "replicate", np.arange(boot.B))
    lo, hi = boot.band()
    bands = pd.DataFrame([
        {"year": int(y), "variable": v, "simulated_point": boot.point_series[k, i],
         "lo_2.5": lo[k, i], "hi_97.5": hi[k, i]}
        for k, v in enumerate(TARGET_VARIABLES) for i, y in enumerate(boot.years)])
    return params, reps, bands


def write_bootstrap(cal: SiteCalibration, boot, folder: Path) -> list[str]:
    """bootstrap.json, bootstrap_params.csv, bootstrap_replicates.csv, bootstrap_bands.csv
    and bootstrap_bands.png into ``folder``; returns the file names."""
    folder = Path(folder)
    params, reps, bands = bootstrap_tables(cal, boot)
    params.to_csv(folder / "bootstrap_params.csv", index=False, float_format="%.6g")
    reps.to_csv(folder / "bootstrap_replicates.csv", index=False, float_format="%.8g")
    bands.to_csv(folder / "bootstrap_bands.csv", index=False, float_format="%.6g")
    (folder / "bootstrap.json").write_text(json.dumps(bootstrap_summary(cal, boot), indent=2))
    plot_fit(cal, folder / "bootstrap_bands.png", boot)
    return ["bootstrap.json", "bootstrap_params.csv", "bootstrap_replicates.csv",
            "bootstrap_bands.csv", "bootstrap_bands.png"]


def bootstrap_markdown(cal: SiteCalibration, boot, png: str) -> list[str]:
    """The report's "Bootstrap uncertainty" section."""
    st = bootstrap_settings(boot)
    local = (cal.identifiability or {}).get("CI_95", {})
    rows = []
    for n in boot.names + boot.derived:
        iv = boot.intervals[n]
        loc = local.get(n)
        rows.append([n, _units(cal, n), boot.point[n],
                     f"[{fmt(iv['BCa'][0])}, {fmt(iv['BCa'][1])}]",
                     f"[{fmt(iv['percentile'][0])}, {fmt(iv['percentile'][1])}]",
                     f"[{fmt(loc[0])}, {fmt(loc[1])}]" if loc else "–", iv["sd"]])
    counts = ", ".join(f"{v} × status {k}" for k, v in st["status_counts"].items())
    outside = [n for n in boot.names + boot.derived
               if not boot.intervals[n]["point_inside_percentile"]]
    warn = ([f"**Warning:** the point estimate lies outside the percentile interval of "
             f"{', '.join(outside)}: the replicates sit on one side of it (e.g. refits that "
             "can move only one way from a physical bound); treat these intervals with "
             "care.", ""] if outside else [])
    return [
        "## Bootstrap uncertainty", "",
        f"Block bootstrap over the {len(st['training_years_resampled'])} training years with "
        f"data: B = {boot.B} replicates, {boot.scheme} blocks of {boot.block_length} years "
        f"({boot.block_rule.get('rule', '')}), seed {boot.seed}. Each replicate is a full "
        "staged refit (every stage of the config, warm-started from the point estimate) "
        "with each year's cells weighted by its count in the resample; all refits batched "
        f"(vmap). Replicates used: {st['replicates_used']} of {boot.B} ({counts}; status "
        "0 is used, every other status is excluded from the intervals, never averaged in: "
        + "; ".join(f"{k} {v}" for k, v in st["status_meaning"].items()) + "). BCa "
        f"acceleration from {st['jackknife_refits']} delete-one-block jackknife refits "
        f"({st['jackknife_used']} used).", "",
        md_table(["quantity", "units", "point", "BCa 95%", "percentile 95%", "local CI_95",
                "bootstrap sd"], rows), "", *warn,
        "params.json `CI_95` is the bootstrap BCa interval (`CI_95_local` the local one). "
        "Derived quantities use the fit's solver on the replicate's parameters; multiply "
        "runoff decrease by the regional area and SOC sequestration by the GTGP area for "
        "regional totals.", "",
        f"![bootstrap bands]({png})", ""]


