"""Profile likelihood: for a parameter psi on a grid, refit every other calibrated parameter.

**Objective.**  A profile point is the point fit's last (joint) objective: ``_residuals``
of ``_calibrate`` with every target variable, the event constraints when the fit used them,
and the prior rows of the free parameters times the prior weight; ``L = 0.5 |r|^2``.  The
profiled parameter is held at the grid value; the free set is the calibrated set ``F``
minus psi (psi need not be calibrated: theta_star and SOM_star are fitted by no stage, and
their profile refits ``F`` with them moved).  psi's own prior row is left out (a profile
*likelihood* in psi; ``profiled_prior=True`` keeps it: a profile posterior).

**Refit.**  Not the staged fit (its compile takes minutes and its stages exist to find the
basin): ONE joint Levenberg-Marquardt (``fit.LevenbergMarquardt``, the calibration's) over
``F \\ {psi}`` per point, warm-started from the neighbouring point.  The grid is cut at the
point estimate into two outward sweeps; a ``lax.scan`` walks them step by step, and every
sweep of every profiled parameter (both directions) runs at once under ``vmap``.

**Deviance and interval.**  ``D(psi) = 2 (L(psi) - L_min) / s`` with ``L_min`` the profile's
minimum (grid minimum refined by the parabola through its neighbours) and ``s = max(1,
chi2/dof)`` of the data rows at the point estimate (the residual-variance scaling of the
local intervals, ``_fit.local_identifiability``; ``scale=False``: ``s = 1``).  The 95%
interval is ``{psi: D <= 3.84}`` (chi2_1), its ends interpolated linearly between grid
points; a side where the profile never reaches 3.84 inside the grid is *open* (the grid
end is reported, flagged).  *Flat*: open on both sides.  Points whose refit did not
converge count (flagged); failed points (non-finite loss) are left out of the interval.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..fit import (
    AT_BOUND_U,
    TARGET_VARIABLES,
    CalibrationConfig,
    LevenbergMarquardt,
    Objective,
    Targets,
)
from ..model import Forcing, Params, ParamSpace
from ..status import code

__all__ = ["CHI2_95", "POINT_STATUS", "DEFAULT_PROFILED", "Profile", "ProfileSetup", "profile",
           "lr_interval", "point_residual_fn", "profile_grid", "setup_from_calibration", "FAILED",
           "PROFILE_LM_STEPS"]

CHI2_95 = 3.841458820694124  # 95% quantile of chi2 with 1 degree of freedom
DEFAULT_PROFILED = ("theta_star", "SOM_star")  # the seed's thresholds
# Point status words by RESULTS code (at_bound: converged with a refitted parameter at its
# bound); a failed point (non-finite loss) is left out of the interval.
FAILED = code("failed")
POINT_STATUS = {code("successful"): "ok", code("not_converged"): "not_converged",
                code("at_bound"): "at_bound", FAILED: "failed"}
PROFILE_LM_STEPS = 15  # most LM iterations per grid point (warm-started)
EDGE = 1e-3  # grid ends stay this share of the physical range inside the bounds


@dataclasses.dataclass(frozen=True)
class ProfileSetup:
    """The point fit a profile starts from: optimum, data, calibrated set, objective."""

    space: ParamSpace
    params: Params  # the point estimate
    forcing: Forcing
    targets: Targets  # the training targets of the fit
    free: tuple[str, ...]  # the calibrated parameters (F)
    cfg: CalibrationConfig
    events: bool = True  # the fit's objective held the event constraints

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.space.specs]

    def index(self, name: str) -> int:
        self.space.spec(name)
        return self.names.index(name)


@dataclasses.dataclass(frozen=True)
class Profile:
    """One parameter's profile (numpy; ``x`` ascending, physical units)."""

    name: str
    units: str
    estimate: float  # the point estimate (grid centre)
    x: np.ndarray
    loss: np.ndarray  # 0.5 |r|^2 of the refit
    deviance: np.ndarray  # 2 (loss - loss_min) / scale
    status: np.ndarray  # POINT_STATUS codes
    n_iter: np.ndarray
    loss_min: float
    x_min: float  # where the profile is lowest (parabola vertex when interior)
    scale: float
    ci: tuple[float, float]
    open_lower: bool
    open_upper: bool
    free: tuple[str, ...]

    @property
    def flat(self) -> bool:
        return self.open_lower and self.open_upper

    @property
    def failed(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.status == FAILED)]

    def summary(self) -> dict:
        st = [POINT_STATUS[int(s)] for s in self.status]
        return {
            "name": self.name, "units": self.units, "estimate": self.estimate,
            "profile_minimum_at": self.x_min, "loss_min": self.loss_min,
            "deviance_scale": self.scale, "CI_95_LR": list(self.ci),
            "open_lower": self.open_lower, "open_upper": self.open_upper,
            "flat": self.flat, "max_deviance": float(np.nanmax(self.deviance))
            if np.isfinite(self.deviance).any() else None,
            "grid": [float(self.x[0]), float(self.x[-1])], "points": int(self.x.size),
            "n_ok": st.count("ok"), "n_not_converged": st.count("not_converged"),
            "n_at_bound": st.count("at_bound"), "failed_points": self.failed,
            "refitted": list(self.free),
        }


