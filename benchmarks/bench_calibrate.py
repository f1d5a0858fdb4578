"""Staged calibration: the JAX path (``calibrate_stages``) against a scipy ``least_squares`` peer.

    python benchmarks/bench_calibrate.py [--starts 1,64] [--methods tsit5,rk4]
                                         [--out benchmarks/results/calibrate_<host>.json]

Problem: the Yanhe synthetic twin (``data/synthetic/yanhe_synthetic.csv``, the noisy file),
forcing 1995-2015 from ``yanhe_synthetic.json`` (rainfall series, intensity, Grain for Green
planting from 1999), training years 1995-2010 (2011-2015 masked as the holdout, exactly as
``calibrate_site`` does), LoessPlateau priors, float64.

What is timed:

* JAX: ``calibrate_stages`` with ``CalibrationConfig(n_starts=N, method=M)`` and every other
  setting at its default (the five ``SEED_STAGES``, 150 Adam + 60 L-BFGS iterations per stage,
  rtol = atol = 1e-6 for Tsit5, 12 RK4 steps per year).  Called twice: the first call
  includes tracing and compilation ("cold"), the second is "warm".  The per-stage wall time
  comes from the ``progress`` callback.  compile_s = cold - warm.
* scipy peer: ``scipy.optimize.least_squares(method="trf")`` with its default tolerances and
  a 2-point finite-difference Jacobian, stage by stage with the same free parameters, the same
  warm-start chain (stage (a) from the prior, each later stage from the previous stage's
  result), on the same residual vector (spread-weighted data residuals of the stage's
  variables, the event constraints when the stage uses them, the prior of the free
  parameters; ``0.5 |r|^2`` is the JAX loss), over the same unconstrained coordinates (the
  bounded logit transform of ``ParamSpace``, re-implemented in numpy and checked against
  it).  The model is solved in numpy: ``regv1_jax._model.vector_field_numpy`` integrated by
  ``scipy.integrate.solve_ivp`` (RK45, rtol = atol = 1e-6 as the JAX Tsit5 path), one
  ``solve_ivp`` per calendar year (the forcings jump at year boundaries), with
  ``t_eval`` at mid-year and year end; the annual outputs (mid-year V, SOM, layers, theta;
  annual runoff and erosion) are computed in numpy as ``regv1_jax._solve.observe`` defines
  them.  One start per stage; the 64-start time of scipy is the one-start time x 64.
* A common referee: every path's final parameters are re-scored with the numpy objective at
  tight tolerances (DOP853, rtol 1e-10, atol 1e-12), so that "final loss" does not depend on
  each path's own integrator error.
* Experiment (``--lm``, on by default; not the library path): Levenberg-Marquardt on the
  library's residuals (``_calibrate._residuals``) with a ``jax.jacfwd`` Jacobian, one start,
  scipy's default tolerances, same stages and warm starts - what a Gauss-Newton JAX path costs.
* Profile of the JAX path (``--profile``, on by default): the cost of one loss, one
  loss+gradient, the number of Tsit5 steps at rtol 1e-6, and the L-BFGS line-search trial
  count (an instrumented copy of ``_calibrate._optimise`` on stage (e) from the warm start).

The JSON holds the machine, JAX devices, dtype, versions and every number; a table is printed.
It is rewritten after each phase (``"complete": false`` until the end).  On a 2-core machine
one method takes 8-11 minutes (most of it the 64-start case); run one method per call, e.g.
``--methods tsit5 --out benchmarks/results/calibrate_<host>_tsit5.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from types import SimpleNamespace

import numpy as np
from _machine import loadavg, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_CSV = ROOT / "data" / "synthetic" / "yanhe_synthetic.csv"
DATA_JSON = ROOT / "data" / "synthetic" / "yanhe_synthetic.json"
LOCATION = "Yanhe-basin-synthetic"
REGION = "LoessPlateau"
START, END, TRAIN_END = 1995, 2015, 2010


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", default="1,64", help="comma-separated n_starts (default 1,64)")
    ap.add_argument("--methods", default="tsit5,rk4", help="JAX solve methods (default tsit5,rk4)")
    ap.add_argument("--out", default=None,
                    help="JSON path (default benchmarks/results/calibrate_<host>.json)")
    ap.add_argument("--scipy", action=argparse.BooleanOptionalAction, default=True,
                    help="run the scipy least_squares peer")
    ap.add_argument("--scipy-method", default="RK45", choices=["RK45", "LSODA", "DOP853"])
    ap.add_argument("--scipy-max-nfev", type=int, default=None,
                    help="cap on least_squares max_nfev per stage (default: scipy's, 100 n)")
    ap.add_argument("--lm", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the experiment: Levenberg-Marquardt with a jacfwd Jacobian")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="profile the JAX path (loss / gradient cost, solver steps, line search)")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------
# machine / versions
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# the problem
# --------------------------------------------------------------------------------------------
def build_problem():
    """Space, prior, forcing (float64) and training targets, as ``calibrate_site`` builds them."""
    import jax.numpy as jnp

    import regv1_jax as r
    from regv1_jax.fit import make_targets
    from regv1_jax.io import load_site

    space = r.load_param_space(REGION)
    p0 = space.prior_values(jnp.float64)
    obs = load_site(DATA_CSV, LOCATION)
    meta = json.loads(DATA_JSON.read_text())
    f = meta["forcing"]
    assert meta["years"] == [START, END], meta["years"]
    forcing = r.make_forcing(START, END, f["rainfall_mm"], f["intensity_mm_min"],
                             f["psi_plant"], f["psi_eng"], dtype=jnp.float64)
    targets = make_targets(obs, forcing, dtype=jnp.float64)
    years = forcing.years
    keep = years <= TRAIN_END
    train = targets.with_mask(jnp.asarray(keep))
    return space, p0, forcing, train


# --------------------------------------------------------------------------------------------
# the numpy / scipy objective
# --------------------------------------------------------------------------------------------
class NumpyObjective:
    """The calibration objective of ``_calibrate._residuals`` in numpy, solved by solve_ivp."""

    def __init__(self, space, forcing, targets, cfg, method="RK45", rtol=1e-6, atol=1e-6):

        from regv1_jax.fit import TARGET_VARIABLES
        from regv1_jax.model import PARAM_NAMES, Layout

        self.space = space
        self.specs = {s.name: s for s in space.specs}
        self.names = PARAM_NAMES
        self.layout = Layout()
        fn = forcing.numpy()
        # Plain namespaces: vector_field_numpy only reads attributes, and attribute access on
        # an eqx.Module costs microseconds (see bench_solve.py).
        self.f = SimpleNamespace(rainfall=fn.rainfall, intensity=fn.intensity,
                                 psi_plant=fn.psi_plant, psi_eng=fn.psi_eng, index=fn.index,
                                 n_years=fn.n_years)
        self.n_years = fn.n_years
        self.variables = TARGET_VARIABLES
        self.obs = {v: np.asarray(targets.values[v], np.float64) for v in TARGET_VARIABLES}
        self.mask = {v: np.asarray(targets.masks[v]) for v in TARGET_VARIABLES}
        self.sigma = {v: float(targets.sigma[v]) for v in TARGET_VARIABLES}
        self.events = cfg.events
        self.prior_weight = cfg.prior_weight
        self.method, self.rtol, self.atol = method, rtol, atol
        self.n_solves = 0
        self.n_failed = 0

    # -- transforms (numpy copies of ParamSpace.to_unconstrained / to_constrained) ----------
    def _scale(self, spec, x):
        # The transform acts inside the physical bounds, on the transform's scale.
        if spec.transform_scale == "log":
            return math.log(spec.bound_lower), math.log(spec.bound_upper), np.log(x)
        return spec.bound_lower, spec.bound_upper, x

    def unconstrained(self, name, x):

        spec = self.specs[name]
        lo, hi, s = self._scale(spec, np.float64(x))
        eps = 10 * np.finfo(np.float64).eps
        frac = np.clip((s - lo) / (hi - lo), eps, 1 - eps)
        return float(np.log(frac) - np.log1p(-frac))

    def constrained(self, name, z):
        from scipy.special import expit

        spec = self.specs[name]
        lo, hi, _ = self._scale(spec, 1.0)
        y = lo + (hi - lo) * expit(np.float64(z))
        y = np.exp(y) if spec.transform_scale == "log" else y
        return float(np.clip(y, spec.bound_lower, spec.bound_upper))

    # -- model ------------------------------------------------------------------------------
    def simulate(self, p):
        """Annual outputs of one numpy solve; None when solve_ivp fails."""
        from scipy.integrate import solve_ivp

        from regv1_jax.model import (
            LAYER_DEPTHS_M,
            SOM_PER_C,
            initial_state,
            vector_field_numpy,
            year_drivers,
        )

        lay, f = self.layout, self.f
        self.n_solves += 1
        y = np.asarray(initial_state(p, year_drivers(p, f), lay, xp=np), dtype=np.float64)
        starts, mids, ends = [], [], []
        for k in range(self.n_years):
            def rhs(_t, yy, tau=k + 0.5):   # the forcing of year k, also at its right end
                return vector_field_numpy(tau, yy, p, f, lay)

            sol = solve_ivp(rhs, (float(k), float(k + 1)), y, method=self.method,
                            rtol=self.rtol, atol=self.atol, t_eval=[k + 0.5, k + 1.0])
            if not sol.success or not np.all(np.isfinite(sol.y)):
                self.n_failed += 1
                return None
            starts.append(y)
            mids.append(sol.y[:, 0])
            y = sol.y[:, 1]
            ends.append(y)
        starts, mids, ends = np.array(starts), np.array(mids), np.array(ends)
        d = np.asarray(LAYER_DEPTHS_M)
        C = mids[:, lay.C]
        layers = SOM_PER_C * C / (p.rho_b * d)
        som = SOM_PER_C * (C[:, 0] + C[:, 1]) / (p.rho_b * (d[0] + d[1]))
        return {
            "veg_cover_%": 100.0 * mids[:, lay.V],
            "SOM_%": som,
            "SOM_0-10_%": layers[:, 0],
            "SOM_10-20_%": layers[:, 1],
            "SOM_20-40_%": layers[:, 2],
            "runoff_mm": ends[:, lay.Q] - starts[:, lay.Q],
            "erosion_t/ha": ends[:, lay.E] - starts[:, lay.E],
            "theta_m3/m3": mids[:, lay.THETA],
        }

    def event_residuals(self, p):

        ev = self.events
        V = ev.plot_cover
        intensity = np.asarray(ev.intensity, np.float64)
        sed = (np.exp(p.c_E * V * (p.i_ref / intensity) ** p.omega_E)
               * (1.0 / (1.0 - p.b_V * V)) ** p.m_E)
        Rc_bare = p.c_R * (max(ev.intensity) / p.i_ref) ** p.omega
        infil = (1.0 - Rc_bare * (1.0 - p.b_V * V)) / (1.0 - Rc_bare) - 1.0
        w = np.asarray(ev.weight, np.float64)
        r_sed = np.sqrt(w) * (np.log(sed) - np.log(np.asarray(ev.sediment_ratio))) / ev.sigma_log
        r_inf = (infil - ev.infiltration_gain) / ev.sigma_infiltration
        return np.concatenate([r_sed, [r_inf]])

    def residuals(self, values: dict, stage):
        """The stage's residual vector at physical parameter ``values`` (a dict of floats).

        Same layout as ``_calibrate._residuals``: data (all variables, zero weight outside the
        stage), events (zero weight outside stages with events), prior (free parameters;
        frozen ones give the zeros the JAX vector holds).
        """

        p = SimpleNamespace(**values)
        sim = self.simulate(p)
        n_data = len(self.variables) * self.n_years
        n = n_data + self.events.size + len(self.names)
        if sim is None:
            return np.full(n, np.nan)
        parts = []
        for v in self.variables:
            w = 1.0 if v in stage.variables else 0.0
            m = self.mask[v]
            r = np.where(m, (sim[v] - np.where(m, self.obs[v], sim[v])) / self.sigma[v], 0.0)
            parts.append(math.sqrt(w) * r)
        parts.append((1.0 if stage.events else 0.0) * self.event_residuals(p))
        prior = np.zeros(len(self.names))
        for i, name in enumerate(self.names):
            if name in stage.free:
                spec = self.specs[name]
                x = values[name]
                s = math.log(x) if spec.scale == "log" else x
                prior[i] = (s - spec.prior_mean) / spec.prior_sd
        parts.append(math.sqrt(self.prior_weight) * prior)
        return np.concatenate(parts)

    def stage_function(self, stage, base: dict):
        """``(fun, v0)``: residuals over the stage's free unconstrained coordinates."""

        v0 = np.array([self.unconstrained(n, base[n]) for n in stage.free])

        def fun(v):
            vals = dict(base)
            for n, z in zip(stage.free, v):
                vals[n] = self.constrained(n, z)
            return self.residuals(vals, stage)

        return fun, v0

    def loss(self, values: dict, stage) -> float:

        r = self.residuals(values, stage)
        return float(0.5 * np.sum(r * r))


