"""Local (Gauss-Newton) uncertainty and identifiability at an optimum: the Jacobian of the
data rows on each parameter's transform scale, its information eigen-directions, the
correlation matrix, VIF and the flags of params.json."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._traces import cached
from ..model import PARAM_NAMES, Forcing, Layout, Params, ParamSpace
from ..solve import simulate, solver_kernels
from ._config import CalibrationConfig
from ._objective import TARGET_VARIABLES, Targets, data_residuals, event_residuals

__all__ = ["CORR_FLAG", "SEED_PAIRS", "physical_residual_fn", "local_identifiability",
           "information_eigen", "column_vif", "correlated_pairs"]

# |r| above this marks a pair of parameters that the data cannot tell apart (report table and
# the outlined cells of the correlation figure).
CORR_FLAG = 0.9
# Pairs the seed names as likely trade-offs; always listed in the report.
SEED_PAIRS = (("lambda1", "eta1"), ("a1", "a2"), ("c_E", "omega_E"), ("r_V", "K_V"))

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
    fn = functools.partial(_physical_residuals, base=base, forcing=forcing, targets=targets,
                           space=space, names=tuple(names),
                           solver=cfg.make_solver().for_jacobian(), events=cfg.events,
                           use_events=bool(events))
    s0 = np.array([_on_transform_scale(sp, float(getattr(base, sp.name))) for sp in specs])
    return fn, s0


def _physical_residuals(svec, *, base, forcing, targets, space, names, solver, events,
                        use_events):
    idx = [PARAM_NAMES.index(n) for n in names]
    log = np.array([space.spec(n).transform_scale == "log" for n in names])
    vals = jnp.where(log, jnp.exp(jnp.where(log, svec, 0.0)), svec)
    x = jax.lax.stop_gradient(space.stack(base)).at[np.asarray(idx)].set(vals)
    p = space.unstack(x)
    sim = solver.simulation_of_vector(x, forcing, Layout())
    if sim is None:
        sim = simulate(p, forcing, solver=solver)
    r_data = data_residuals(sim, targets, TARGET_VARIABLES)
    r_ev = event_residuals(p, events) * (1.0 if use_events else 0.0)
    r_prior = space.vector_standardised(x)[np.asarray(idx)]
    return jnp.concatenate([r_data, r_ev]), r_prior


@eqx.filter_jit
def _physical_jacobian(s0, base, forcing, targets, space, names, solver, events, use_events):
    """``((J_data, J_prior), (r_data, r_prior))`` at ``s0`` (one compiled function)."""
    def both(sv):
        out = _physical_residuals(sv, base=base, forcing=forcing, targets=targets,
                                  space=space, names=names, solver=solver, events=events,
                                  use_events=use_events)
        return out, out

    return jax.jacfwd(both, has_aux=True)(s0)


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
    _, s0 = physical_residual_fn(space, names, params, forcing, targets, cfg, events)
    solver = cfg.make_solver().for_jacobian()
    (J_d, J_p), (r_d, _) = cached(
        _physical_jacobian, "local_identifiability", jnp.asarray(s0), params, forcing,
        targets, space, tuple(names), solver, cfg.events, bool(events),
        kernels=solver_kernels(solver, params.dtype))
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
