"""A whole site calibration: data split, stages, goodness of fit, local identifiability,
and the seed's regional magnitudes.  Returns plain numbers (numpy / dicts) for the report.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ._calibrate import (
    CalibrationConfig,
    CalibrationError,
    Stage,
    StageResult,
    calibrate_stages,
    residual_fn,
)
from ._data import Observations
from ._forcing import Forcing
from ._objective import TARGET_VARIABLES, Targets, make_targets, simulated
from ._params import Params, ParamSpace
from ._solve import Simulation, simulate

__all__ = ["fit_metrics", "local_identifiability", "regional_magnitudes", "SiteCalibration",
           "calibrate_site", "SEED_CRITERIA", "REGION_AREAS_KM2", "CORR_FLAG",
           "correlated_pairs"]

# The seed's goodness-of-fit targets.
SEED_CRITERIA = {"R2_min": 0.7, "R2_variables": ("veg_cover_%", "SOM_%"),
                 "holdout_rRMSE_max": 0.20}

# |r| above this marks a pair of parameters that the data cannot tell apart (report table and
# the outlined cells of the correlation figure).
CORR_FLAG = 0.9
# Pairs the seed names as likely trade-offs; always listed in the report.
SEED_PAIRS = (("lambda1", "eta1"), ("a1", "a2"), ("c_E", "omega_E"), ("r_V", "K_V"))

# Areas used to turn depths into regional volumes (stated assumptions, docs/methods.md).
REGION_AREAS_KM2 = {
    # Loess Plateau extent commonly given as ~640,000 km2.
    "LoessPlateau": {"regional": 640_000.0,
                     # GTGP area implied by 0.712 Tg C/yr at ~0.35 t C/ha/yr (assumption)
                     "gtgp": 20_000.0},
    "ChihuahuanDesert": {"regional": 450_000.0, "gtgp": None},
}


def fit_metrics(obs: np.ndarray, sim: np.ndarray) -> dict[str, float]:
    """R2 (squared Pearson correlation), RMSE, relative RMSE (RMSE / mean obs), NSE, n."""
    obs, sim = np.asarray(obs, float), np.asarray(sim, float)
    n = obs.size
    if n == 0:
        return {"n": 0, "R2": np.nan, "RMSE": np.nan, "rRMSE": np.nan, "NSE": np.nan}
    err = sim - obs
    rmse = float(np.sqrt(np.mean(err**2)))
    mean = float(np.mean(obs))
    sst = float(np.sum((obs - mean) ** 2))
    nse = 1.0 - float(np.sum(err**2)) / sst if sst > 0 else np.nan
    r2 = float(np.corrcoef(obs, sim)[0, 1] ** 2) if n > 2 and np.std(sim) > 0 and sst > 0 \
        else np.nan
    return {"n": int(n), "R2": r2, "RMSE": rmse, "rRMSE": rmse / abs(mean) if mean else np.nan,
            "NSE": nse}


def local_identifiability(space: ParamSpace, params: Params, forcing: Forcing,
                          targets: Targets, names, cfg: CalibrationConfig) -> dict:
    """Gauss-Newton / Fisher information at the optimum over ``names`` (jacfwd through the
    solve), with every fitted variable, the event constraints and the prior.

    Returns the correlation matrix of the estimates, standard deviations and CI_95 (on the
    unconstrained scale, mapped back, so that they stay inside the bounds), the variance
    inflation factors of the sensitivity columns, and the condition number.
    """
    stage = Stage("fisher", tuple(names), TARGET_VARIABLES, events=True)
    fn, free = residual_fn(space, stage, params, forcing, targets, cfg)
    v = free.pack(params)
    J = np.asarray(jax.jacfwd(fn)(v))
    F = J.T @ J
    cov = np.linalg.pinv(F)
    sd_u = np.sqrt(np.clip(np.diag(cov), 0, None))
    corr = cov / np.outer(sd_u, sd_u)
    # VIF: diagonal of the inverse correlation of the Jacobian's columns (data part only).
    Jc = J - J.mean(axis=0)
    norms = np.linalg.norm(Jc, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        R = (Jc.T @ Jc) / np.outer(norms, norms)
    vif = np.diag(np.linalg.pinv(R)) if np.all(norms > 0) else np.full(len(names), np.inf)
    lo = free.unpack(jnp.asarray(v - 1.96 * sd_u), params)
    hi = free.unpack(jnp.asarray(v + 1.96 * sd_u), params)
    ci = {n: (float(getattr(lo, n)), float(getattr(hi, n))) for n in names}
    eig = np.linalg.eigvalsh(F)
    pairs = correlated_pairs(list(names), corr)
    return {"names": list(names), "corr": corr.tolist(), "sd_unconstrained": sd_u.tolist(),
            "CI_95": ci, "VIF": vif.tolist(),
            "condition_number": float(eig[-1] / max(eig[0], 1e-300)), "pairs": pairs}


def correlated_pairs(names, corr, threshold: float | None = None) -> list[dict]:
    """Parameter pairs of the correlation matrix to report: every pair with |r| above
    ``threshold`` (default ``CORR_FLAG``), strongest first, then the seed's named pairs
    (``SEED_PAIRS``) that are below it.  ``flag`` is ``|r| > threshold``; the report's table
    and the outlined cells of its correlation figure both come from this list."""
    threshold = CORR_FLAG if threshold is None else threshold
    C = np.asarray(corr, float)
    out, seen = [], set()
    n = len(names)
    strong = [(abs(C[i, j]), i, j) for i in range(n) for j in range(i + 1, n)
              if np.isfinite(C[i, j]) and abs(C[i, j]) > threshold]
    for _, i, j in sorted(strong, reverse=True):
        out.append({"pair": [names[i], names[j]], "corr": float(C[i, j]), "flag": True})
        seen.add((i, j))
    for a, b in SEED_PAIRS:
        if a in names and b in names:
            i, j = sorted((names.index(a), names.index(b)))
            if (i, j) not in seen:
                r = float(C[i, j])
                out.append({"pair": [names[i], names[j]], "corr": r,
                            "flag": bool(np.isfinite(r) and abs(r) > threshold)})
    return out


def _annual_soc_change(sim: Simulation, params: Params) -> np.ndarray:
    """Change of the 0-40 cm SOC stock between mid-years, kg C m^-2 yr^-1."""
    from ._model import LAYER_DEPTHS_M, SOM_PER_C

    d = np.asarray(LAYER_DEPTHS_M)
    C = np.asarray(sim.SOM_layers) * float(params.rho_b) * d / SOM_PER_C
    return np.diff(C.sum(axis=1))


def regional_magnitudes(params: Params, forcing: Forcing, region: str,
                        planting_start: int | None, method: str = "tsit5") -> dict:
    """The seed's regional targets computed from the calibrated model.

    Definitions (docs/methods.md): runoff decrease = mean annual runoff before planting
    minus after (first year of planting + 3 onwards), times the regional area; vegetation-
    induced water-yield decrease = mean over the planting years of WY(no planting) -
    WY(planting); SOC sequestration = mean 0-40 cm SOC gain over the planting years times
    the GTGP area; SOC timing = years after planting start to reach half of the 100-year
    SOC gain; hydrological stabilisation = 3 e-folding times of the soil-water bucket.
    """
    areas = REGION_AREAS_KM2.get(region, {"regional": None, "gtgp": None})
    out: dict = {"areas_km2": areas}
    sim = simulate(params, forcing, method=method)
    years = np.asarray(sim.years)
    if planting_start is None or not (years[0] < planting_start <= years[-1]):
        out["note"] = "no planting start inside the simulated years: scenario targets skipped"
        return out
    from ._forcing import make_forcing

    off = simulate(params, make_forcing(forcing.start, forcing.end, forcing.rainfall,
                                        forcing.intensity, 0.0, forcing.psi_eng), method=method)
    before = years < planting_start
    after = years >= planting_start + 3
    dq_mm = float(np.mean(np.asarray(sim.runoff)[before]) - np.mean(np.asarray(sim.runoff)[after]))
    A = areas["regional"]
    out["runoff_decrease"] = {
        "mm_per_yr": dq_mm,
        "m3_per_yr": dq_mm * 1e-3 * A * 1e6 if A else None,
        "target_m3_per_yr": 3.9e8,
    }
    planting = years >= planting_start
    dwy = np.asarray(off.water_yield)[planting] - np.asarray(sim.water_yield)[planting]
    out["water_yield_decrease"] = {"mm_per_yr": float(np.mean(dwy)),
                                   "target_mm_per_yr": [1.0, 1.6]}
    dsoc = _annual_soc_change(sim, params)[planting[1:]]
    rate = float(np.mean(dsoc)) if dsoc.size else float("nan")
    G = areas.get("gtgp")
    out["soc_sequestration"] = {
        "kgC_per_m2_per_yr": rate,
        "tC_per_ha_per_yr": rate * 10.0,
        "TgC_per_yr": rate * G * 1e6 / 1e9 if G else None,
        "target_TgC_per_yr": 0.712,
    }
    # SOC timing: 100 years from the planting start with mean rainfall.
    f_long = make_forcing(planting_start, planting_start + 99,
                          float(np.mean(np.asarray(forcing.rainfall))),
                          float(np.mean(np.asarray(forcing.intensity))), 1.0,
                          float(np.mean(np.asarray(forcing.psi_eng))))
    i0 = int(np.searchsorted(years, planting_start))
    p_long = params.replace(V0=float(sim.V[i0]), SOM0=float(sim.SOM[i0]))
    long = simulate(p_long, f_long, method=method)
    soc = np.cumsum(np.concatenate([[0.0], _annual_soc_change(long, p_long)]))
    gain = soc[-1] - soc[0]
    t_half = float(np.argmax(soc - soc[0] >= 0.5 * gain)) if gain > 0 else float("nan")
    out["soc_timing"] = {"years_to_half_gain": t_half, "target_fast_phase_years": [10, 23],
                         "gain_first_20yr_share": float((soc[20] - soc[0]) / gain)
                         if gain > 0 else float("nan")}
    out["hydrology_stabilisation"] = _bucket_timescale(params, sim, forcing)
    return out


def _bucket_timescale(params: Params, sim: Simulation, forcing: Forcing) -> dict:
    """3 e-folding times of the soil-water bucket, linearised at the final year's state."""
    from ._model import Layout, drivers, rates

    layout = Layout()
    # A state with the final year's V, theta and SOM; derivative of dtheta/dt in theta.
    y = np.zeros(layout.size)
    y[0] = float(sim.V[-1])
    y[4] = float(sim.theta[-1])
    som = float(sim.SOM[-1])
    y[layout.y] = som
    d = drivers(params, float(forcing.rainfall[-1]), float(forcing.intensity[-1]),
                float(forcing.psi_plant[-1]), float(forcing.psi_eng[-1]))

    def dth(th):
        return rates(jnp.asarray(y).at[4].set(th), params, d, layout)[4]

    k = -float(jax.grad(dth)(jnp.asarray(y[4])))
    tau = 1.0 / k if k > 0 else float("inf")
    return {"efold_years": tau, "three_efold_years": 3 * tau, "target_years": 3.0}