def check_numpy_objective(space, p0, forcing, targets, cfg):
    """The numpy objective against ``_calibrate._residuals`` (same transform, same residuals)."""
    import jax
    import jax.numpy as jnp

    from regv1_jax.fit import SEED_STAGES, _stack

    out = {}
    ref = NumpyObjective(space, forcing, targets, cfg, method="DOP853", rtol=1e-10, atol=1e-12)
    tight = type(cfg)(**{**cfg.__dict__, "rtol": 1e-10, "atol": 1e-12, "method": "tsit5"})
    key = jax.random.PRNGKey(5)
    draw = space.sample_prior(key, dtype=jnp.float64)
    # Transform round trip on a prior draw.
    u_jax = np.asarray(_stack(space, space.to_unconstrained(draw)))
    u_np = np.array([ref.unconstrained(s.name, float(getattr(draw, s.name))) for s in space.specs])
    back_jax = np.asarray(_stack(space, space.to_constrained(
        space.to_unconstrained(draw))))
    back_np = np.array([ref.constrained(s.name, z) for s, z in zip(space.specs, u_np)])
    out["transform_max_abs_diff_unconstrained"] = float(np.max(np.abs(u_jax - u_np)))
    out["transform_max_rel_diff_constrained"] = float(np.max(np.abs(back_jax - back_np)
                                                             / np.abs(back_jax)))
    from regv1_jax.fit import residual_fn

    vals = {k: float(v) for k, v in p0.as_dict().items()}
    rows = []
    for st in SEED_STAGES:
        fn, free = residual_fn(space, st, p0, forcing, targets, tight)
        r_j = np.asarray(jax.jit(fn)(free.pack(p0)))
        r_n = ref.residuals(vals, st)
        rows.append(dict(stage=st.name, loss_jax=float(0.5 * r_j @ r_j),
                         loss_numpy=float(0.5 * r_n @ r_n),
                         max_abs_residual_diff=float(np.max(np.abs(r_j - r_n)))))
    out["residuals_at_prior"] = rows
    return out


