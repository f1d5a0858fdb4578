"""A whole site calibration: data split, stages, goodness of fit, local identifiability,
and the seed's regional magnitudes.  Returns plain numbers (numpy / dicts) for the report.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..io._observations import Observations
from ..model._forcing import Forcing
from ..model._params import Params, ParamSpace
from ..solve._simulate import Simulation, simulate
from ._config import (
    SOM_VARS,
    CalibrationConfig,
    CalibrationError,
    Stage,
    StageResult,
    calibrate_stages,
)
from ._objective import (
    TARGET_VARIABLES,
    Targets,
    data_residuals,
    event_residuals,
    make_targets,
    simulated,
)

__all__ = ["fit_metrics", "local_identifiability", "regional_magnitudes", "SiteCalibration",
           "calibrate_site", "SEED_CRITERIA", "REGION_AREAS_KM2", "CORR_FLAG",
           "correlated_pairs", "information_eigen", "column_vif", "training_targets",
           "training_years", "fitted_names"]

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


# A parameter within this share of its physical range (on the transform's scale) of a bound
# is "at bound": its interval is one-sided and no convergence is claimed from its gradient.
AT_BOUND_MARGIN = 1e-3
# Data-only directions whose information (eigenvalue of the Fisher matrix of the data rows,
# in units of the prior's information) is below ABS_INFO or below REL_INFO times the
# largest are "not identified by the data".
ABS_INFO = 1e-6
REL_INFO = 1e-10
# Posterior sd / prior sd above this: "prior-dominated".
PRIOR_DOMINATED = 0.8
Z95, Z95_ONE_SIDED = 1.959964, 1.644854


def _on_transform_scale(spec, x):
    return np.log(x) if spec.transform_scale == "log" else np.asarray(x, float)


def _from_transform_scale(spec, s):
    return float(np.exp(s)) if spec.transform_scale == "log" else float(s)


def physical_residual_fn(space: ParamSpace, names, base: Params, forcing: Forcing,
                         targets: Targets, cfg: CalibrationConfig, events: bool = True):
    """``s -> (data rows, prior rows)``: residuals as functions of the free parameters on
    their transform scale (log or linear, no logistic squashing), so that the Jacobian is
    finite and informative at a physical bound.  Data rows: every fitted variable and the
    event constraints (weighted as in the fit); prior rows: the standardised prior of each
    free parameter, unweighted."""
    specs = [space.spec(n) for n in names]
    adjoint = "checkpoint" if cfg.method == "rk4" else "forward"

    def fn(svec):
        vals = {sp.name: (jnp.exp(svec[i]) if sp.transform_scale == "log" else svec[i])
                for i, sp in enumerate(specs)}
        p = dataclasses.replace(jax.lax.stop_gradient(base), **vals)
        sim = simulate(p, forcing, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                       steps_per_year=cfg.steps_per_year, adjoint=adjoint)
        r_data = data_residuals(sim, targets, TARGET_VARIABLES)
        r_ev = event_residuals(p, cfg.events) * (1.0 if events else 0.0)
        r_prior = jnp.stack([sp.standardised(vals[sp.name]) for sp in specs])
        return jnp.concatenate([r_data, r_ev]), r_prior

    s0 = np.array([_on_transform_scale(sp, float(getattr(base, sp.name))) for sp in specs])
    return fn, s0


def local_identifiability(space: ParamSpace, params: Params, forcing: Forcing,
                          targets: Targets, names, cfg: CalibrationConfig,
                          events: bool = True) -> dict:
    """Local (Gauss-Newton) uncertainty and identifiability at the optimum over ``names``.

    The Jacobian is taken on each parameter's transform scale (log or linear), not on the
    logistic coordinate, so that a parameter at a bound keeps its sensitivity.  From the
    **data rows only** (every observed cell and the event constraints): the Fisher matrix,
    its eigen-directions (those with negligible information are "not identified by the
    data"), the correlation matrix (NaN for unidentified parameters, never a pseudo-inverse
    artefact) and the variance inflation factors.  chi^2/dof of the data rows scales the
    data information (residual-variance scaling, never below 1).  The posterior covariance
    adds the prior's information (weight ``cfg.prior_weight``); with weight 0 an
    unidentified parameter has infinite variance.

    Per parameter: ``sd`` (transform scale), ``prior_sd``, ``CI_95`` (two-sided, clipped
    to the physical bounds; one-sided 95% from the bound when the value is at a bound),
    and the flags ``at_bound`` ("lower"/"upper"/None), ``not_identified`` and
    ``prior_dominated`` (posterior/prior sd > 0.8).
    """
    names = list(names)
    k = len(names)
    specs = [space.spec(n) for n in names]
    fn, s0 = physical_residual_fn(space, names, params, forcing, targets, cfg, events)
    def both(sv):
        out = fn(sv)
        return out, out

    (J_d, J_p), (r_d, _) = jax.jacfwd(both, has_aux=True)(jnp.asarray(s0))
    J_d, J_p, r_d = np.asarray(J_d), np.asarray(J_p), np.asarray(r_d)
    J_d = np.where(np.isfinite(J_d), J_d, 0.0)
    n_rows = int(sum(targets.count().values())) + (cfg.events.size if events else 0)
    chi2 = float(np.sum(r_d**2))
    dof = n_rows - k
    chi2_dof = chi2 / dof if dof > 0 else float("nan")
    scale = max(chi2_dof, 1.0) if np.isfinite(chi2_dof) else 1.0
    # Prior information per parameter (diagonal: each prior row holds one parameter).
    prior_info = np.diag(J_p.T @ J_p)
    prior_sd = 1.0 / np.sqrt(np.where(prior_info > 0, prior_info, np.nan))
    D = np.where(np.isfinite(prior_sd), prior_sd, 1.0)
    F_d = (J_d.T @ J_d) / scale
    # Data information in units of the prior's (dimensionless, comparable across params).
    G = F_d * np.outer(D, D)
    lam, V, weak, not_identified = information_eigen(G)
    lam_max = float(max(lam[-1], 0.0))
    rank = int(np.sum(~weak))
    # Posterior covariance on the transform scale.
    w = float(cfg.prior_weight)
    if w > 0:
        F = F_d + w * np.diag(prior_info)
        cov = np.linalg.inv(F)
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
        # Unidentified: the prior's variance (the data say nothing there).
        sd = np.where(not_identified, prior_sd / np.sqrt(w), sd)
    else:
        inv_lam = np.where(weak, 0.0, 1.0 / np.where(weak, 1.0, lam))
        cov_g = (V * inv_lam) @ V.T
        sd = np.sqrt(np.clip(np.diag(cov_g), 0, None)) * D
        sd = np.where(not_identified, np.inf, sd)
    # Data-only correlation on the identified subspace.
    inv_lam = np.where(weak, 0.0, 1.0 / np.where(weak, 1.0, lam))
    cov_d = (V * inv_lam) @ V.T
    sd_d = np.sqrt(np.clip(np.diag(cov_d), 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = cov_d / np.outer(sd_d, sd_d)
    corr[not_identified, :] = np.nan
    corr[:, not_identified] = np.nan
    np.fill_diagonal(corr, 1.0)
    vif = column_vif(J_d)
    out_params = {}
    ci = {}
    for i, sp in enumerate(specs):
        value = float(getattr(params, sp.name))
        lo_s = float(_on_transform_scale(sp, sp.bound_lower)) if sp.transform_scale == "log" \
            else sp.bound_lower
        hi_s = float(_on_transform_scale(sp, sp.bound_upper)) if sp.transform_scale == "log" \
            else sp.bound_upper
        margin = AT_BOUND_MARGIN * (hi_s - lo_s)
        at = "lower" if s0[i] - lo_s <= margin else ("upper" if hi_s - s0[i] <= margin else None)
        sdi = float(sd[i]) if np.isfinite(sd[i]) and sd[i] > 0 else float("inf")
        if at == "lower":
            lo, hi = lo_s, min(hi_s, s0[i] + Z95_ONE_SIDED * sdi)
            kind = "one-sided 95% from the lower bound"
        elif at == "upper":
            lo, hi = max(lo_s, s0[i] - Z95_ONE_SIDED * sdi), hi_s
            kind = "one-sided 95% from the upper bound"
        else:
            lo, hi = max(lo_s, s0[i] - Z95 * sdi), min(hi_s, s0[i] + Z95 * sdi)
            kind = "two-sided 95% (Gauss-Newton), clipped to the physical bounds"
        ci[sp.name] = (_from_transform_scale(sp, lo), _from_transform_scale(sp, hi))
        ratio = sdi / float(prior_sd[i]) if np.isfinite(prior_sd[i]) else float("nan")
        out_params[sp.name] = {
            "value": value, "sd_transform_scale": sdi, "prior_sd_transform_scale":
            float(prior_sd[i]), "transform_scale": sp.transform_scale,
            "CI_95": list(ci[sp.name]), "CI_kind": kind, "at_bound": at,
            "not_identified": bool(not_identified[i]),
            "prior_dominated": bool(np.isfinite(ratio) and ratio > PRIOR_DOMINATED),
            "sd_ratio_posterior_prior": ratio,
            "outside_prior_CI_95": not (sp.lower <= value <= sp.upper),
            "prior_CI_95": [sp.lower, sp.upper], "bounds": [sp.bound_lower, sp.bound_upper],
        }
    pairs = correlated_pairs(names, corr)
    pos = lam[~weak]
    cond = float(lam_max / pos[0]) if pos.size else float("inf")
    return {"names": names, "corr": corr.tolist(), "sd": [float(x) for x in sd],
            "CI_95": ci, "VIF": vif.tolist(), "params": out_params,
            "condition_number": cond, "condition_number_all": float(
                lam_max / max(lam[0], 1e-300)) if lam_max > 0 else float("inf"),
            "rank": rank, "n_params": k, "pairs": pairs,
            "chi2": chi2, "dof": dof, "chi2_dof": chi2_dof, "residual_variance_scale": scale,
            "n_data_rows": n_rows, "prior_weight": w,
            "information_eigenvalues": lam.tolist(),
            "information_eigenvectors": V.tolist(),
            "basis": "Jacobian of the data rows (observed cells and event constraints) on "
            "each parameter's transform scale; correlation and VIF from the data rows only; "
            "data information scaled by max(1, chi2/dof); posterior adds the prior's "
            "information times the prior weight"}


def information_eigen(G):
    """Eigen-directions of an information matrix ``G`` (ascending eigenvalues ``lam``,
    eigenvectors in the columns of ``V``); ``weak``: directions with information below
    ``ABS_INFO`` or ``REL_INFO`` times the largest; ``not_identified``: parameters whose
    loading (sum of squared eigenvector components) on the weak directions exceeds 0.5."""
    lam, V = np.linalg.eigh(np.asarray(G, float))
    lam_max = float(max(lam[-1], 0.0))
    weak = (lam < ABS_INFO) | (lam < REL_INFO * lam_max)
    loading = np.sum(V[:, weak] ** 2, axis=1) if weak.any() else np.zeros(lam.size)
    return lam, V, weak, loading > 0.5


def column_vif(M) -> np.ndarray:
    """Variance inflation factors of the columns of ``M`` (centred): the diagonal of the
    inverse of their correlation matrix, 1 / (1 - R_j^2) of column j regressed on the
    others; infinite where a column is zero or (nearly) a combination of the others.  For
    the Jacobian of the data rows (sensitivity columns) or a sample of parameter vectors
    (rows: draws)."""
    M = np.asarray(M, float)
    Jc = M - M.mean(axis=0)
    norms = np.linalg.norm(Jc, axis=0)
    vif = np.full(M.shape[1], np.inf)
    ok = norms > 0
    if ok.any():
        R = (Jc[:, ok].T @ Jc[:, ok]) / np.outer(norms[ok], norms[ok])
        mu, U = np.linalg.eigh(R)
        tiny = mu < 1e-14 * max(mu[-1], 1e-300)
        vif_ok = np.sum(U**2 * np.where(tiny, 0.0, 1.0 / np.where(tiny, 1.0, mu)), axis=1)
        vif_ok = np.where(np.sum(U[:, tiny] ** 2, axis=1) > 1e-6, np.inf, vif_ok) \
            if tiny.any() else vif_ok
        vif[ok] = vif_ok
    return vif


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
    from ..model._field import LAYER_DEPTHS_M, SOM_PER_C

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
    from ..model._forcing import make_forcing

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
    from ..model._field import Layout, rates, year_drivers

    layout = Layout()
    # A state with the final year's V, theta and SOM; derivative of dtheta/dt in theta.
    y = np.zeros(layout.size)
    y[0] = float(sim.V[-1])
    y[4] = float(sim.theta[-1])
    som = float(sim.SOM[-1])
    y[layout.y] = som
    d = year_drivers(params, forcing, -1)

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
    holdout_rule: str = ""
    initial_state_note: str = ""


HOLDOUT_SHARE = 0.2


# Initial states: (parameter, variable whose first-year observation gives it, scale to the
# parameter's units, variables that identify it when fitted).
INITIAL_STATES = (("V0", "veg_cover_%", 0.01, ("veg_cover_%",)),
                  ("SOM0", "SOM_%", 1.0, SOM_VARS))


def initial_state_from_data(space: ParamSpace, params: Params, obs: Observations,
                            start: int, rule: str,
                            train_years=None) -> tuple[Params, str, tuple[str, ...]]:
    """V0 (cover / 100) and SOM0 (SOM_%, 0-20 cm): where they come from.

    ``rule`` (config ``initial_state``):

    - ``"data"``: from the observation of the first simulated year where observed (clipped
      to the physical bounds), else the prior;
    - ``"fit"``: fitted (see :func:`with_initial_state`) wherever the variables that
      identify it are observed in ``train_years`` (default: any year), else the prior;
    - ``"auto"`` (default): from the first year's observation where observed, else fitted
      as for ``"fit"``, else the prior (a record whose first year is not observed);
    - ``"prior"``: the prior values.

    Returns the parameters, a note in words and the names to fit."""
    if rule == "prior":
        return params, "V0, SOM0: prior values (config initial_state = prior)", ()
    i = np.flatnonzero(obs.years == start)
    keep = np.ones(len(obs.years), bool) if train_years is None else np.isin(
        obs.years, np.asarray(train_years))
    notes, new, fit = [], {}, []
    for name, var, scale, ident in INITIAL_STATES:
        sp = space.spec(name)
        first = bool(i.size and obs.masks[var][i[0]])
        if rule in ("data", "auto") and first:
            v = float(np.clip(obs.values[var][i[0]] * scale, sp.bound_lower, sp.bound_upper))
            new[name] = v
            notes.append(f"{name} = {v:.4g} from the {start} observation of {var}")
        elif rule in ("fit", "auto") and any(
                np.any(np.asarray(obs.masks[w], bool) & keep) for w in ident):
            fit.append(name)
            why = "" if rule == "fit" else f" ({var} not observed in {start})"
            notes.append(f"{name} fitted from {', '.join(w for w in ident if obs.masks[w].any())}"
                         f"{why}, starting from the prior value")
        else:
            why = f"{var} not observed in {start}" if rule == "data" else \
                f"no {'/'.join(ident)} observation in the training years"
            notes.append(f"{name}: prior value ({why})")
    return (params.replace(**new) if new else params), "; ".join(notes), tuple(fit)


def with_initial_state(stages: tuple[Stage, ...], names) -> tuple[Stage, ...]:
    """The stages with each initial state of ``names`` made free in the first stage that
    fits a variable identifying it: V0 where cover is fitted (stage a), SOM0 where an SOM
    column is fitted (stage b of the seed's stages: SOM0 is identified by SOM data, which
    stage (a) does not fit).  Later stages keep the fitted value.  Raises
    :class:`CalibrationError` when no stage fits such a variable."""
    out = list(stages)
    for name, _, _, ident in INITIAL_STATES:
        if name not in names:
            continue
        k = next((j for j, st in enumerate(out) if set(ident) & set(st.variables)), None)
        if k is None:
            raise CalibrationError(f"initial_state: no stage fits {'/'.join(ident)}, so "
                                   f"{name} cannot be fitted")
        st = out[k]
        if name not in st.free:
            out[k] = dataclasses.replace(
                st, free=st.free + (name,),
                description=(st.description + f"; {name} fitted here (initial_state)").strip(
                    "; "))
    return tuple(out)


def resolve_holdout(holdout, obs: Observations, years) -> tuple[tuple[int, int] | None, str]:
    """The holdout years and the rule that chose them.

    ``"auto"``: the last ``ceil(0.2 n)`` of the n years that hold any observation inside
    the simulated years (none when fewer than 5 such years); ``None``: no holdout; a pair:
    those years."""
    if holdout is None:
        return None, "no holdout (config holdout null)"
    if holdout != "auto":
        return (int(holdout[0]), int(holdout[1])), f"holdout {holdout[0]}-{holdout[1]} (given)"
    any_obs = np.zeros(len(obs.years), bool)
    for var in TARGET_VARIABLES:
        any_obs |= np.asarray(obs.masks[var], bool)
    yrs = np.asarray(obs.years)[any_obs]
    yrs = np.sort(yrs[(yrs >= years[0]) & (yrs <= years[-1])])
    if yrs.size < 5:
        return None, (f"no holdout: only {yrs.size} observed years (the default holds out "
                      "the last 20% of observed years when there are at least 5)")
    n = int(np.ceil(HOLDOUT_SHARE * yrs.size))
    first = int(yrs[-n])
    return (first, int(years[-1])), (
        f"default: the last {n} of {yrs.size} observed years ({first}-{int(yrs[-1])}, "
        f"~{HOLDOUT_SHARE:.0%}) held out")


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


def training_targets(obs: Observations, forcing: Forcing, holdout, dtype=None) -> Targets:
    """The targets a site calibration fits: spreads from the training cells only and every
    cell of the ``holdout`` years (a ``(first, last)`` pair or None) masked out, as in
    :func:`calibrate_site` (for analyses that refit a finished calibration)."""
    keep = training_years(forcing.years, holdout)
    targets = make_targets(obs, forcing, dtype=dtype, sigma_years=keep)
    return targets.with_mask(jnp.asarray(keep))


def fitted_names(stages) -> list[str]:
    """The parameters the stages that ran fitted (the calibrated set), in stage order."""
    names = []
    for res in stages:
        if res.skipped is None:
            names += [n for n in res.fitted if n not in names]
    return names


def training_years(years, holdout) -> np.ndarray:
    """Boolean mask of ``years`` outside the ``holdout`` pair (all True for None)."""
    years = np.asarray(years)
    keep = np.ones(len(years), bool)
    if holdout is not None:
        keep &= ~((years >= holdout[0]) & (years <= holdout[1]))
    return keep


def calibrate_site(space: ParamSpace, params: Params, forcing: Forcing, obs: Observations,
                   cfg: CalibrationConfig = CalibrationConfig(), planting_start=None,
                   progress=None, identifiability: bool = True) -> SiteCalibration:
    """Calibrate to a site's observations: stages on the training years, then metrics on
    training and holdout, the local correlation matrix and the regional magnitudes."""
    if obs.years.size == 0:
        raise CalibrationError(f"{obs.source_file}: no observations for {obs.location!r}")
    years = forcing.years
    hold, hold_rule = resolve_holdout(cfg.holdout, obs, years)
    keep = training_years(years, hold)
    params, init_note, init_fit = initial_state_from_data(
        space, params, obs, int(years[0]), cfg.initial_state, train_years=years[keep])
    if init_fit:
        cfg = dataclasses.replace(cfg, stages=with_initial_state(cfg.stages, init_fit))
    # Spreads from the training cells only: holdout values never enter the fit.
    train = training_targets(obs, forcing, hold, params.dtype)
    if sum(train.count().values()) == 0:
        raise CalibrationError(
            f"{obs.source_file}: {obs.location!r} has no observations in the training years "
            f"{years[0]}-{years[-1]} outside the holdout {hold}")
    fitted, stages = calibrate_stages(space, params, forcing, train, cfg, progress=progress)
    sim = simulate(fitted, forcing, method=cfg.method if cfg.method != "rk4" else "tsit5")
    metrics = _split_metrics(obs, sim, hold)
    free_names = fitted_names(stages)
    events = any(st.events for st, res in zip(cfg.stages, stages) if res.skipped is None)
    ident = None
    if identifiability and free_names:
        if progress:
            progress(f"local identifiability over {len(free_names)} parameters (jacfwd)")
        ident = local_identifiability(space, fitted, forcing, train, free_names, cfg,
                                      events=events)
    magnitudes = regional_magnitudes(fitted, forcing, space.region, planting_start)
    t_years = years[keep]
    return SiteCalibration(
        site=obs.location, region=space.region, params=fitted, prior=params, space=space,
        stages=stages, forcing=forcing, observations=obs, sim=sim,
        train_years=(int(t_years[0]), int(t_years[-1])),
        holdout_years=hold if hold is not None and np.any(~keep) else None,
        holdout_rule=hold_rule, initial_state_note=init_note,
        metrics=metrics, criteria=_criteria(metrics), identifiability=ident,
        magnitudes=magnitudes, config=cfg, dtype=str(params.dtype),
        prior_sim=simulate(params, forcing),
    )
