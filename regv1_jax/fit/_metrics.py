"""Goodness of fit: the metrics of a calibration and the seed's criteria."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..io import Observations
from ..solve import Simulation
from ._objective import TARGET_VARIABLES, simulated

__all__ = ["SEED_CRITERIA", "fit_metrics", "split_metrics", "seed_criteria", "fit_failures"]

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


# A year's cover is "bare" below this share of the largest observed cover (and below
# BARE_MAX percent): the two basins of the model, told apart in the data and the simulation.
BARE_SHARE = 0.15
BARE_MAX = 1.0


def fit_failures(obs: Observations, sim: Simulation, metrics: dict, train_years) -> list[str]:
    """Plain sentences for what a calibration failed to do (empty when it did not fail):

    - the training cover R2 about the 1:1 line is below 0 (worse than the observed mean);
    - the simulated cover stays in one basin (bare, or vegetated) in every observed
      training year while the observed cover is in the other one in some of them: the
      state never leaves a basin the data leave (bare: below ``BARE_SHARE`` of the largest
      observed cover and below ``BARE_MAX`` %)."""
    out = []
    m = metrics.get("veg_cover_%", {}).get("training")
    if m and m["n"] and np.isfinite(m["R2_1to1"]) and m["R2_1to1"] < 0:
        out.append(f"The calibration did not reproduce the cover record: the training R2 "
                   f"about the 1:1 line is {m['R2_1to1']:.2f}, worse than the observed "
                   "mean.")
    years = np.asarray(sim.years)
    keep = obs.masks["veg_cover_%"] & np.isin(obs.years, np.asarray(train_years))
    if keep.sum() >= 2:
        o = obs.values["veg_cover_%"][keep]
        s = 100.0 * np.asarray(sim.V)[np.searchsorted(years, obs.years[keep])]
        level = min(BARE_SHARE * float(np.max(o)), BARE_MAX)
        o_bare, s_bare = o < level, s < level
        if s_bare.all() and not o_bare.all():
            out.append(f"The simulated cover stays bare (below {level:.2g} %) in every "
                       f"observed training year while the observed cover is above it in "
                       f"{int((~o_bare).sum())} of {o.size}: the model never reaches the "
                       "vegetated state the data show.")
        elif not s_bare.any() and o_bare.any():
            out.append(f"The observed cover falls below {level:.2g} % in "
                       f"{int(o_bare.sum())} of {o.size} training years but the simulated "
                       "cover never does: the model does not reproduce the collapse the "
                       "data show.")
    return out