# --------------------------------------------------------------------------------------------
# the scipy peer
# --------------------------------------------------------------------------------------------
def run_scipy(space, p0, forcing, targets, cfg, method, max_nfev, jax_stage_losses=None):
    """least_squares(trf, 2-point FD Jacobian) stage by stage, warm-starting like the JAX path."""
    from scipy.optimize import least_squares

    obj = NumpyObjective(space, forcing, targets, cfg, method=method, rtol=cfg.rtol,
                         atol=cfg.atol)
    values = {k: float(v) for k, v in p0.as_dict().items()}
    stages = []
    t_all = time.perf_counter()
    c_all = time.process_time()
    for i, st in enumerate(cfg.stages):
        fun, v0 = obj.stage_function(st, values)
        hist = []  # (t, loss) of every call, FD calls included
        t0 = time.perf_counter()

        def traced(v, fun=fun, hist=hist, t0=t0):
            r = fun(v)
            hist.append((time.perf_counter() - t0, float(0.5 * np.sum(r * r))))
            return r

        n0 = obj.n_solves
        res = least_squares(traced, v0, method="trf", jac="2-point", max_nfev=max_nfev)
        dt = time.perf_counter() - t0
        new = dict(values)
        for n, z in zip(st.free, res.x):
            new[n] = obj.constrained(n, z)
        final = float(res.cost)  # 0.5 |r|^2 at res.x
        row = dict(stage=st.name, free=list(st.free), wall_s=dt,
                   initial_loss=hist[0][1], final_loss=final,
                   solves=obj.n_solves - n0, nfev=int(res.nfev),
                   njev=int(res.njev) if res.njev is not None else None,
                   status=int(res.status), message=str(res.message),
                   optimality=float(res.optimality),
                   values={n: new[n] for n in st.free}, max_nfev=max_nfev)
        if jax_stage_losses is not None:
            target = jax_stage_losses[i]
            hit = next((t for t, val in hist if val <= target * (1 + 1e-6)), None)
            row["jax_reference_loss"] = target
            row["time_to_jax_loss_s"] = hit
        stages.append(row)
        values = new
        print(f"    scipy {st.name:<17s} {dt:7.1f} s  {row['solves']:4d} solves  loss "
              f"{row['initial_loss']:.6g} -> {final:.6g}  status {res.status}", flush=True)
    return dict(method=method, rtol=cfg.rtol, atol=cfg.atol, stages=stages,
                wall_s=time.perf_counter() - t_all, cpu_s=time.process_time() - c_all,
                solves=obj.n_solves,
                failed_solves=obj.n_failed,
                final_objective=stages[-1]["final_loss"], params=values)


