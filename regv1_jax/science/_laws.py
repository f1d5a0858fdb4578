"""The seed's scaling laws fitted across sites, with intervals.

The seed's "Scaling Laws Document" drafts, per site, thresholds as functions of mean annual
rainfall (MAP): ``V_crit = f(MAP, ...)`` (expected to fall with MAP), ``theta* = g(MAP,
...)``, ``SOM* = h(MAP, ...)`` and ``eta1_per_SOM(MAP) ~ alpha0 + alpha1 MAP^(-beta)``
(diminishing retention gain per % SOM as MAP rises; the "Universal" prior 5 mm/% SOM).

* :func:`fit_linear`: weighted least squares of ``y = a + b x`` (``x`` = MAP, or ln MAP for
  the log-linear form), with optional further covariates (slope, initial degradation, storm
  intensity: the seed's list), each site weighted by its interval (``sd = (hi - lo) /
  3.92``), standard errors scaled by ``max(1, chi2 / dof)`` and Student-t intervals, and the
  one-sided test of the seed's expected sign of the MAP slope;
* :func:`fit_power_law`: ``eta1 = alpha0 + alpha1 MAP^(-beta)`` by weighted nonlinear least
  squares (the library's Levenberg-Marquardt from several ``beta`` starts under ``vmap``,
  starting at the seed's ``alpha0`` = 5 mm/% SOM), a between-site scatter added to the
  sites' own intervals where they do not explain the scatter about the law, and
  profile-likelihood intervals (the law is far from linear in ``beta``).

Pure JAX (``jit``, ``vmap`` and ``grad`` through the fits); Student-t quantiles come from
scipy on the host (they depend on the degrees of freedom only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

__all__ = ["LawFit", "fit_linear", "fit_power_law", "interval_sd", "SEED_SIGNS",
           "UNIVERSAL_ETA1_PER_SOM"]

# The seed's expected sign of d(threshold)/d(MAP) (None: not stated).
SEED_SIGNS: dict[str, int | None] = {"V_crit": -1, "theta_star": None, "SOM_star": None,
                                     "eta1": -1}
UNIVERSAL_ETA1_PER_SOM = 5.0  # mm / (% SOM), the seed's "Universal" prior


def interval_sd(lo, hi):
    """The standard deviation a 95% interval stands for (normal: width / 3.92)."""
    return (jnp.asarray(hi) - jnp.asarray(lo)) / (2 * 1.959963984540054)


@dataclasses.dataclass(frozen=True)
class LawFit:
    """A fitted law: ``names`` of its coefficients, ``estimate``, ``se``, ``ci`` (95%,
    Student-t on ``dof``), ``chi2`` (weighted residual sum of squares), ``n`` sites; for a
    linear law the one-sided test of the expected sign of the MAP slope
    (``sign_p``: the p-value of "the slope has the expected sign" being false)."""

    law: str
    form: str
    names: tuple[str, ...]
    estimate: np.ndarray
    se: np.ndarray
    ci: np.ndarray  # (k, 2)
    chi2: float
    dof: int
    n: int
    expected_sign: int | None = None
    sign_p: float | None = None
    converged: bool = True
    tau: float = 0.0  # between-site scatter added to every site's sd (units of the law)
    interval: str = "Student-t on the scaled Gauss-Newton (Wald) covariance"

    def as_dict(self) -> dict:
        d = {"law": self.law, "form": self.form, "n_sites": self.n, "dof": self.dof,
             "chi2": self.chi2, "converged": self.converged,
             "between_site_scatter_tau": self.tau, "interval": self.interval,
             "coefficients": {n: {"estimate": float(e), "se": float(s),
                                  "CI_95": [float(c[0]), float(c[1])]}
                              for n, e, s, c in zip(self.names, self.estimate, self.se,
                                                    self.ci)}}
        if self.expected_sign is not None:
            d["expected_sign_of_MAP_slope"] = "negative" if self.expected_sign < 0 \
                else "positive"
            d["sign_p_value"] = self.sign_p
            d["sign_supported_at_5pct"] = bool(self.sign_p is not None and self.sign_p < 0.05)
        return d


def _t_quantile(dof: int, q: float = 0.975) -> float:
    from scipy.special import stdtrit

    return float(stdtrit(max(dof, 1), q))


@jax.jit
def _wls(X: Float[Array, "n k"], y: Float[Array, " n"], sd: Float[Array, " n"]):
    """Weighted least squares: (beta, covariance unscaled, chi2)."""
    w = 1.0 / sd
    A = X * w[:, None]
    b = y * w
    AtA = A.T @ A
    beta = jnp.linalg.solve(AtA, A.T @ b)
    r = A @ beta - b
    return beta, jnp.linalg.inv(AtA), jnp.sum(r**2)


def fit_linear(law: str, MAP, y, sd, *, log_map: bool = False,
               covariates: Mapping[str, Sequence[float]] | None = None,
               expected_sign: int | None = None) -> LawFit:
    """``y = a + b x (+ c_j z_j)`` by weighted least squares (``x`` = MAP in mm/yr, or its
    natural log with ``log_map``), sites weighted by ``1 / sd^2``.

    Raises ``ValueError`` for fewer sites than coefficients + 1 or a non-positive or
    non-finite ``sd``."""
    MAP, y, sd = (np.asarray(a, np.float64) for a in (MAP, y, sd))
    ok = np.isfinite(MAP) & np.isfinite(y) & np.isfinite(sd)
    cols = [np.ones_like(MAP), np.log(MAP) if log_map else MAP]
    names = ["intercept", "slope_ln_MAP" if log_map else "slope_MAP"]
    for name, values in (covariates or {}).items():
        z = np.asarray(values, np.float64)
        ok &= np.isfinite(z)
        cols.append(z)
        names.append(f"coef_{name}")
    if np.any(sd[ok] <= 0):
        raise ValueError(f"{law}: site intervals must have a positive width")
    X = np.stack(cols, axis=1)[ok]
    n, k = X.shape
    if n < k + 1:
        raise ValueError(f"{law}: {n} sites with finite values for {k} coefficients "
                         "(need at least one more)")
    beta, cov, chi2 = (np.asarray(a) for a in _wls(jnp.asarray(X), jnp.asarray(y[ok]),
                                                   jnp.asarray(sd[ok])))
    dof = n - k
    scale = max(1.0, float(chi2) / dof)
    se = np.sqrt(np.diag(cov) * scale)
    t = _t_quantile(dof)
    ci = np.stack([beta - t * se, beta + t * se], axis=1)
    sign_p = None
    if expected_sign is not None:
        from scipy.special import stdtr

        tstat = float(beta[1] / se[1]) * expected_sign  # > 0: the expected sign
        sign_p = float(1.0 - stdtr(dof, tstat))
    form = f"{law} = intercept + slope * {'ln(MAP)' if log_map else 'MAP'}" + "".join(
        f" + coef_{c} * {c}" for c in (covariates or {}))
    return LawFit(law, form, tuple(names), beta, se, ci, float(chi2), dof, n,
                  expected_sign, sign_p)


def _power_residuals(theta, MAP, y, sd):
    """(alpha0 + alpha1 (MAP / 500)^(-beta) - y) / sd; ``theta`` = (alpha0, alpha1, beta)
    with MAP scaled by 500 mm inside (alpha1 is the gain at 500 mm)."""
    a0, a1, b = theta[0], theta[1], theta[2]
    return (a0 + a1 * (MAP / 500.0) ** (-b) - y) / sd


def _power_fits(U0, free, MAP, y, sd):
    """Levenberg-Marquardt of the power law from every row of ``U0`` ``(m, 3)``, the
    coefficients where ``free`` ``(m, 3)`` is False held at their start: ``(theta (m, 3),
    chi2 (m,))``; one compiled call for all rows (starts and profile points alike)."""
    from ..fit import LevenbergMarquardt

    lm = LevenbergMarquardt(max_steps=200, width=3)

    def one(u0, mask):
        res = lm.minimise(lambda t: _power_residuals(t, MAP, y, sd),
                          lambda t: 0.5 * jnp.sum(_power_residuals(t, MAP, y, sd) ** 2),
                          u0, mask, MAP.shape[0])
        return res.u, 2.0 * res.trace[-1]

    return jax.vmap(one)(U0, free)


_power_fits_jit = jax.jit(_power_fits)


def _best(U0, free, MAP, y, sd):
    U, chi2 = (np.asarray(a) for a in _power_fits_jit(jnp.asarray(U0), jnp.asarray(free),
                                                      MAP, y, sd))
    chi2 = np.where(np.isfinite(chi2), chi2, np.inf)
    k = int(np.argmin(chi2))
    return U[k], float(chi2[k])


PROFILE_GRID = 48  # profile points per coefficient, over estimate +- PROFILE_SPAN se
PROFILE_SPAN = 8.0


def fit_power_law(MAP, y, sd, *, alpha0_start: float = UNIVERSAL_ETA1_PER_SOM,
                  betas=(0.25, 0.5, 1.0, 2.0, 4.0), law: str = "eta1_per_SOM") -> LawFit:
    """``y = alpha0 + alpha1 (MAP / 500 mm)^(-beta)`` by weighted nonlinear least squares.

    The seed writes ``alpha1 MAP^(-beta)``; MAP is scaled by 500 mm so that ``alpha1`` (the
    gain above ``alpha0`` at 500 mm, in the units of ``y``) is of order one and the fit is
    well conditioned (``alpha1_seed = alpha1 * 500^beta``).  Levenberg-Marquardt from each
    ``beta`` start (``alpha0`` starting at the seed's universal prior, ``alpha1`` from the
    linear fit at that ``beta``), all starts under ``vmap``; the lowest chi-square wins.

    Weights: each site's ``sd`` (from its interval) combined with a between-site scatter
    ``tau`` (``sd_eff^2 = sd^2 + tau^2``, DerSimonian-Laird style): ``tau = 0`` when the
    sites' own intervals explain the scatter about the law (chi2 / dof <= 1), else the
    ``tau`` that makes chi2 / dof = 1 (bisection), so that a few sites with over-narrow
    intervals do not decide the law alone.  Intervals: **profile likelihood** (each
    coefficient held on a grid of ``PROFILE_GRID`` values over its estimate
    +- ``PROFILE_SPAN`` Gauss-Newton standard errors, the other two refitted; the 95%
    interval is where chi2 rises by ``t^2`` of ``n - 3`` degrees of freedom), because the
    law is far from linear in ``beta`` and the Gauss-Newton (Wald) interval under-covers;
    a side that does not cross within the grid is reported as infinite.  ``se`` is the
    Gauss-Newton standard error."""
    MAP, y, sd = (np.asarray(a, np.float64) for a in (MAP, y, sd))
    ok = np.isfinite(MAP) & np.isfinite(y) & np.isfinite(sd) & (sd > 0)
    MAP, y, sd = MAP[ok], y[ok], sd[ok]
    n = MAP.size
    if n < 4:
        raise ValueError(f"{law}: {n} sites with finite values (the power law needs >= 4)")
    starts = []
    for b in betas:
        g = (MAP / 500.0) ** (-b)
        a1 = float(np.sum((y - alpha0_start) * g / sd**2) / np.sum(g**2 / sd**2))
        starts.append([alpha0_start, a1, b])
    U0, all_free = np.asarray(starts), np.ones((len(starts), 3), bool)
    jM, jy = jnp.asarray(MAP), jnp.asarray(y)
    dof = n - 3

    def fit(tau):
        s = jnp.asarray(np.sqrt(sd**2 + tau**2))
        return (*_best(U0, all_free, jM, jy, s), s)

    theta, chi2, s = fit(0.0)
    tau = 0.0
    if chi2 / dof > 1.0:
        lo, hi = 0.0, float(np.std(y)) + 1e-12
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            if fit(mid)[1] / dof > 1.0:
                lo = mid
            else:
                hi = mid
        tau = hi
        theta, chi2, s = fit(tau)
    J = np.asarray(jax.jacfwd(lambda t: _power_residuals(t, jM, jy, s))(jnp.asarray(theta)))
    try:
        se = np.sqrt(np.diag(np.linalg.inv(J.T @ J)))
        converged = bool(np.all(np.isfinite(se)))
    except np.linalg.LinAlgError:
        se, converged = np.full(3, np.nan), False
    q = _t_quantile(dof) ** 2
    ci = np.full((3, 2), np.nan)
    if converged:
        rows, free = [], []
        grids = []
        for i in range(3):
            g = theta[i] + se[i] * np.linspace(-PROFILE_SPAN, PROFILE_SPAN, PROFILE_GRID)
            grids.append(g)
            for v in g:
                u = theta.copy()
                u[i] = v
                m = np.ones(3, bool)
                m[i] = False
                rows.append(u)
                free.append(m)
        _, prof = _power_fits_jit(jnp.asarray(np.asarray(rows)), jnp.asarray(np.asarray(free)),
                                  jM, jy, s)
        prof = np.asarray(prof).reshape(3, PROFILE_GRID) - chi2
        for i in range(3):
            ci[i] = _crossings(grids[i], prof[i], q, theta[i])
    return LawFit(law, f"{law} = alpha0 + alpha1 * (MAP / 500 mm)^(-beta)",
                  ("alpha0", "alpha1_at_500mm", "beta"), theta, se, ci, chi2, dof, n,
                  converged=converged, tau=tau, interval="profile likelihood")


def _crossings(grid, dchi2, q, centre):
    """Where the profile ``dchi2`` on ``grid`` first rises through ``q`` on each side of
    ``centre`` (linear interpolation; infinite where it does not)."""
    d = np.where(np.isfinite(dchi2), dchi2, np.inf)
    out = []
    for side in (-1, 1):
        idx = np.flatnonzero(grid < centre)[::-1] if side < 0 else np.flatnonzero(grid > centre)
        prev_x, prev_d = centre, 0.0
        bound = -np.inf if side < 0 else np.inf
        for j in idx:
            if d[j] >= q:
                x0, x1, d0, d1 = prev_x, grid[j], prev_d, d[j]
                bound = x0 + (q - d0) * (x1 - x0) / (d1 - d0) if np.isfinite(d1) else x1
                break
            prev_x, prev_d = grid[j], d[j]
        out.append(bound)
    return out
