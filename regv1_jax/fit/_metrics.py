"""Goodness of fit: the metrics of a calibration and the seed's criteria."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import Observations
from ..solve import Simulation
from ._objective import TARGET_VARIABLES, simulated

__all__ = ["SEED_CRITERIA", "fit_metrics", "split_metrics", "seed_criteria"]

# The seed's goodness-of-fit targets.
SEED_CRITERIA: dict[str, Any] = {"R2_min": 0.7, "R2_variables": ("veg_cover_%", "SOM_%"),
                 "holdout_rRMSE_max": 0.20}


def fit_metrics(obs: np.ndarray, sim: np.ndarray) -> dict[str, float]:
    """n, R2 (squared Pearson correlation: blind to bias and scale), R2_1to1 (coefficient
    of determination about the 1:1 line, 1 - sum (s - o)^2 / sum (o - mean o)^2: a
    simulation equal to twice the data scores far below 1), RMSE, relative RMSE
    (RMSE / mean obs), NSE (Nash-Sutcliffe; numerically equal to R2_1to1)."""
    obs, sim = np.asarray(obs, float), np.asarray(sim, float)
    n = obs.size
    if n == 0:
        return {"n": 0, "R2": np.nan, "R2_1to1": np.nan, "RMSE": np.nan, "rRMSE": np.nan,
                "NSE": np.nan}
    err = sim - obs
    rmse = float(np.sqrt(np.mean(err**2)))
    mean = float(np.mean(obs))
    sst = float(np.sum((obs - mean) ** 2))
    nse = 1.0 - float(np.sum(err**2)) / sst if sst > 0 else np.nan
    r2 = float(np.corrcoef(obs, sim)[0, 1] ** 2) if n > 2 and np.std(sim) > 0 and sst > 0 \
        else np.nan
    return {"n": int(n), "R2": r2, "R2_1to1": nse, "RMSE": rmse,
            "rRMSE": rmse / abs(mean) if mean else np.nan, "NSE": nse}


def split_metrics(obs: Observations, sim: Simulation, holdout):
    years = np.asarray(sim.years)
    out = {}
    for var in TARGET_VARIABLES:
        s_all = np.asarray(simulated(sim, var))
        row = {}
        for split in ("training", "holdout"):
            o, s = [], []
            for i, y in enumerate(obs.years):
                if not obs.masks[var][i] or y < years[0] or y > years[-1]:
                    continue
                in_hold = holdout is not None and holdout[0] <= y <= holdout[1]
                if (split == "holdout") != in_hold:
                    continue
                o.append(obs.values[var][i])
                s.append(s_all[int(y - years[0])])
            row[split] = fit_metrics(np.array(o), np.array(s))
        if row["training"]["n"] or row["holdout"]["n"]:
            out[var] = row
    return out


def seed_criteria(metrics: dict) -> dict:
    """The seed's criteria: R2 >= 0.7 on V and SOM, judged on the 1:1-line R2 (the squared
    correlation is shown beside it), and holdout rRMSE <= 20%."""
    out = {}
    for var in SEED_CRITERIA["R2_variables"]:
        m = metrics.get(var, {}).get("training")
        r2 = m["R2_1to1"] if m else float("nan")
        out[f"R2 {var} >= 0.7"] = {
            "value": r2, "pass": bool(np.isfinite(r2) and r2 >= 0.7) if m else None,
            "judged_on": "1:1-line R2 (1 - SSE/SST), not the squared correlation",
            "squared_correlation": m["R2"] if m else None,
            "NSE": m["NSE"] if m else None}
    for var, row in metrics.items():
        h = row["holdout"]
        if h["n"]:
            out[f"holdout rRMSE {var} <= 20%"] = {"value": h["rRMSE"],
                                                 "pass": bool(h["rRMSE"] <= 0.2)}
    if not any(k.startswith("holdout") for k in out):
        out["holdout rRMSE <= 20%"] = {"value": None, "pass": None,
                                      "note": "no observations in the holdout years"}
    return out