# --- grid and interval (host, numpy) ---------------------------------------------------
def _to_s(spec, x):
    return np.log(x) if spec.scale == "log" else np.asarray(x, float)


def _from_s(spec, s):
    return np.exp(s) if spec.scale == "log" else np.asarray(s, float)


def profile_grid(space: ParamSpace, name: str, centre: float, points: int = 41,
                 k_sd: float = 3.0, span: tuple[float, float] | None = None) -> np.ndarray:
    """``points`` values (odd; an even count gets one more) with ``centre`` in the middle:
    ``(points - 1) / 2`` evenly spaced on each side out to ``centre -/+ k_sd`` prior sd
    on the prior's scale (log or linear), or to ``span`` (physical), cut ``EDGE`` of the
    physical range inside the bounds.  Ascending."""
    spec = space.spec(name)
    m = max(int(points) // 2, 1)
    b_lo, b_hi = _to_s(spec, spec.bound_lower), _to_s(spec, spec.bound_upper)
    edge = EDGE * (b_hi - b_lo)
    c = float(np.clip(_to_s(spec, centre), b_lo + edge, b_hi - edge))
    if span is None:
        lo, hi = c - k_sd * spec.prior_sd, c + k_sd * spec.prior_sd
    else:
        lo, hi = float(_to_s(spec, span[0])), float(_to_s(spec, span[1]))
        if not lo < c < hi:
            raise ValueError(f"{name}: the grid span {span} must enclose the estimate "
                             f"{centre:.6g}")
    lo, hi = max(lo, b_lo + edge), min(hi, b_hi - edge)
    left = np.linspace(lo, c, m + 1)
    right = np.linspace(c, hi, m + 1)
    return _from_s(spec, np.concatenate([left, right[1:]]))


def lr_interval(x, dev, usable, level: float = CHI2_95):
    """Likelihood-ratio interval ``{x: dev <= level}`` on a grid (``x`` ascending).

    From the lowest usable point, walk outwards to the first usable point with ``dev >=
    level`` and interpolate linearly between it and its inner neighbour.  Returns ``(lo,
    hi, open_lower, open_upper)``; an open side gives the outermost usable grid value."""
    x, dev = np.asarray(x, float), np.asarray(dev, float)
    ok = np.asarray(usable, bool) & np.isfinite(dev)
    if not ok.any():
        return float("nan"), float("nan"), True, True
    idx = np.flatnonzero(ok)
    i0 = idx[np.argmin(dev[idx])]

    def side(order):
        prev = i0
        for j in order:
            if dev[j] >= level:
                d0, d1 = dev[prev], dev[j]
                t = (level - d0) / (d1 - d0) if d1 > d0 else 1.0
                return float(x[prev] + t * (x[j] - x[prev])), False
            prev = j
        return float(x[prev]), True

    lo, open_lo = side([j for j in idx[::-1] if j < i0])
    hi, open_hi = side([j for j in idx if j > i0])
    return lo, hi, open_lo, open_hi


def _profile_minimum(x, loss, usable):
    """Lowest loss of the profile: the grid minimum, refined by the parabola through it
    and its usable neighbours when interior and convex.  Returns (loss_min, x_min)."""
    idx = np.flatnonzero(np.asarray(usable, bool) & np.isfinite(loss))
    k = int(np.argmin(loss[idx]))
    i = idx[k]
    best = (float(loss[i]), float(x[i]))
    if 0 < k < idx.size - 1:
        j = idx[k - 1:k + 2]
        a, b, c = np.polyfit(x[j], loss[j], 2)
        if a > 0:
            xv = -b / (2 * a)
            if x[j[0]] <= xv <= x[j[2]]:
                lv = float(c - b * b / (4 * a))
                if lv < best[0]:
                    best = (lv, float(xv))
    return best


# --- the batched refits (jitted) -------------------------------------------------------
def _selection(free_mask: np.ndarray, width: int) -> np.ndarray:
    """(n_params, width) 0/1 matrix of the True coordinates of ``free_mask`` (padded)."""
    S = np.zeros((free_mask.size, width))
    cols = np.flatnonzero(free_mask)
    S[cols, np.arange(cols.size)] = 1.0
    return S


def _point_arrays(setup: ProfileSetup, name: str, profiled_prior: bool, width: int):
    """Residual mask (F and psi), free selection (F without psi), prior-row weights."""
    names = setup.names
    F = np.array([n in setup.free for n in names])
    i = setup.index(name)
    mask = F.copy()
    mask[i] = True
    free = F.copy()
    free[i] = False
    prior_rows = mask.astype(float)
    if not profiled_prior:
        prior_rows[i] = 0.0
    return mask, _selection(free, width), prior_rows


def _objective(setup: ProfileSetup, solver=None) -> Objective:
    """The point fit's joint objective (every target variable, the events when the fit used
    them, the prior rows times the prior weight); the mask and the prior-row weights are set
    per sweep."""
    dtype = setup.params.dtype
    n_p = len(setup.names)
    return Objective(setup.params, jnp.zeros((n_p,), bool),
                     jnp.ones((len(TARGET_VARIABLES),), dtype),
                     jnp.asarray(1.0 if setup.events else 0.0, dtype),
                     jnp.asarray(setup.cfg.prior_weight, dtype), setup.forcing, setup.targets,
                     setup.space, solver or setup.cfg.make_solver().for_jacobian(),
                     setup.cfg.events, prior_rows=jnp.ones((n_p,), dtype))


@eqx.filter_jit
def _sweeps(u_start, grid_u, idx, masks, S, prior_rows, objective: Objective,
            lm: LevenbergMarquardt, gtol, ftol, devices=None):
    """``lax.scan`` over the steps of every sweep at once; each step a vmapped LM refit per
    sweep, warm-started from the sweep's last finite point; with several ``devices`` the
    sweeps are split over them (``shard_map``)."""
    n_data = len(TARGET_VARIABLES) * objective.forcing.n_years + objective.events.size

    def fit_one(u_prev, g, i, mask_vec, S_b, rows):
        u0 = u_prev.at[i].set(g)
        obj = dataclasses.replace(objective, mask=mask_vec, prior_rows=rows)
        res = lm.solve(obj.residuals, u0, S_b, n_data)
        u, trace = res.u, res.trace
        loss = trace[-1]
        # The trace repeats the final cost after an early stop; with few iterations a
        # 10-iteration window would reach back to the start, so the last 3 count.
        tail = trace[-3:]
        scale = 1.0 + jnp.abs(loss)
        conv = (jnp.linalg.norm(res.grad) <= gtol * scale) & \
            (jnp.max(tail) - jnp.min(tail) <= ftol * scale)
        free = jnp.sum(S_b, axis=1) > 0
        at_bound = jnp.any(free & (jnp.abs(u) >= AT_BOUND_U))
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(u))
        # at_bound: converged with a refitted parameter at its physical bound (its
        # saturated coordinate has no gradient); not converged wins over at_bound.
        status = jnp.where(conv, jnp.where(at_bound, code("at_bound"), code("successful")),
                           code("not_converged"))
        status = jnp.where(finite, status, FAILED)
        return u, jnp.where(finite, loss, jnp.nan), status, res.n_iter

    def run(u_start, grid_u, idx, masks, S, prior_rows):
        def step(u_prev, g):
            u, loss, status, it = jax.vmap(fit_one)(u_prev, g, idx, masks, S, prior_rows)
            u_next = jnp.where((status != FAILED)[:, None], u, u_prev)
            return u_next, (loss, status, it)

        _, out = jax.lax.scan(step, u_start, grid_u)
        return out

    if devices is not None:  # the sweeps split over the devices (one core each on CPU)
        from jax.sharding import Mesh, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("sweep",))
        bat, col = PartitionSpec("sweep"), PartitionSpec(None, "sweep")
        run = jax.shard_map(run, mesh=mesh, in_specs=(bat, col, bat, bat, bat, bat),
                            out_specs=(col, col, col), check_vma=False)
    return run(u_start, grid_u, idx, masks, S, prior_rows)