# --------------------------------------------------------------------------------------------
# the JAX path
# --------------------------------------------------------------------------------------------
def run_jax_once(space, p0, forcing, targets, cfg):
    import jax

    from regv1_jax.fit import calibrate_stages

    marks = []

    def progress(msg):
        marks.append((time.perf_counter(), msg))

    c0 = time.process_time()
    t0 = time.perf_counter()
    p, results = calibrate_stages(space, p0, forcing, targets, cfg, progress=progress)
    jax.block_until_ready(p)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    starts = [t for t, m in marks if m.startswith("stage ")]
    ends = [t for t, m in marks if m.startswith("  ")]
    stage_s = [e - s for s, e in zip(starts, ends)]
    return p, results, wall, cpu, stage_s


def run_jax(space, p0, forcing, targets, method, n_starts):
    from regv1_jax.fit import CalibrationConfig

    cfg = CalibrationConfig(n_starts=n_starts, method=method)
    _, _, cold, cold_cpu, cold_stage = run_jax_once(space, p0, forcing, targets, cfg)
    p, results, warm, warm_cpu, warm_stage = run_jax_once(space, p0, forcing, targets, cfg)
    stages = []
    for res, tc, tw in zip(results, cold_stage, warm_stage):
        stages.append(dict(stage=res.name, free=list(res.free), cold_s=tc, warm_s=tw,
                           initial_loss=res.initial_loss, final_loss=res.final_loss,
                           converged=res.converged, grad_norm=res.grad_norm,
                           best_start=res.best_start, n_starts=res.n_starts,
                           dropped_starts=list(res.dropped_starts),
                           iterations=res.iterations, values=res.values))
    return dict(method=method, n_starts=n_starts, cold_s=cold, warm_s=warm,
                compile_s=cold - warm, cold_cpu_s=cold_cpu, warm_cpu_s=warm_cpu,
                adam_steps=cfg.adam_steps, lbfgs_steps=cfg.lbfgs_steps, rtol=cfg.rtol,
                atol=cfg.atol, steps_per_year=cfg.steps_per_year,
                stages=stages, final_objective=results[-1].final_loss,
                params={k: float(v) for k, v in p.as_dict().items()})


# --------------------------------------------------------------------------------------------
# profile of the JAX path
# --------------------------------------------------------------------------------------------
def _best_of(fn, *args, repeats=5):
    import jax

    out = jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best, out


def _library_residuals(u, base, mask, var_w, ev_w, forcing, targets, space, cfg,
                       adjoint="checkpoint"):
    """``_calibrate._residuals`` (by default with the optimiser's checkpoint adjoint),
    whichever of its two signatures (with or without ``prior_w``) the library has."""
    import inspect

    import jax.numpy as jnp

    from regv1_jax.fit import _config as _calibrate

    f = _calibrate._residuals
    if "prior_w" in inspect.signature(f).parameters:
        return f(u, base, mask, var_w, ev_w, jnp.asarray(cfg.prior_weight, u.dtype), forcing,
                 targets, space, cfg, adjoint)
    return f(u, base, mask, var_w, ev_w, forcing, targets, space, cfg, adjoint)


