"""Profile likelihood: ``regv1_jax.analysis.profile`` (batched sweeps) against scipy refits.

    python benchmarks/bench_profile.py [--points 41] [--method tsit5] [--scipy-sample 6]
                                       [--repeats 3] [--out benchmarks/results/...json]

Problem: the Yanhe synthetic twin (``data/synthetic/yanhe_synthetic.csv``, training years
1995-2010, as ``bench_calibrate.build_problem`` builds it), LoessPlateau priors, float64,
the default calibration config (12 calibrated parameters, event constraints, prior weight
1; ``--method rk4`` for 12 RK4 steps a year instead of Tsit5).  The point estimate: scipy
``least_squares`` on the library's point-fit residuals (``point_residual_fn`` of
theta_star at its prior value: every calibrated parameter free), from the prior values.

Rows (one run):

* ``regv1_profile``: ``profile(setup, ("theta_star", "SOM_star"), points=P)``: 2 x P
  refits (2 sweeps per parameter, every sweep batched under ``vmap``, one joint LM per
  point warm-started from its neighbour).  compile = first call - median warm call.
* ``scipy_least_squares``: what a user would otherwise write: a loop over the same grid
  points, ``scipy.optimize.least_squares`` (trf, 2-point finite differences, default
  tolerances) on the same residual function (``point_residual_fn``, jitted, called from
  numpy), each point started from the estimate.  Timed on ``--scipy-sample`` grid points
  spread over both profiles and **extrapolated linearly** to all 2 x P points; the losses
  at those points are compared with the library's.
* ``ratio`` = scipy (extrapolated) / regv1 (median warm).

The load average before and after, and per-cpu-second figures, are recorded: on a shared
2-core machine the times follow the load.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, run_header  # noqa: E402
from bench_calibrate import build_problem  # noqa: E402

HERE = Path(__file__).resolve().parent
NAMES = ("theta_star", "SOM_star")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=41)
    ap.add_argument("--method", choices=("tsit5", "rk4"), default="tsit5")
    ap.add_argument("--scipy-sample", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from bench_solve import _ensure_host_devices

    _ensure_host_devices()  # one XLA device per core: the sweeps split over them
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from scipy.optimize import least_squares

    from regv1_jax.analysis import ProfileSetup, point_residual_fn, profile
    from regv1_jax.fit import CalibrationConfig

    out = Path(args.out) if args.out else \
        HERE / "results" / f"profile_{socket.gethostname()}_{args.method}.json"
    doc = {"benchmark": "bench_profile", **run_header(), "args": vars(args),
           "devices": [str(d) for d in jax.devices()],
           "load_before": loadavg()}
    space, p0, forcing, targets = build_problem()
    cfg = CalibrationConfig(method=args.method)
    free = tuple(dict.fromkeys(n for st in cfg.stages for n in st.free))
    setup0 = ProfileSetup(space, p0, forcing, targets, free, cfg, events=True)
    t = time.perf_counter()
    fn, v0 = point_residual_fn(setup0, "theta_star", float(p0.theta_star))
    sol = least_squares(fn, v0, method="trf", x_scale="jac")
    u = space.to_constrained(space.to_unconstrained(p0).replace(
        **{n: jnp.asarray(x) for n, x in zip(free, sol.x)}))
    params = p0.replace(**{n: getattr(u, n) for n in free})
    setup = ProfileSetup(space, params, forcing, targets, free, cfg, events=True)
    doc["point_fit"] = {"seconds": time.perf_counter() - t, "loss": 0.5 * float(sol.fun @ sol.fun),
                        "nfev": int(sol.nfev), "free": list(free)}
    print(f"point fit (scipy): loss {doc['point_fit']['loss']:.6g} in "
          f"{doc['point_fit']['seconds']:.1f} s", flush=True)

    # --- library --------------------------------------------------------------------
    c0 = time.process_time()
    t = time.perf_counter()
    profs = profile(setup, NAMES, points=args.points)
    cold = time.perf_counter() - t
    warm, cpu = [], []
    for _ in range(args.repeats):
        c = time.process_time()
        t = time.perf_counter()
        profs = profile(setup, NAMES, points=args.points)
        warm.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    med = statistics.median(warm)
    n_points = sum(p.x.size for p in profs)
    doc["regv1_profile"] = {
        "first_call_s": cold, "warm_s": warm, "median_s": med, "cpu_s": cpu,
        "compile_s": cold - med, "points": n_points, "cpu_s_total_incl_compile":
        time.process_time() - c0,
        "status_counts": {p.name: {s: int(np.sum(p.status == k)) for k, s in
                                   enumerate(("ok", "not_converged", "at_bound", "failed"))}
                          for p in profs},
        "intervals": {p.name: p.summary() for p in profs}}
    print(f"regv1 profile: {n_points} refits, first call {cold:.1f} s, warm median "
          f"{med:.3f} s (cpu {statistics.median(cpu):.3f} s)", flush=True)

    # --- scipy peer on a sample of the same points --------------------------------------
    all_pts = [(k, i) for k in range(len(profs)) for i in range(profs[k].x.size)]
    pick = np.linspace(0, len(all_pts) - 1, args.scipy_sample).round().astype(int)
    rows, t_sum, c_sum = [], 0.0, 0.0
    for j in pick:
        k, i = all_pts[j]
        p = profs[k]
        fn, _ = point_residual_fn(setup, p.name, float(p.x[i]))
        free_k = [n for n in free if n != p.name]
        v_start = np.array([float(getattr(space.to_unconstrained(params), n))
                            for n in free_k])
        fn(v_start)  # compiled outside the timing (one compilation per residual shape)
        c = time.process_time()
        t = time.perf_counter()
        r = least_squares(fn, v_start, method="trf")
        dt = time.perf_counter() - t
        t_sum += dt
        c_sum += time.process_time() - c
        ref = 0.5 * float(r.fun @ r.fun)
        rows.append({"parameter": p.name, "value": float(p.x[i]), "scipy_loss": ref,
                     "regv1_loss": float(p.loss[i]), "rel_diff": (float(p.loss[i]) - ref) /
                     abs(ref), "scipy_s": dt, "nfev": int(r.nfev)})
        print(f"  scipy {p.name}={p.x[i]:.4g}: {dt:.2f} s, loss {ref:.8g} vs regv1 "
              f"{p.loss[i]:.8g}", flush=True)
    per_point = t_sum / len(pick)
    scipy_total = per_point * n_points
    doc["scipy_least_squares"] = {"sample": rows, "per_point_s": per_point,
                                  "cpu_s_per_point": c_sum / len(pick),
                                  "extrapolated_total_s": scipy_total,
                                  "note": "timed on the sample, extrapolated linearly"}
    doc["ratio"] = scipy_total / med
    doc["load_after"] = loadavg()
    doc["goal"] = "2 x 41 points < 5 s on 2 CPU cores after compilation"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(f"regv1 {med:.3f} s vs scipy {scipy_total:.1f} s (extrapolated from "
          f"{len(pick)} points): ratio {doc['ratio']:.1f}x; load {doc['load_after']}; "
          f"wrote {out}")


if __name__ == "__main__":
    main()