def _data_scale(setup: ProfileSetup) -> tuple[float, float, int]:
    """(s, chi2, dof): ``s = max(1, chi2/dof)`` of the data and event rows at the estimate
    (as ``local_identifiability`` scales the data information)."""
    space = setup.space
    u = space.vector_to_unconstrained(space.stack(setup.params))
    F = jnp.asarray([n in setup.free for n in setup.names])
    n_p = len(setup.names)
    r = dataclasses.replace(_objective(setup), mask=F).residuals(u)
    chi2 = float(jnp.sum(r[:-n_p] ** 2))
    n_rows = int(sum(setup.targets.count().values())) + \
        (setup.cfg.events.size if setup.events else 0)
    dof = n_rows - len(setup.free)
    s = max(chi2 / dof, 1.0) if dof > 0 else 1.0
    return s, chi2, dof


def profile(setup: ProfileSetup, names=DEFAULT_PROFILED, *, points: int = 41,
            k_sd: float = 3.0, spans: dict | None = None, profiled_prior: bool = False,
            scale: bool = True, gtol: float | None = None, ftol: float | None = None,
            lm_steps: int | None = None, devices=None) -> list[Profile]:
    """Profiles of ``names`` over their grids (:func:`profile_grid`), all in one jitted
    call: ``2 len(names)`` sweeps of ``points // 2 + 1`` steps (the estimate is the first
    step of both), each step one vmapped LM refit per sweep.

    ``lm_steps``: most LM iterations per point (default ``PROFILE_LM_STEPS``: a point
    warm-started from its neighbour needs few; one that needs more is flagged
    ``not_converged``); ``gtol``, ``ftol``: the convergence test of each point (default:
    the config's; |gradient| <= gtol (1 + L) and the cost moved <= ftol (1 + L) over the
    last 3 iterations).  Precision: that
    of ``setup.params`` (float64 recommended: deviances are differences of losses).
    ``devices``: split the sweeps over these (default ``jax.devices()`` when there are
    several and they divide the ``2 len(names)`` sweeps; expose CPU cores as devices with
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before jax is imported).
    Returns one :class:`Profile` per name, in order."""
    names = list(names)
    if not names:
        raise ValueError("no parameter to profile")
    if len(set(names)) != len(names):
        raise ValueError(f"parameter named twice in {names}")
    space, cfg = setup.space, setup.cfg
    lm = LevenbergMarquardt(max_steps=int(lm_steps or PROFILE_LM_STEPS))
    dtype = setup.params.dtype
    spans = spans or {}
    gtol = cfg.gtol if gtol is None else gtol
    ftol = cfg.ftol if ftol is None else ftol
    width = max(len(setup.free), 1)
    grids, sweeps_u, idx, masks, Ss, rows = [], [], [], [], [], []
    u_opt = np.asarray(space.vector_to_unconstrained(space.stack(setup.params)))
    for n in names:
        est = float(getattr(setup.params, n))
        g = profile_grid(space, n, est, points, k_sd, spans.get(n))
        grids.append(g)
        m = g.size // 2
        mask, S, pr = _point_arrays(setup, n, profiled_prior, width)
        gu = np.asarray(getattr(space.to_unconstrained(
            setup.params.replace(**{n: jnp.asarray(g, dtype)})), n))
        for sweep in (gu[m::-1], gu[m:]):  # outward from the estimate: down, then up
            sweeps_u.append(sweep)
            idx.append(setup.index(n))
            masks.append(mask)
            Ss.append(S)
            rows.append(pr)
    B = len(sweeps_u)
    grid_u = jnp.asarray(np.stack(sweeps_u, axis=1), dtype)  # (steps, B)
    u_start = jnp.asarray(np.repeat(u_opt[None], B, axis=0), dtype)
    devices = tuple(jax.devices() if devices is None else devices)
    devices = devices if len(devices) > 1 and B % len(devices) == 0 else None
    loss, status, it = _sweeps(u_start, grid_u, jnp.asarray(idx),
                               jnp.asarray(np.stack(masks)), jnp.asarray(np.stack(Ss), dtype),
                               jnp.asarray(np.stack(rows), dtype), _objective(setup), lm,
                               gtol, ftol, devices)
    loss, status, it = np.asarray(loss), np.asarray(status), np.asarray(it)
    s, _, _ = _data_scale(setup) if scale else (1.0, None, None)
    out = []
    for k, n in enumerate(names):
        lo_s, hi_s = 2 * k, 2 * k + 1
        # Down sweep reversed (ascending x) + up sweep without its first point (the centre).
        L = np.concatenate([loss[::-1, lo_s], loss[1:, hi_s]])
        C = np.concatenate([status[::-1, lo_s], status[1:, hi_s]])
        N = np.concatenate([it[::-1, lo_s], it[1:, hi_s]])
        m = grids[k].size // 2
        # The centre was fitted by both sweeps (same start, same point): keep the lower.
        if np.isfinite(loss[0, hi_s]) and not loss[0, hi_s] >= L[m]:
            L[m], C[m], N[m] = loss[0, hi_s], status[0, hi_s], it[0, hi_s]
        usable = C != FAILED
        x = grids[k]
        if usable.any():
            lmin, xmin = _profile_minimum(x, L, usable)
        else:
            lmin, xmin = float("nan"), float("nan")
        dev = 2.0 * (L - lmin) / s
        lo, hi, olo, ohi = lr_interval(x, dev, usable)
        free = tuple(f for f in setup.free if f != n)
        out.append(Profile(n, space.spec(n).units, float(getattr(setup.params, n)), x, L, dev,
                           C, N, lmin, xmin, float(s), (lo, hi), olo, ohi, free))
    return out