def profile_jax(space, p_warm, forcing, targets, methods):
    """Where the time of one start goes: loss, gradient, solver steps, line-search trials."""
    import diffrax as dfx
    import jax
    import jax.numpy as jnp

    from regv1_jax.fit import SEED_STAGES, CalibrationConfig, _mask_tree, _stack, _weights
    from regv1_jax.model import Layout, initial_state, vector_field, year_drivers

    out = {}
    st = SEED_STAGES[-1]
    mask = _mask_tree(space, st.free)
    mask_vec = _stack(space, mask)
    var_w, ev_w = _weights(st, jnp.float64)
    u0 = _stack(space, space.to_unconstrained(p_warm))
    for method in methods:
        cfg = CalibrationConfig(n_starts=1, method=method)
        row = {}

        def loss(u, cfg=cfg):
            r = _library_residuals(u, p_warm, mask, var_w, ev_w, forcing, targets, space, cfg)
            return 0.5 * jnp.sum(r**2)

        f_loss = jax.jit(loss)
        f_vg = jax.jit(jax.value_and_grad(loss))
        f_vg64 = jax.jit(jax.vmap(jax.value_and_grad(loss)))
        t = time.perf_counter()
        f_vg.lower(u0).compile()
        row["vg_compile_s"] = time.perf_counter() - t
        row["loss_s"], _ = _best_of(f_loss, u0)
        row["value_and_grad_s"], _ = _best_of(f_vg, u0)
        u64 = u0[None] + 0.01 * jnp.where(mask_vec, jax.random.normal(
            jax.random.PRNGKey(0), (64, u0.size)), 0.0)
        row["value_and_grad_x64_vmap_s"], _ = _best_of(f_vg64, u64, repeats=2)
        row["grad_over_loss"] = row["value_and_grad_s"] / row["loss_s"]
        if method != "rk4":
            p = p_warm
            layout = Layout()
            n = forcing.n_years

            @jax.jit
            def steps(p):
                sol = dfx.diffeqsolve(
                    dfx.ODETerm(vector_field), dfx.Tsit5(), t0=0.0, t1=float(n), dt0=0.05,
                    y0=initial_state(p, year_drivers(p, forcing), layout),
                    args=(p, forcing, layout),
                    saveat=dfx.SaveAt(ts=jnp.arange(2 * n + 1) * 0.5),
                    stepsize_controller=dfx.PIDController(
                        rtol=cfg.rtol, atol=cfg.atol, jump_ts=forcing.jump_ts(jnp.float64)),
                    max_steps=16_384, throw=False)
                return sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

            acc, rej = steps(p)
            row["tsit5_accepted_steps"] = int(acc)
            row["tsit5_rejected_steps"] = int(rej)
            row["tsit5_us_per_step_forward"] = row["loss_s"] / max(int(acc) + int(rej), 1) * 1e6
        else:
            row["rk4_steps"] = cfg.steps_per_year * forcing.n_years
        row.update(_profile_optimiser(loss, u0, mask_vec, cfg))
        # Per-iteration model: Adam = 1 value_and_grad; L-BFGS = 1 value_and_grad outside
        # + (trials) linearize+transpose in the line search.
        out[method] = row
        print(f"    profile {method}: loss {row['loss_s'] * 1e3:.2f} ms, value+grad "
              f"{row['value_and_grad_s'] * 1e3:.2f} ms (64 vmapped "
              f"{row['value_and_grad_x64_vmap_s'] * 1e3:.1f} ms), adam phase "
              f"{row['adam_phase_s']:.2f} s, lbfgs phase {row['lbfgs_phase_s']:.2f} s, "
              f"line-search trials {row['linesearch_trials_total']}", flush=True)
    return out


def _profile_optimiser(loss, u0, mask_vec, cfg):
    """An instrumented copy of ``_calibrate._optimise`` (same Adam, same L-BFGS and line
    search) that runs the two phases as separate scans and counts line-search trials."""
    import jax
    import jax.numpy as jnp
    import optax

    adam = optax.adam(cfg.adam_lr)
    lbfgs = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=True))

    def vg(u):
        val, g = jax.value_and_grad(loss)(u)
        return val, jnp.where(mask_vec & jnp.isfinite(g), g, 0.0)

    @jax.jit
    def adam_phase(u):
        def step(carry, _):
            u, s = carry
            val, g = vg(u)
            upd, s = adam.update(g, s, u)
            return (optax.apply_updates(u, upd), s), val
        (u, _), trace = jax.lax.scan(step, (u, adam.init(u)), None, length=cfg.adam_steps)
        return u, trace

    @jax.jit
    def lbfgs_phase(u):
        def step(carry, _):
            u, s = carry
            val, g = vg(u)
            upd, new_s = lbfgs.update(g, s, u, value=val, grad=g, value_fn=loss)
            new_u = jnp.where(mask_vec, optax.apply_updates(u, upd), u)
            good = jnp.isfinite(val) & jnp.all(jnp.isfinite(new_u))
            u = jnp.where(good, new_u, u)
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(good, a, b), new_s, s)
            info = optax.tree_utils.tree_get(new_s, "info")
            return (u, s), (val, info.num_linesearch_steps)
        (u, _), (trace, trials) = jax.lax.scan(step, (u, lbfgs.init(u)), None,
                                               length=cfg.lbfgs_steps)
        return u, trace, trials

    t = time.perf_counter()
    ua, tr_a = jax.block_until_ready(adam_phase(u0))
    adam_cold = time.perf_counter() - t
    t = time.perf_counter()
    ua, tr_a = jax.block_until_ready(adam_phase(u0))
    adam_s = time.perf_counter() - t
    t = time.perf_counter()
    ul, tr_l, trials = jax.block_until_ready(lbfgs_phase(ua))
    lbfgs_cold = time.perf_counter() - t
    t = time.perf_counter()
    ul, tr_l, trials = jax.block_until_ready(lbfgs_phase(ua))
    lbfgs_s = time.perf_counter() - t

    trials = np.asarray(trials)
    return dict(adam_phase_s=adam_s, adam_phase_compile_s=adam_cold - adam_s,
                adam_s_per_iter=adam_s / cfg.adam_steps,
                lbfgs_phase_s=lbfgs_s, lbfgs_phase_compile_s=lbfgs_cold - lbfgs_s,
                lbfgs_s_per_iter=lbfgs_s / cfg.lbfgs_steps,
                linesearch_trials_total=int(trials.sum()),
                linesearch_trials_per_iter=trials.tolist(),
                adam_loss_first_last=[float(tr_a[0]), float(tr_a[-1])],
                lbfgs_loss_first_last=[float(tr_l[0]), float(tr_l[-1])],
                lbfgs_loss_trace=np.asarray(tr_l).tolist(),
                adam_loss_trace=np.asarray(tr_a)[::10].tolist())


