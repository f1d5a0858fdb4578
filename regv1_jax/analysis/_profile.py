"""Profile likelihood: for a parameter psi on a grid, refit every other calibrated parameter.

**Objective.**  A profile point is the point fit's last (joint) objective: ``_residuals``
of ``_calibrate`` with every target variable, the event constraints when the fit used them,
and the prior rows of the free parameters times the prior weight; ``L = 0.5 |r|^2``.  The
profiled parameter is held at the grid value; the free set is the calibrated set ``F``
minus psi (psi need not be calibrated: theta_star and SOM_star are fitted by no stage, and
their profile refits ``F`` with them moved).  psi's own prior row is left out (a profile
*likelihood* in psi; ``profiled_prior=True`` keeps it: a profile posterior).

**Refit.**  Not the staged fit (its compile takes minutes and its stages exist to find the
basin): ONE joint Levenberg-Marquardt (``_levenberg_marquardt``, the calibration's) over
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

from ..fit._config import (
    CalibrationConfig,
    _levenberg_marquardt,
    _residuals,
    _Settings,
    _stack,
    _unstack,
)
from ..fit._objective import TARGET_VARIABLES, Targets
from ..fit._staged import AT_BOUND_U
from ..model._forcing import Forcing
from ..model._params import Params, ParamSpace

__all__ = ["CHI2_95", "POINT_STATUS", "DEFAULT_PROFILED", "Profile", "ProfileSetup",
           "profile", "lr_interval", "point_residual_fn", "profile_grid",
           "setup_from_calibration", "write_profile", "plot_profiles", "report_fragment"]

CHI2_95 = 3.841458820694124  # 95% quantile of chi2 with 1 degree of freedom
DEFAULT_PROFILED = ("theta_star", "SOM_star")  # the seed's thresholds
POINT_STATUS = {0: "ok", 1: "not_converged", 2: "at_bound", 3: "failed"}  # at_bound: converged
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
        return [int(i) for i in np.flatnonzero(self.status == 3)]

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


def _objective_residuals(u, base, mask_vec, prior_rows, ev_w, prior_w, forcing, targets,
                         space, settings):
    """The point fit's joint residuals at ``u`` with psi's prior row weighted by
    ``prior_rows`` (data and event rows unchanged)."""
    var_w = jnp.ones((len(TARGET_VARIABLES),), u.dtype)
    fwd = "checkpoint" if settings.method == "rk4" else "forward"
    r = _residuals(u, base, _unstack(space, mask_vec), var_w, ev_w, prior_w, forcing, targets,
                   space, settings, fwd)
    n_p = prior_rows.shape[0]
    return r * jnp.concatenate([jnp.ones((r.shape[0] - n_p,), r.dtype), prior_rows])


@eqx.filter_jit
def _sweeps(u_start, grid_u, idx, masks, S, prior_rows, base, ev_w, prior_w, forcing,
            targets, space, settings, gtol, ftol, devices=None):
    """``lax.scan`` over the steps of every sweep at once; each step a vmapped LM refit per
    sweep, warm-started from the sweep's last finite point; with several ``devices`` the
    sweeps are split over them (``shard_map``)."""

    def fit_one(u_prev, g, i, mask_vec, S_b, rows):
        u0 = u_prev.at[i].set(g)

        def res(u):
            return _objective_residuals(u, base, mask_vec, rows, ev_w, prior_w, forcing,
                                        targets, space, settings)

        u, trace, grad, it, _ = _levenberg_marquardt(res, u0, S_b, settings)
        loss = trace[-1]
        # The trace repeats the final cost after an early stop; with few iterations a
        # 10-iteration window would reach back to the start, so the last 3 count.
        tail = trace[-3:]
        scale = 1.0 + jnp.abs(loss)
        conv = (jnp.linalg.norm(grad) <= gtol * scale) & \
            (jnp.max(tail) - jnp.min(tail) <= ftol * scale)
        free = jnp.sum(S_b, axis=1) > 0
        at_bound = jnp.any(free & (jnp.abs(u) >= AT_BOUND_U))
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(u))
        # at_bound: converged with a refitted parameter at its physical bound (its
        # saturated coordinate has no gradient); not converged wins over at_bound.
        code = jnp.where(conv, jnp.where(at_bound, 2, 0), 1)
        code = jnp.where(finite, code, 3)
        return u, jnp.where(finite, loss, jnp.nan), code, it

    def run(u_start, grid_u, idx, masks, S, prior_rows):
        def step(u_prev, g):
            u, loss, code, it = jax.vmap(fit_one)(u_prev, g, idx, masks, S, prior_rows)
            u_next = jnp.where((code < 3)[:, None], u, u_prev)
            return u_next, (loss, code, it)

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
    settings = _Settings.of(setup.cfg)
    u = _stack(space, space.to_unconstrained(setup.params))
    F = jnp.asarray([n in setup.free for n in setup.names])
    n_p = len(setup.names)
    r = _objective_residuals(u, setup.params, F, jnp.ones((n_p,), u.dtype),
                             jnp.asarray(1.0 if setup.events else 0.0, u.dtype),
                             jnp.asarray(setup.cfg.prior_weight, u.dtype), setup.forcing,
                             setup.targets, space, settings)
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
    cfg = dataclasses.replace(cfg, lm_steps=int(lm_steps or PROFILE_LM_STEPS))
    dtype = setup.params.dtype
    spans = spans or {}
    gtol = cfg.gtol if gtol is None else gtol
    ftol = cfg.ftol if ftol is None else ftol
    width = max(len(setup.free), 1)
    grids, sweeps_u, idx, masks, Ss, rows = [], [], [], [], [], []
    u_opt = np.asarray(_stack(space, space.to_unconstrained(setup.params)))
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
    ev_w = jnp.asarray(1.0 if setup.events else 0.0, dtype)
    devices = tuple(jax.devices() if devices is None else devices)
    devices = devices if len(devices) > 1 and B % len(devices) == 0 else None
    loss, code, it = _sweeps(u_start, grid_u, jnp.asarray(idx), jnp.asarray(np.stack(masks)),
                             jnp.asarray(np.stack(Ss), dtype),
                             jnp.asarray(np.stack(rows), dtype), setup.params, ev_w,
                             jnp.asarray(cfg.prior_weight, dtype), setup.forcing,
                             setup.targets, space, _Settings.of(cfg), gtol, ftol, devices)
    loss, code, it = np.asarray(loss), np.asarray(code), np.asarray(it)
    s, _, _ = _data_scale(setup) if scale else (1.0, None, None)
    out = []
    for k, n in enumerate(names):
        lo_s, hi_s = 2 * k, 2 * k + 1
        # Down sweep reversed (ascending x) + up sweep without its first point (the centre).
        L = np.concatenate([loss[::-1, lo_s], loss[1:, hi_s]])
        C = np.concatenate([code[::-1, lo_s], code[1:, hi_s]])
        N = np.concatenate([it[::-1, lo_s], it[1:, hi_s]])
        m = grids[k].size // 2
        # The centre was fitted by both sweeps (same start, same point): keep the lower.
        if np.isfinite(loss[0, hi_s]) and not loss[0, hi_s] >= L[m]:
            L[m], C[m], N[m] = loss[0, hi_s], code[0, hi_s], it[0, hi_s]
        usable = C < 3
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
def _point_residuals(v, u_base, cols, mask, rows, ev_w, prior_w, base, forcing, targets,
                     space, settings):
    u = u_base.at[cols].set(v)
    return _objective_residuals(u, base, mask, rows, ev_w, prior_w, forcing, targets, space,
                                settings)


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
    args = (_stack(space, space.to_unconstrained(p)), jnp.asarray(np.flatnonzero(free)),
            jnp.asarray(mask), jnp.asarray(pr, dtype),
            jnp.asarray(1.0 if setup.events else 0.0, dtype),
            jnp.asarray(setup.cfg.prior_weight, dtype), setup.params, setup.forcing,
            setup.targets, space, _Settings.of(setup.cfg))

    def fn(v):
        return np.asarray(_point_residuals(jnp.asarray(v, dtype), *args))

    v0 = np.asarray(_stack(space, space.to_unconstrained(space.prior_values(dtype))))[free]
    return fn, v0


def setup_from_calibration(cal) -> ProfileSetup:
    """The :class:`ProfileSetup` of a finished ``calibrate_site`` (its estimate, training
    targets, calibrated set and whether its objective held the event constraints)."""
    from ..fit._site import fitted_names, training_targets

    run = [(st, res) for st, res in zip(cal.config.stages, cal.stages) if res.skipped is None]
    free = fitted_names(cal.stages)
    events = any(st.events for st, _ in run)
    targets = training_targets(cal.observations, cal.forcing, cal.holdout_years,
                               cal.params.dtype)
    return ProfileSetup(cal.space, cal.params, cal.forcing, targets, tuple(free), cal.config,
                        events)


def plot_profiles(profiles, path, title: str = ""):
    """Deviance against the parameter per profile: the 3.84 line (chi2_1, 95%), the
    estimate, the interval's ends (dashed where open) and the failed points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(profiles)
    fig, axes = plt.subplots(1, n, squeeze=False, figsize=(4.2 * n, 3.4))
    for ax, p in zip(axes[0], profiles):
        ok = p.status < 3
        ax.plot(p.x[ok], p.deviance[ok], "o-", ms=3, color="C0", label="profile")
        for code, mark, label in ((1, "s", "not converged"),
                                  (2, "^", "converged, a refitted parameter at its bound")):
            sel = p.status == code
            if sel.any():
                ax.plot(p.x[sel], p.deviance[sel], mark, ms=5, mfc="none",
                        color="C1" if code == 1 else "C4", label=label)
        if (~ok).any():
            top = np.nanmax(p.deviance) if np.isfinite(p.deviance).any() else CHI2_95
            ax.plot(p.x[~ok], np.full(int(np.sum(~ok)), top), "x", color="C3",
                    label="failed")
        ax.axhline(CHI2_95, color="k", lw=0.8, ls=":", label="3.84 (95%, chi2_1)")
        ax.axvline(p.estimate, color="C2", lw=1.0, label=f"estimate {p.estimate:.4g}")
        for end, is_open in ((p.ci[0], p.open_lower), (p.ci[1], p.open_upper)):
            if np.isfinite(end):
                ax.axvline(end, color="C3", lw=0.9, ls="--" if is_open else "-")
        ax.set_xlabel(f"{p.name} [{p.units}]", fontsize=9)
        ax.set_ylabel("deviance 2 (L - L_min) / s (dimensionless)", fontsize=8)
        flat = " (flat)" if p.flat else ""
        ax.set_title(f"{p.name}: 95% [{p.ci[0]:.4g}, {p.ci[1]:.4g}]{flat}", fontsize=9)
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PROFILE_SCHEMA = {
    "profile.csv": "parameter, value (physical units), loss (0.5 |r|^2 of the refit), "
    "deviance (2 (loss - loss_min) / deviance_scale), status (ok, not_converged, at_bound, "
    "failed), lm_iterations, is_estimate (the grid centre)",
    "profile.json": "settings, and per parameter: estimate, profile_minimum_at, loss_min, "
    "deviance_scale (max(1, chi2/dof)), CI_95_LR [lo, hi] (an open side gives the grid end), "
    "open_lower, open_upper, flat, max_deviance, grid, points, status counts, "
    "failed_points (grid indices), refitted (the parameters refitted at each point)",
}