@dataclasses.dataclass
class SiteCalibration:
    """Everything a calibration produced (numbers only; the report renders it)."""

    site: str
    region: str
    params: Params
    prior: Params
    space: ParamSpace
    stages: list[StageResult]
    forcing: Forcing
    observations: Observations
    sim: Simulation
    train_years: tuple[int, int]
    holdout_years: tuple[int, int] | None
    metrics: dict
    criteria: dict
    identifiability: dict | None
    magnitudes: dict
    config: CalibrationConfig
    dtype: str
    prior_sim: Simulation | None = None


def _split_metrics(obs: Observations, sim: Simulation, holdout):
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


def _criteria(metrics: dict) -> dict:
    out = {}
    for var in SEED_CRITERIA["R2_variables"]:
        m = metrics.get(var, {}).get("training")
        r2 = m["R2"] if m else float("nan")
        out[f"R2 {var} >= 0.7"] = {"value": r2, "pass": bool(np.isfinite(r2) and r2 >= 0.7)
                                   if m else None}
    for var, row in metrics.items():
        h = row["holdout"]
        if h["n"]:
            out[f"holdout rRMSE {var} <= 20%"] = {"value": h["rRMSE"],
                                                 "pass": bool(h["rRMSE"] <= 0.2)}
    if not any(k.startswith("holdout") for k in out):
        out["holdout rRMSE <= 20%"] = {"value": None, "pass": None,
                                      "note": "no observations in the holdout years"}
    return out