# --------------------------------------------------------------------------------------------
# experiment: Levenberg-Marquardt on the JAX residuals (forward-mode Jacobian)
# --------------------------------------------------------------------------------------------
def make_lm(space, forcing, targets, method):
    """A jitted ``(J, r)`` of the stage residuals over a fixed 12-column coordinate block.

    ``u = u_start + S v`` with ``S`` a 39 x K selection matrix (padded columns are zero), so
    that every stage shares one compiled function: stages differ only in data (masks,
    weights, S).  The Jacobian is ``jax.jacfwd`` (forward mode: diffrax ``ForwardMode``
    adjoint for Tsit5, plain JVP through the RK4 scan), i.e. K tangent solves in one pass.
    """
    import jax

    from regv1_jax.fit import CalibrationConfig

    cfg = CalibrationConfig(method=method)
    adjoint = "checkpoint" if method == "rk4" else "forward"

    def res(v, u_start, S, base, mask, var_w, ev_w):
        u = u_start + S @ v
        return _library_residuals(u, base, mask, var_w, ev_w, forcing, targets, space, cfg,
                                  adjoint)

    def jac_res(v, *data):
        return jax.jacfwd(lambda w: (res(w, *data),) * 2, has_aux=True)(v)

    return jax.jit(jac_res), cfg


def run_lm(space, p0, forcing, targets, method, K=12, max_evals=100, ftol=1e-8, xtol=1e-8,
           gtol=1e-8, jac_res=None):
    """Levenberg-Marquardt (Marquardt scaling, scipy's default tolerances) stage by stage,
    warm-starting like the JAX and scipy paths.  One ``jac_res`` call per trial point."""
    import jax.numpy as jnp

    from regv1_jax.fit import SEED_STAGES, _mask_tree, _stack, _weights

    if jac_res is None:
        jac_res, _ = make_lm(space, forcing, targets, method)
    names = [s.name for s in space.specs]
    base = p0
    stages = []
    t_all = time.perf_counter()
    for st in SEED_STAGES:
        t0 = time.perf_counter()
        mask = _mask_tree(space, st.free)
        var_w, ev_w = _weights(st, jnp.float64)
        u_start = _stack(space, space.to_unconstrained(base))
        S = np.zeros((len(names), K))
        for j, n in enumerate(st.free):
            S[names.index(n), j] = 1.0
        data = (u_start, jnp.asarray(S), base, mask, var_w, ev_w)
        k = len(st.free)

        def call(v, data=data):
            J, r = jac_res(jnp.asarray(v), *data)
            return np.asarray(J)[:, :k], np.asarray(r)

        v = np.zeros(K)
        J, r = call(v)
        cost = 0.5 * float(r @ r)
        initial = cost
        lam, evals, status = None, 1, "max_evals"
        while evals < max_evals:
            g = J.T @ r
            if np.max(np.abs(g)) < gtol:
                status = "gtol"
                break
            A = J.T @ J
            d = np.diag(A).copy()
            d[d <= 0] = 1.0
            lam = 1e-3 * float(np.max(d)) if lam is None else lam
            step = np.linalg.solve(A + lam * np.diag(d), -g)
            v_new = v.copy()
            v_new[:k] += step
            J_new, r_new = call(v_new)
            evals += 1
            new_cost = 0.5 * float(r_new @ r_new) if np.all(np.isfinite(r_new)) else np.inf
            if new_cost < cost:
                small_f = cost - new_cost <= ftol * cost
                small_x = np.linalg.norm(step) <= xtol * (xtol + np.linalg.norm(v[:k]))
                v, J, r, cost = v_new, J_new, r_new, new_cost
                lam = max(lam / 3.0, 1e-12)
                if small_f or small_x:
                    status = "ftol" if small_f else "xtol"
                    break
            else:
                lam *= 4.0
        u = np.asarray(u_start) + S @ v
        full = space.to_constrained(_unstack_np(space, u))
        values = {n: float(getattr(full, n)) for n in st.free}
        base = base.replace(**values)
        stages.append(dict(stage=st.name, free=list(st.free), wall_s=time.perf_counter() - t0,
                           initial_loss=initial, final_loss=cost, evals=evals, status=status,
                           values=values))
    return dict(method=method, wall_s=time.perf_counter() - t_all, stages=stages,
                final_objective=stages[-1]["final_loss"],
                params={k: float(v) for k, v in base.as_dict().items()})


def _unstack_np(space, u):
    import jax.numpy as jnp

    from regv1_jax.model import Params

    return Params(**{s.name: jnp.asarray(u[i]) for i, s in enumerate(space.specs)})


def run_lm_timed(space, p0, forcing, targets, method):
    """Cold (compile + run) and warm runs of the LM experiment."""
    t = time.perf_counter()
    jac_res, _ = make_lm(space, forcing, targets, method)
    run_lm(space, p0, forcing, targets, method, jac_res=jac_res)
    cold_s = time.perf_counter() - t
    warm = run_lm(space, p0, forcing, targets, method, jac_res=jac_res)
    warm["cold_s"] = cold_s
    warm["warm_s"] = warm["wall_s"]
    warm["compile_s"] = cold_s - warm["wall_s"]
    warm["note"] = ("experiment, not the library path: Levenberg-Marquardt with a jacfwd "
                    "Jacobian of the library's residuals, one start, scipy's default ftol/"
                    "xtol/gtol (1e-8), at most 100 Jacobian evaluations per stage")
    return warm