def write_profile(profiles, folder, settings: dict, title: str = "") -> list[str]:
    """profile.csv, profile.json and profile.png into ``folder``; returns the file names."""
    import json
    from pathlib import Path

    import pandas as pd

    from ..report._calibration import _num

    folder = Path(folder)
    rows = []
    for p in profiles:
        m = p.x.size // 2
        for i in range(p.x.size):
            rows.append({"parameter": p.name, "value": float(p.x[i]),
                         "loss": float(p.loss[i]), "deviance": float(p.deviance[i]),
                         "status": POINT_STATUS[int(p.status[i])],
                         "lm_iterations": int(p.n_iter[i]), "is_estimate": i == m})
    pd.DataFrame(rows).to_csv(folder / "profile.csv", index=False, float_format="%.10g")
    doc = {"settings": settings, "chi2_1_95": CHI2_95, "schema": PROFILE_SCHEMA,
           "profiles": [p.summary() for p in profiles]}
    (folder / "profile.json").write_text(json.dumps(_num(doc), indent=2))
    plot_profiles(profiles, folder / "profile.png", title)
    return ["profile.csv", "profile.json", "profile.png"]


def report_fragment(profiles) -> str:
    """A markdown section for the calibrate report (``_report.report_html`` renders it):
    one row per profile with its LR interval and flags."""
    lines = ["## Profile likelihood", "",
             "| parameter | estimate | 95% LR interval | open | flat | failed points |",
             "|---|---|---|---|---|---|"]
    for p in profiles:
        side = ", ".join(s for s, o in (("lower", p.open_lower), ("upper", p.open_upper))
                         if o) or "no"
        lines.append(f"| {p.name} | {p.estimate:.4g} | [{p.ci[0]:.4g}, {p.ci[1]:.4g}] | "
                     f"{side} | {'yes' if p.flat else 'no'} | {len(p.failed)} |")
    return "\n".join(lines + ["", "Deviance 2 (L - L_min) / max(1, chi2/dof) against "
                              "3.84 (chi2_1, 95%); an open side ends at the grid edge.", ""])
