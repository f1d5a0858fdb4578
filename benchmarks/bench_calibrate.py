"""Staged calibration: the JAX path (``calibrate_stages``) against a scipy ``least_squares`` peer.

    python benchmarks/bench_calibrate.py [--starts 1,8,64] [--methods tsit5,rk4]
        [--scipy-method RK45] [--scipy-max-nfev N] [--scipy-starts K] [--no-profile]
        [--quick] [--out [benchmarks/results/calibrate_<host>.json]]

Problem: the Yanhe synthetic twin (``data/synthetic/yanhe_synthetic.csv``, the noisy file),
forcing 1995-2015 from ``yanhe_synthetic.json`` (rainfall series, intensity, Grain for Green
planting from 1999), training years 1995-2010 (2011-2015 held out: spreads from the training
cells, holdout cells masked, by ``fit.training_targets`` as ``calibrate_site`` does),
LoessPlateau priors, the prior values as the start (V0, SOM0 included), float64.

What is timed:

* JAX: ``calibrate_stages`` with ``CalibrationConfig(n_starts=N, method=M)`` and every other
  setting at its default: the five ``SEED_STAGES``, Levenberg-Marquardt
  (``fit.LevenbergMarquardt``, forward-mode Jacobian, at most ``lm_steps=40`` trial points
  per start, no Adam warm-up), Tsit5 at rtol = atol = 1e-6 or RK4 with 12 steps per year;
  the library default is ``n_starts=8`` (the warm start plus 7 prior draws per stage, run
  under ``vmap``).  The whole staged fit is one compiled call.  It is called twice: the
  first call includes tracing and compilation ("cold"), the second is "warm";
  compile_s = cold - warm.
* scipy peer (``scipy_peer.py``): ``scipy.optimize.least_squares(method="trf")`` with its
  default tolerances and a 2-point finite-difference Jacobian, stage by stage with the same
  free parameters and the same warm-start chain (stage (a) from the start values, each later
  stage from the previous stage's result), on the same residual vector as
  ``fit.Objective.residuals`` (spread-weighted data residuals of the stage's variables, the
  event constraints where the stage uses them, the prior of the free parameters;
  ``0.5 |r|^2`` is the JAX loss), over the same unconstrained coordinates (the bounded logit
  transform of ``ParamSpace`` in numpy).  The model is ``regv1_jax.model.vector_field_numpy``
  integrated by ``scipy.integrate.solve_ivp`` (RK45, rtol = atol = 1e-6 as the JAX Tsit5
  path), one ``solve_ivp`` per calendar year (the forcings jump at year boundaries).  Before
  anything is timed, ``scipy_peer.check_objective`` asserts that the numpy residuals equal
  ``Objective.residuals`` at tight tolerances for every stage.  The peer runs one start per
  stage; the N-start scipy time is the one-start time x N (scipy has no vmap), not a run.
  ``--scipy-starts K`` also runs the peer with K starts in stage (a) (the library's draws).
* A common referee: every path's final parameters are re-scored with the numpy objective at
  tight tolerances (DOP853, rtol 1e-10, atol 1e-12), stage by stage along each path's own
  chain, so that "final loss" does not depend on each path's own integrator error.
* Profile of the JAX path (``--profile``, on by default; public API only): on stage (e) at
  the warm start a one-start run gives it, the time of one ``Objective.loss``, one
  ``jax.value_and_grad`` of ``Objective.for_gradient().loss``, one full ``jax.jacfwd`` of
  ``Objective.for_jacobian().residuals`` and one ``jacfwd`` over the 12 columns that
  Levenberg-Marquardt differentiates (``LevenbergMarquardt.selection``).

The JSON (written only with ``--out``; rewritten after each phase, ``"complete": false``
until the end) holds the machine, JAX devices, versions (``_machine.run_header``) and every
number; a table is printed.  ``--quick`` (a check of the script, not a benchmark: ``max_nfev=3`` per
stage for scipy, i.e. at most 3 trust-region steps, and no profile) runs in about two minutes
per method on 2 cores.
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
from _machine import loadavg, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_CSV = ROOT / "data" / "synthetic" / "yanhe_synthetic.csv"
DATA_JSON = ROOT / "data" / "synthetic" / "yanhe_synthetic.json"
LOCATION = "Yanhe-basin-synthetic"
REGION = "LoessPlateau"
START, END, TRAIN_END = 1995, 2015, 2010
REFEREE = dict(method="DOP853", rtol=1e-10, atol=1e-12)
DEFAULT_OUT = HERE / "results" / f"calibrate_{socket.gethostname()}.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--starts", default="1,8,64",
                    help="comma-separated n_starts of the JAX path (default 1,8,64)")
    ap.add_argument("--methods", default="tsit5,rk4", help="JAX solve methods (default tsit5,rk4)")
    ap.add_argument("--out", nargs="?", const=str(DEFAULT_OUT), default=None,
                    help="write the JSON (to this path; without a path: "
                         "benchmarks/results/calibrate_<host>.json); default: no file")
    ap.add_argument("--scipy", action=argparse.BooleanOptionalAction, default=True,
                    help="run the scipy least_squares peer")
    ap.add_argument("--scipy-method", default="RK45", choices=["RK45", "LSODA", "DOP853"])
    ap.add_argument("--scipy-max-nfev", type=int, default=None,
                    help="cap on least_squares max_nfev per stage (default: scipy's, 100 n)")
    ap.add_argument("--scipy-starts", type=int, default=1,
                    help="also run the peer with this many starts in stage (a) (the "
                         "library's prior draws; default 1: not run)")
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                    help="profile the JAX path (loss, gradient and Jacobian cost)")
    ap.add_argument("--quick", action="store_true",
                    help="check the script: --scipy-max-nfev 3 (unless given), --no-profile")
    args = ap.parse_args(argv)
    if args.quick:
        args.profile = False
        if args.scipy_max_nfev is None:
            args.scipy_max_nfev = 3
    return args


# --------------------------------------------------------------------------------------------
# the problem
# --------------------------------------------------------------------------------------------
def build_problem():
    """Space, start (the prior values), forcing (float64) and training targets, as
    ``calibrate_site`` builds them (spreads from the training cells, holdout masked)."""
    import jax.numpy as jnp

    import regv1_jax as r
    from regv1_jax.fit import training_targets
    from regv1_jax.io import load_site

    space = r.load_param_space(REGION)
    p0 = space.prior_values(jnp.float64)
    obs = load_site(DATA_CSV, LOCATION)
    meta = json.loads(DATA_JSON.read_text())
    f = meta["forcing"]
    assert meta["years"] == [START, END], meta["years"]
    forcing = r.make_forcing(START, END, f["rainfall_mm"], f["intensity_mm_min"],
                             f["psi_plant"], f["psi_eng"], dtype=jnp.float64)
    train = training_targets(obs, forcing, (TRAIN_END + 1, END), dtype=jnp.float64)
    return space, p0, forcing, train


def _floats(params) -> dict:
    return {k: float(v) for k, v in params.as_dict().items()}


# --------------------------------------------------------------------------------------------
# the JAX path
# --------------------------------------------------------------------------------------------
def run_jax_once(space, p0, forcing, targets, cfg):
    import jax

    from regv1_jax.fit import calibrate_stages

    c0, t0 = time.process_time(), time.perf_counter()
    p, results = calibrate_stages(space, p0, forcing, targets, cfg)
    jax.block_until_ready(p)
    return p, results, time.perf_counter() - t0, time.process_time() - c0


def run_jax(space, p0, forcing, targets, method, n_starts):
    from regv1_jax.fit import CalibrationConfig

    cfg = CalibrationConfig(n_starts=n_starts, method=method)
    _, _, cold, cold_cpu = run_jax_once(space, p0, forcing, targets, cfg)
    p, results, warm, warm_cpu = run_jax_once(space, p0, forcing, targets, cfg)
    keys = ("name", "free", "status", "initial_loss", "final_loss", "iterations", "converged",
            "grad_norm", "best_start", "n_starts", "dropped_starts", "fitted", "held", "kept",
            "at_bound", "values")
    stages = [{k: getattr(res, k) for k in keys} for res in results]
    return dict(method=method, n_starts=n_starts, cold_s=cold, warm_s=warm,
                compile_s=cold - warm, cold_cpu_s=cold_cpu, warm_cpu_s=warm_cpu,
                optimizer=cfg.optimizer, lm_steps=cfg.lm_steps, adam_steps=cfg.adam_steps,
                rtol=cfg.rtol, atol=cfg.atol, steps_per_year=cfg.steps_per_year,
                stages=stages, final_objective=results[-1].final_loss, params=_floats(p))


# --------------------------------------------------------------------------------------------
# profile of the JAX path (public API only)
# --------------------------------------------------------------------------------------------
def _timed(fn, *args, repeats=5):
    """(first call incl. compile, best of ``repeats`` warm calls)."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return first, best