@eqx.filter_jit
def _point_residuals(v, u_base, cols, objective: Objective):
    return objective.residuals(u_base.at[cols].set(v))


def point_residual_fn(setup: ProfileSetup, name: str, value: float,
                      profiled_prior: bool = False):
    """``(fn, v0)``: the residuals of one profile point as a function of the free
    coordinates ``v`` (unconstrained scale, ``F \\ {psi}`` in parameter order; numpy in,
    numpy out; one compilation serves every value), and ``v0``: those coordinates at the
    prior values (a cold start).  ``0.5 |fn(v)|^2`` minimised over ``v`` is the profile
    loss at ``value`` (for peers such as scipy, and checks)."""
    space = setup.space
    dtype = setup.params.dtype
    mask, S, pr = _point_arrays(setup, name, profiled_prior, max(len(setup.free), 1))
    free = np.sum(S, axis=1) > 0
    p = setup.params.replace(**{name: jnp.asarray(value, dtype)})
    obj = dataclasses.replace(_objective(setup), mask=jnp.asarray(mask),
                              prior_rows=jnp.asarray(pr, dtype))
    u_base = space.vector_to_unconstrained(space.stack(p))
    cols = jnp.asarray(np.flatnonzero(free))

    def fn(v):
        return np.asarray(_point_residuals(jnp.asarray(v, dtype), u_base, cols, obj))

    v0 = np.asarray(space.vector_to_unconstrained(space.stack(space.prior_values(dtype))))[free]
    return fn, v0


def setup_from_calibration(cal) -> ProfileSetup:
    """The :class:`ProfileSetup` of a finished ``calibrate_site`` (its estimate, training
    targets, calibrated set and whether its objective held the event constraints)."""
    from ..fit import fitted_names, training_targets, used_events

    free = fitted_names(cal.stages)
    events = used_events(cal.config, cal.stages)
    targets = training_targets(cal.observations, cal.forcing, cal.holdout_years,
                               cal.params.dtype)
    return ProfileSetup(cal.space, cal.params, cal.forcing, targets, tuple(free), cal.config,
                        events)