def calibrate_site(space: ParamSpace, params: Params, forcing: Forcing, obs: Observations,
                   cfg: CalibrationConfig = CalibrationConfig(), planting_start=None,
                   progress=None, identifiability: bool = True) -> SiteCalibration:
    """Calibrate to a site's observations: stages on the training years, then metrics on
    training and holdout, the local correlation matrix and the regional magnitudes."""
    if obs.years.size == 0:
        raise CalibrationError(f"{obs.source_file}: no observations for {obs.location!r}")
    targets = make_targets(obs, forcing, dtype=params.dtype)
    years = forcing.years
    hold = cfg.holdout
    keep = np.ones(len(years), bool)
    if hold is not None:
        keep &= ~((years >= hold[0]) & (years <= hold[1]))
    train = targets.with_mask(jnp.asarray(keep))
    if sum(train.count().values()) == 0:
        raise CalibrationError(
            f"{obs.source_file}: {obs.location!r} has no observations in the training years "
            f"{years[0]}-{years[-1]} outside the holdout {hold}")
    fitted, stages = calibrate_stages(space, params, forcing, train, cfg, progress=progress)
    sim = simulate(fitted, forcing, method=cfg.method if cfg.method != "rk4" else "tsit5")
    metrics = _split_metrics(obs, sim, hold)
    free_names = []
    for st, res in zip(cfg.stages, stages):
        if res.skipped is None:
            free_names += [n for n in st.free if n not in free_names]
    ident = None
    if identifiability and free_names:
        if progress:
            progress(f"local identifiability over {len(free_names)} parameters (jacfwd)")
        ident = local_identifiability(space, fitted, forcing, train, free_names, cfg)
    magnitudes = regional_magnitudes(fitted, forcing, space.region, planting_start)
    t_years = years[keep]
    return SiteCalibration(
        site=obs.location, region=space.region, params=fitted, prior=params, space=space,
        stages=stages, forcing=forcing, observations=obs, sim=sim,
        train_years=(int(t_years[0]), int(t_years[-1])),
        holdout_years=hold if hold is not None and np.any(~keep) else None,
        metrics=metrics, criteria=_criteria(metrics), identifiability=ident,
        magnitudes=magnitudes, config=cfg, dtype=str(params.dtype),
        prior_sim=simulate(params, forcing),
    )