def profile_jax(space, p_warm, forcing, targets, methods):
    """Cost of one loss, one loss + gradient and one Jacobian of stage (e) at ``p_warm``."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from regv1_jax.fit import (
        CalibrationConfig,
        LevenbergMarquardt,
        Objective,
        variable_weights,
    )

    f64 = jnp.float64
    out = {}
    for method in methods:
        cfg = CalibrationConfig(method=method)
        st = cfg.stages[-1]
        mask = space.mask(st.free)
        obj = Objective(p_warm, mask, variable_weights(st.variables, f64),
                        jnp.asarray(1.0 if st.events else 0.0, f64),
                        jnp.asarray(cfg.prior_weight, f64), forcing, targets, space,
                        cfg.make_solver(), cfg.events)
        u0 = space.vector_to_unconstrained(space.stack(p_warm))
        lm = LevenbergMarquardt(max_steps=cfg.lm_steps)
        S = lm.selection(mask).astype(f64)
        loss = eqx.filter_jit(lambda o, u: o.loss(u))
        vg = eqx.filter_jit(lambda o, u: jax.value_and_grad(o.loss)(u))
        jac = eqx.filter_jit(lambda o, u: jax.jacfwd(o.residuals)(u))
        jac_lm = eqx.filter_jit(
            lambda o, u, S: jax.jacfwd(lambda v: o.residuals(u + S @ v))(jnp.zeros(S.shape[1],
                                                                               u.dtype)))
        row = dict(stage=st.name, free=list(st.free), rows=int(obj.residuals(u0).size))
        row["loss_first_s"], row["loss_s"] = _timed(loss, obj, u0)
        row["value_and_grad_first_s"], row["value_and_grad_s"] = _timed(
            vg, obj.for_gradient(), u0)
        row["jacfwd_full_first_s"], row["jacfwd_full_s"] = _timed(
            jac, obj.for_jacobian(), u0, repeats=3)
        row["jacfwd_lm_first_s"], row["jacfwd_lm_s"] = _timed(
            jac_lm, obj.for_jacobian(), u0, S, repeats=3)
        row["jacfwd_columns"] = {"full": int(u0.size), "lm": int(S.shape[1])}
        row["grad_over_loss"] = row["value_and_grad_s"] / row["loss_s"]
        row["jacfwd_lm_over_loss"] = row["jacfwd_lm_s"] / row["loss_s"]
        out[method] = row
        print(f"    profile {method}: loss {row['loss_s'] * 1e3:.2f} ms, value+grad "
              f"{row['value_and_grad_s'] * 1e3:.2f} ms, jacfwd {u0.size} columns "
              f"{row['jacfwd_full_s'] * 1e3:.1f} ms, jacfwd {S.shape[1]} columns (LM) "
              f"{row['jacfwd_lm_s'] * 1e3:.1f} ms", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# referee: every path's parameters scored by one tight numpy solve
# --------------------------------------------------------------------------------------------
def referee(space, p0, forcing, targets, cfg, chains: dict):
    """Per-stage losses along each path's own chain of stage values (``{path: [values of
    stage 1, ...]}``), and the last stage's at the final parameters, under ``REFEREE``."""
    from scipy_peer import NumpyObjective

    ref = NumpyObjective(space, forcing, targets, events=cfg.events,
                         prior_weight=cfg.prior_weight, **REFEREE)
    out = {}
    for name, stage_values in chains.items():
        vals = _floats(p0)
        losses = []
        for st, sv in zip(cfg.stages, stage_values):
            vals.update(sv)
            losses.append(ref.stage_loss(vals, st))
        out[name] = dict(stage_losses=losses, final_objective=losses[-1])
    return out


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def fmt_s(x):
    return "       -" if x is None else (f"{x:8.1f}" if x >= 10 else f"{x:8.2f}")