# --------------------------------------------------------------------------------------------
# referee: every path's parameters scored by one tight numpy solve
# --------------------------------------------------------------------------------------------
def referee(space, p0, forcing, targets, cfg, chains: dict):
    """Stage-by-stage losses of each path's own chain, and the joint (stage e) objective at
    its final parameters, under DOP853 rtol 1e-10 / atol 1e-12."""
    ref = NumpyObjective(space, forcing, targets, cfg, method="DOP853", rtol=1e-10, atol=1e-12)
    base = {k: float(v) for k, v in p0.as_dict().items()}
    out = {}
    for name, stage_values in chains.items():
        vals = dict(base)
        losses = []
        for st, sv in zip(cfg.stages, stage_values):
            vals = {**vals, **sv}
            losses.append(ref.loss(vals, st))
        out[name] = dict(stage_losses=losses, final_objective=losses[-1])
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def fmt_s(x):
    return "-" if x is None else (f"{x:8.1f}" if x >= 10 else f"{x:8.2f}")


def run(args, save=None):
    """Every case; ``save(result)`` is called after each phase (partial results survive)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from regv1_jax.fit import CalibrationConfig

    starts = [int(s) for s in args.starts.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    space, p0, forcing, targets = build_problem()
    cfg = CalibrationConfig()
    devices = jax.devices()
    result = dict(
        benchmark="staged calibration, Yanhe synthetic twin (noisy), training 1995-2010 "
                  "(2011-2015 masked), forcing 1995-2015, LoessPlateau priors",
        dtype="float64",
        **run_header(),
        observations=targets.count(),
        config=dict(stages=[dict(name=s.name, free=list(s.free), variables=list(s.variables),
                                 events=s.events) for s in cfg.stages],
                    adam_steps=cfg.adam_steps, adam_lr=cfg.adam_lr,
                    lbfgs_steps=cfg.lbfgs_steps, rtol=cfg.rtol, atol=cfg.atol,
                    steps_per_year=cfg.steps_per_year, prior_weight=cfg.prior_weight),
    )
    m = result["machine"]
    print(f"# {m['cpu_model']}, {m['cpu_count']} cores, jax {result['versions']['jax']} on "
          f"{result['jax_backend']} ({len(devices)} device(s)), float64, load "
          f"{result['loadavg_start']}", flush=True)

    print("  checking the numpy objective against _calibrate._residuals ...", flush=True)
    result["numpy_objective_check"] = check_numpy_objective(space, p0, forcing, targets, cfg)
    chk = result["numpy_objective_check"]
    print(f"    transform diff {chk['transform_max_abs_diff_unconstrained']:.1e}, max residual "
          f"diff at prior {max(r['max_abs_residual_diff'] for r in chk['residuals_at_prior']):.1e}",
          flush=True)

    jax_runs = []
    for method in methods:
        for n in starts:
            print(f"  JAX {method} n_starts={n} ...", flush=True)
            row = run_jax(space, p0, forcing, targets, method, n)
            jax_runs.append(row)
            print(f"    cold {row['cold_s']:.1f} s, warm {row['warm_s']:.1f} s, final "
                  f"{row['final_objective']:.6g}; stages "
                  + ", ".join(f"{s['final_loss']:.5g}" for s in row["stages"]), flush=True)
    result["jax"] = jax_runs
    if save:
        save(result)

    ref1 = next((r for r in jax_runs if r["n_starts"] == 1), jax_runs[0] if jax_runs else None)
    if args.scipy:
        print(f"  scipy least_squares(trf, 2-point) + solve_ivp({args.scipy_method}) ...",
              flush=True)
        sc = run_scipy(space, p0, forcing, targets, cfg, args.scipy_method, args.scipy_max_nfev,
                       [s["final_loss"] for s in ref1["stages"]] if ref1 else None)
        result["scipy"] = sc
        if save:
            save(result)
        print(f"    total {sc['wall_s']:.1f} s, {sc['solves']} solves, final "
              f"{sc['final_objective']:.6g}", flush=True)

    lm_runs = []
    if args.lm:
        for method in methods:
            print(f"  experiment: JAX Levenberg-Marquardt (jacfwd) {method} ...", flush=True)
            lm = run_lm_timed(space, p0, forcing, targets, method)
            lm_runs.append(lm)
            print(f"    cold {lm['cold_s']:.1f} s, warm {lm['warm_s']:.2f} s, final "
                  f"{lm['final_objective']:.6g}; Jacobians per stage "
                  + ", ".join(str(s["evals"]) for s in lm["stages"]), flush=True)
    result["jax_lm_experiment"] = lm_runs
    if save:
        save(result)

    chains = {f"jax_{r['method']}_x{r['n_starts']}": [s["values"] for s in r["stages"]]
              for r in jax_runs}
    for lm in lm_runs:
        chains[f"lm_{lm['method']}_x1"] = [s["values"] for s in lm["stages"]]
    if args.scipy:
        chains[f"scipy_{args.scipy_method}"] = [s["values"] for s in result["scipy"]["stages"]]
    result["referee"] = dict(solver="numpy solve_ivp DOP853 rtol 1e-10 atol 1e-12",
                             scores=referee(space, p0, forcing, targets, cfg, chains))

    if args.profile and ref1 is not None:
        print(f"  profiling the JAX path (stage e, warm start from jax_{ref1['method']}_x1) ...",
              flush=True)
        # Warm start of stage (e) = the parameters after stage (d) of a one-start run.
        vals = {k: float(v) for k, v in p0.as_dict().items()}
        for s in ref1["stages"][:-1]:
            vals.update(s["values"])
        from regv1_jax.model import Params

        p_warm = Params.from_dict(vals, dtype=jnp.float64)
        result["profile"] = profile_jax(space, p_warm, forcing, targets, methods)

    # ---- summary ---------------------------------------------------------------------------
    summary = []
    sc = result.get("scipy")
    sc_ref = result["referee"]["scores"].get(f"scipy_{args.scipy_method}") if sc else None
    for r in jax_runs:
        key = f"jax_{r['method']}_x{r['n_starts']}"
        ref = result["referee"]["scores"][key]
        row = dict(path=key, method=r["method"], n_starts=r["n_starts"], cold_s=r["cold_s"],
                   warm_s=r["warm_s"], compile_s=r["compile_s"],
                   final_objective=r["final_objective"],
                   final_objective_referee=ref["final_objective"])
        if sc:
            scipy_s = sc["wall_s"] * r["n_starts"]
            row.update(scipy_s=scipy_s, scipy_scaled=r["n_starts"] > 1,
                       speedup_warm=scipy_s / r["warm_s"], speedup_cold=scipy_s / r["cold_s"],
                       loss_minus_scipy_referee=ref["final_objective"]
                       - sc_ref["final_objective"])
        summary.append(row)
    for lm in lm_runs:
        key = f"lm_{lm['method']}_x1"
        ref = result["referee"]["scores"][key]
        row = dict(path=key, method=lm["method"], n_starts=1, cold_s=lm["cold_s"],
                   warm_s=lm["warm_s"], compile_s=lm["compile_s"],
                   final_objective=lm["final_objective"],
                   final_objective_referee=ref["final_objective"], experiment=True)
        if sc:
            row.update(scipy_s=sc["wall_s"], scipy_scaled=False,
                       speedup_warm=sc["wall_s"] / lm["warm_s"],
                       speedup_cold=sc["wall_s"] / lm["cold_s"],
                       loss_minus_scipy_referee=ref["final_objective"]
                       - sc_ref["final_objective"])
        summary.append(row)
    result["summary"] = summary

    goal = dict(text="JAX path >= 20x faster than scipy on 2 CPU cores and no worse in final "
                     "loss; 64 starts vmapped within 3x of one start")
    for method in methods:
        lib = [r for r in summary if not r.get("experiment")]
        one = next((r for r in lib if r["method"] == method and r["n_starts"] == 1), None)
        many = next((r for r in lib if r["method"] == method and r["n_starts"] == 64), None)
        g = {}
        if one and sc:
            g["speedup_warm_1start"] = one["speedup_warm"]
            g["speedup_cold_1start"] = one["speedup_cold"]
            g["speedup_20x_warm_met"] = one["speedup_warm"] >= 20
            g["speedup_20x_cold_met"] = one["speedup_cold"] >= 20
            g["loss_no_worse_met"] = one["loss_minus_scipy_referee"] <= 1e-6 * (
                1 + abs(sc_ref["final_objective"]))
        if one and many:
            g["x64_over_x1_warm"] = many["warm_s"] / one["warm_s"]
            g["x64_over_x1_cold"] = many["cold_s"] / one["cold_s"]
            g["x64_within_3x_met"] = many["warm_s"] <= 3 * one["warm_s"]
        goal[method] = g
    result["goal"] = goal
    result["loadavg_end"] = loadavg()
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    # ---- table -------------------------------------------------------------------------------
    print()
    print(f"{'path':<18s} {'cold s':>8s} {'warm s':>8s} {'compile':>8s} {'scipy s':>8s} "
          f"{'x warm':>7s} {'x cold':>7s} {'objective':>13s} {'referee':>13s}")
    for r in summary:
        print(f"{r['path']:<18s} {fmt_s(r['cold_s'])} {fmt_s(r['warm_s'])} "
              f"{fmt_s(r['compile_s'])} {fmt_s(r.get('scipy_s'))} "
              f"{r.get('speedup_warm', math.nan):7.2f} {r.get('speedup_cold', math.nan):7.2f} "
              f"{r['final_objective']:13.9g} {r['final_objective_referee']:13.9g}")
    if sc:
        print(f"{'scipy_' + args.scipy_method:<18s} {'':>8s} {fmt_s(sc['wall_s'])} {'':>8s} "
              f"{'':>8s} {'':>7s} {'':>7s} {sc['final_objective']:13.9g} "
              f"{sc_ref['final_objective']:13.9g}")
    print()
    names = [s.name for s in cfg.stages]
    print("per-stage final loss (own integrator) / referee:")
    print(f"{'path':<18s} " + " ".join(f"{n[:16]:>25s}" for n in names))
    for key, sco in result["referee"]["scores"].items():
        own = None
        for r in jax_runs:
            if key == f"jax_{r['method']}_x{r['n_starts']}":
                own = [s["final_loss"] for s in r["stages"]]
        for lm in lm_runs:
            if key == f"lm_{lm['method']}_x1":
                own = [s["final_loss"] for s in lm["stages"]]
        if own is None and sc:
            own = [s["final_loss"] for s in sc["stages"]]
        print(f"{key:<18s} " + " ".join(f"{a:11.8g} /{b:11.8g}"
                                         for a, b in zip(own, sco["stage_losses"])))
    print()
    print("goal:", json.dumps({k: v for k, v in goal.items() if k != "text"}))
    return result


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out) if args.out else HERE / "results" / (
        f"calibrate_{socket.gethostname()}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(result, final=False):
        result = dict(result, complete=final)
        out.write_text(json.dumps(result, indent=1, default=float))

    result = run(args, save)
    save(result, final=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