def run(args, save=None):
    """Every case; ``save(result)`` is called after each phase (partial results survive)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import scipy_peer

    from regv1_jax.fit import CalibrationConfig

    starts = [int(s) for s in args.starts.split(",") if s.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    space, p0, forcing, targets = build_problem()
    cfg = CalibrationConfig()
    result = dict(
        benchmark="staged calibration, Yanhe synthetic twin (noisy), training 1995-2010 "
                  "(2011-2015 held out), forcing 1995-2015, LoessPlateau priors",
        dtype="float64", args=vars(args), **run_header(), observations=targets.count(),
        config=dict(stages=[dict(name=s.name, free=list(s.free), variables=list(s.variables),
                                 events=s.events) for s in cfg.stages],
                    optimizer=cfg.optimizer, lm_steps=cfg.lm_steps, adam_steps=cfg.adam_steps,
                    default_n_starts=cfg.n_starts, rtol=cfg.rtol, atol=cfg.atol,
                    steps_per_year=cfg.steps_per_year, prior_weight=cfg.prior_weight))
    m = result["machine"]
    print(f"# {m['cpu_model']}, {m['cpu_count']} cores, jax {result['versions']['jax']} on "
          f"{result['jax_backend']} ({len(result['jax_devices'])} device(s)), float64, load "
          f"{result['loadavg_start']}", flush=True)

    print("  checking the numpy objective against fit.Objective.residuals ...", flush=True)
    t = time.perf_counter()
    chk = scipy_peer.check_objective(space, p0, forcing, targets, cfg.stages,
                                     events=cfg.events, prior_weight=cfg.prior_weight)
    chk["check_s"] = time.perf_counter() - t
    result["numpy_objective_check"] = chk
    print(f"    passed in {chk['check_s']:.1f} s: transform diff "
          f"{chk['transform_max_abs_diff_unconstrained']:.1e} (unconstrained), "
          f"{chk['transform_max_rel_diff_constrained']:.1e} (constrained, relative); "
          f"residuals max relative diff {chk['max_rel_residual_diff']:.1e} (tolerance "
          f"{chk['tolerance']:.0e}; " + ", ".join(
              f"{r['stage'][:1]} {r['max_rel_diff']:.1e}" for r in chk["residuals"]) + ")",
          flush=True)

    jax_runs = []
    for method in methods:
        for n in starts:
            print(f"  JAX {method} n_starts={n} ...", flush=True)
            row = run_jax(space, p0, forcing, targets, method, n)
            jax_runs.append(row)
            print(f"    cold {row['cold_s']:.1f} s, warm {row['warm_s']:.2f} s, final "
                  f"{row['final_objective']:.6g}; stages "
                  + ", ".join(f"{s['final_loss']:.5g} ({s['iterations']} it)"
                              for s in row["stages"]), flush=True)
    result["jax"] = jax_runs
    if save:
        save(result)

    sc = None
    peer_kw = dict(events=cfg.events, prior_weight=cfg.prior_weight, method=args.scipy_method,
                   rtol=cfg.rtol, atol=cfg.atol, max_nfev=args.scipy_max_nfev)
    if args.scipy:
        print(f"  scipy least_squares(trf, 2-point) + solve_ivp({args.scipy_method}) ...",
              flush=True)
        fit = scipy_peer.fit_stages(space, p0, forcing, targets, cfg.stages,
                                    progress=lambda s: print("    " + s, flush=True),
                                    **peer_kw)
        sc = fit.as_dict()
        ref1 = next((r for r in jax_runs if r["n_starts"] == 1), None)
        if ref1 is not None:  # when the peer's loss first reached the JAX stage loss
            for row, st, js in zip(sc["stages"], fit.stages, ref1["stages"]):
                target = js["final_loss"]
                row["jax_reference_loss"] = target
                row["time_to_jax_loss_s"] = next(
                    (t for t, v in st.history if v <= target * (1 + 1e-6)), None)
        result["scipy"] = sc
        if save:
            save(result)
        print(f"    total {sc['wall_s']:.1f} s, {sc['n_evals']} evaluations ({sc['nfev']} "
              f"nfev, {sc['solves']} solves), final {sc['final_loss']:.6g}", flush=True)
        if args.scipy_starts > 1:
            print(f"  scipy peer, {args.scipy_starts} starts in stage (a) ...", flush=True)
            extra = scipy_peer.library_starts(space, args.scipy_starts, cfg.seed, 0)
            ms = scipy_peer.fit_stages(space, p0, forcing, targets, cfg.stages,
                                       extra_starts=extra,
                                       progress=lambda s: print("    " + s, flush=True),
                                       **peer_kw)
            result["scipy_multistart"] = dict(ms.as_dict(), starts_stage_a=args.scipy_starts)
            print(f"    total {ms.wall_s:.1f} s, final {ms.final_loss:.6g}", flush=True)
            if save:
                save(result)

    chains = {f"jax_{r['method']}_x{r['n_starts']}": [s["values"] for s in r["stages"]]
              for r in jax_runs}
    scipy_key = f"scipy_{args.scipy_method}"
    if sc:
        chains[scipy_key] = [s["values"] for s in sc["stages"]]
    if "scipy_multistart" in result:
        chains[f"{scipy_key}_a{args.scipy_starts}"] = [
            s["values"] for s in result["scipy_multistart"]["stages"]]
    print(f"  referee: {len(chains)} path(s) re-scored (numpy {REFEREE['method']}, rtol "
          f"{REFEREE['rtol']:g}, atol {REFEREE['atol']:g}) ...", flush=True)
    result["referee"] = dict(solver=f"numpy solve_ivp {REFEREE['method']} rtol "
                                    f"{REFEREE['rtol']:g} atol {REFEREE['atol']:g}",
                             scores=referee(space, p0, forcing, targets, cfg, chains))
    if save:
        save(result)

    ref1 = next((r for r in jax_runs if r["n_starts"] == 1), jax_runs[0] if jax_runs else None)
    if args.profile and ref1 is not None:
        print(f"  profiling the JAX path (stage e, warm start from jax_{ref1['method']}_x"
              f"{ref1['n_starts']}) ...", flush=True)
        from regv1_jax.model import Params

        vals = _floats(p0)
        for s in ref1["stages"][:-1]:
            vals.update(s["values"])
        result["profile"] = profile_jax(space, Params.from_dict(vals, dtype=p0.dtype),
                                        forcing, targets, methods)

    # ---- summary ---------------------------------------------------------------------------
    scores = result["referee"]["scores"]
    sc_ref = scores.get(scipy_key)
    summary = []
    for r in jax_runs:
        key = f"jax_{r['method']}_x{r['n_starts']}"
        row = dict(path=key, method=r["method"], n_starts=r["n_starts"], cold_s=r["cold_s"],
                   warm_s=r["warm_s"], compile_s=r["compile_s"],
                   final_objective=r["final_objective"],
                   final_objective_referee=scores[key]["final_objective"])
        if sc:
            scipy_s = sc["wall_s"] * r["n_starts"]
            row.update(scipy_s=scipy_s, scipy_scaled=r["n_starts"] > 1,
                       speedup_warm=scipy_s / r["warm_s"], speedup_cold=scipy_s / r["cold_s"],
                       loss_minus_scipy_referee=scores[key]["final_objective"]
                       - sc_ref["final_objective"])
        summary.append(row)
    result["summary"] = summary

    goal = dict(text="JAX path >= 20x faster than scipy on 2 CPU cores and no worse in final "
                     "loss; 64 starts vmapped within 3x of one start")
    for method in methods:
        one = next((r for r in summary if r["method"] == method and r["n_starts"] == 1), None)
        many = next((r for r in summary if r["method"] == method and r["n_starts"] == 64), None)
        g = {}
        if one and sc:
            g.update(speedup_warm_1start=one["speedup_warm"],
                     speedup_cold_1start=one["speedup_cold"],
                     speedup_20x_warm_met=one["speedup_warm"] >= 20,
                     speedup_20x_cold_met=one["speedup_cold"] >= 20,
                     loss_no_worse_met=one["loss_minus_scipy_referee"]
                     <= 1e-6 * (1 + abs(sc_ref["final_objective"])))
        if one and many:
            g.update(x64_over_x1_warm=many["warm_s"] / one["warm_s"],
                     x64_over_x1_cold=many["cold_s"] / one["cold_s"],
                     x64_within_3x_met=many["warm_s"] <= 3 * one["warm_s"])
        goal[method] = g
    result["goal"] = goal
    if args.quick or args.scipy_max_nfev is not None:
        result["note"] = (f"scipy capped at max_nfev={args.scipy_max_nfev} per stage: its "
                          "time and loss are not those of a converged fit")
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
    peers = [(scipy_key, sc)] if sc else []
    if "scipy_multistart" in result:
        peers.append((f"{scipy_key}_a{args.scipy_starts}", result["scipy_multistart"]))
    for key, p in peers:
        print(f"{key:<18s} {'':>8s} {fmt_s(p['wall_s'])} {'':>8s} {'':>8s} {'':>7s} "
              f"{'':>7s} {p['final_loss']:13.9g} {scores[key]['final_objective']:13.9g}")
    print()
    own = {f"jax_{r['method']}_x{r['n_starts']}": [s["final_loss"] for s in r["stages"]]
           for r in jax_runs}
    own.update({key: p["stage_losses"] for key, p in peers})
    print("per-stage final loss (own integrator) / referee:")
    print(f"{'path':<18s} " + " ".join(f"{s.name[:16]:>25s}" for s in cfg.stages))
    for key, sco in scores.items():
        print(f"{key:<18s} " + " ".join(f"{a:11.8g} /{b:11.8g}"
                                         for a, b in zip(own[key], sco["stage_losses"])))
    print()
    print("goal:", json.dumps({k: v for k, v in goal.items() if k != "text"}))
    return result


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out) if args.out else None

    def save(result, final=False):
        if out is None:
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(result, complete=final), indent=1, default=float))

    result = run(args, save)
    save(result, final=True)
    if out is not None:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
