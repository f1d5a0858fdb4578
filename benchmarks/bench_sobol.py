"""Sobol' study throughput: ``regv1_jax.analysis.sobol_study`` against scipy + SALib.

    python benchmarks/bench_sobol.py [--n 8192] [--repeats 3] [--scipy-sample 20]
                                     [--chunk 65536] [--out benchmarks/results/...json]

The problem: LoessPlateau (Yanhe-basin forcing, Grain for Green from 1999), 1995-2015 =
21 years, RK4 with 12 steps per year; QoI ``V:2015`` (cover in 2015); d = 14 parameters
(the 12 calibrated ones + theta_star, SOM_star) uniform on their prior CI_95 on their scale;
N = 8192 base points, second order: N (2d + 2) = 245,760 model runs, then S1, ST, S2 with
100 bootstrap resamples.

Rows (in one run; ours and SALib's index step interleaved, medians of ``--repeats``):

* ``regv1_sobol``: the whole study after compilation: Saltelli rows from the base sequence,
  parameters, ``simulate_ensemble`` (float32; on CPU the generated C++ kernel, sharded over
  one XLA host device per core), the QoI, indices + bootstrap CIs in JAX (float64).  Split
  into ``evaluate_s`` and ``indices_s``.
* ``salib_analyze``: ``SALib.analyze.sobol.analyze`` on the same Y (same matrix: checked
  to 1e-10 for S1/ST/S2), 100 resamples, second order.
* ``scipy_RK45``: ``solve_ivp`` per model run, one call per year (what a user writes):
  far too slow for 245,760 runs, so timed on ``--scipy-sample`` rows of the Saltelli matrix
  and **extrapolated linearly** to the study's runs.
* ``peer_total`` = scipy extrapolated + SALib sample + SALib analyze; ``ratio`` = peer_total
  / regv1_sobol (median).  The best repeat and the load average after each repeat are
  recorded too: on a shared 2-core machine the solve rate follows the load.

Also the compile (first-call) time and the load average before and after.
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
from bench_solve import _ensure_host_devices, light_inputs, scipy_yearly_grid  # noqa: E402

HERE = Path(__file__).resolve().parent
NAMES14 = ("r_V", "K_V", "lambda1", "lambda2", "eta1", "a1", "a2", "gamma", "b_V", "c_E",
           "omega_E", "k_E", "theta_star", "SOM_star")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scipy-sample", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--resamples", type=int, default=100)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    _ensure_host_devices()
    import jax

    jax.config.update("jax_enable_x64", True)  # indices in float64; runs in float32
    import jax.numpy as jnp
    import numpy as np
    from SALib.analyze import sobol as salib_sobol
    from SALib.sample import sobol as salib_sample

    import regv1_jax as r
    from regv1_jax.analysis import (
        QoIContext,
        block_size,
        make_qoi,
        saltelli_base,
        saltelli_matrix,
        sobol_study,
        unit_to_params,
    )
    from regv1_jax.io import get_site, site_forcing
    from regv1_jax.model import Layout

    result = run_header()
    site = get_site("Yanhe-basin")
    space = r.load_param_space(site.region)
    forcing = site_forcing(site, 1995, 2015)
    q = make_qoi("V:2015", QoIContext(1995, 2015, site.planting_start, site.MAP_mm))
    d, N = len(NAMES14), args.n
    runs = N * block_size(d, True)
    kw = dict(names=NAMES14, N=N, second_order=True, seed=0, dtype=jnp.float32,
              chunk=args.chunk, num_resamples=args.resamples)
    print(f"d = {d}, N = {N}, second order: {runs} runs; devices {jax.devices()}", flush=True)

    t = time.perf_counter()
    study = sobol_study(space, forcing, q, **kw)
    first = time.perf_counter() - t
    print(f"  first call (compile + run): {first:.2f}s", flush=True)
    Y = study.evaluation.values
    specs = [space.spec(n) for n in NAMES14]
    problem = {"num_vars": d, "names": list(NAMES14), "bounds": [[0.0, 1.0]] * d}

    ours, ev_s, idx_s, salib, loads = [], [], [], [], []
    for k in range(args.repeats):
        t = time.perf_counter()
        s = sobol_study(space, forcing, q, **kw)
        ours.append(time.perf_counter() - t)
        ev_s.append(s.evaluation.seconds)
        idx_s.append(s.seconds_indices)
        t = time.perf_counter()
        ref = salib_sobol.analyze(problem, Y, calc_second_order=True,
                                  num_resamples=args.resamples, seed=1)
        salib.append(time.perf_counter() - t)
        loads.append(loadavg())
        print(f"  repeat {k}: regv1 {ours[-1]:.2f}s (evaluate {ev_s[-1]:.2f}s, indices "
              f"{idx_s[-1]:.3f}s); SALib analyze {salib[-1]:.2f}s; load {loads[-1][0]:.1f}",
              flush=True)
    iu = np.triu_indices(d, 1)
    err = {"S1": float(np.max(np.abs(study.indices.S1 - ref["S1"]))),
           "ST": float(np.max(np.abs(study.indices.ST - ref["ST"]))),
           "S2": float(np.max(np.abs(study.indices.S2[iu] - ref["S2"][iu])))}
    print(f"  max |regv1 - SALib| on the same Y: {err}", flush=True)

    t = time.perf_counter()
    X = salib_sample.sample(problem, N, calc_second_order=True, seed=0)
    salib_sample_s = time.perf_counter() - t
    same_matrix = bool(np.array_equal(X, saltelli_matrix(saltelli_base(N, d, seed=0), True)))

    # scipy: solve_ivp per run on a sample of the Saltelli rows, extrapolated.
    m = args.scipy_sample
    rows = np.linspace(0, runs - 1, m).astype(int)
    P = unit_to_params(X[rows], NAMES14, specs, space.prior_values(jnp.float64))
    f_np = forcing.numpy()
    layout = Layout()
    t = time.perf_counter()
    vals = []
    for i in range(m):
        p_i = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i], np.float64), P)
        p_l, f_l = light_inputs(p_i, f_np)
        ys = scipy_yearly_grid(p_l, f_l, layout, "RK45", 1e-6, 1e-9)
        vals.append(ys[-2, layout.V])  # mid-2015 cover
    scipy_s = time.perf_counter() - t
    scipy_per_run = scipy_s / m
    scipy_err = float(np.max(np.abs(np.asarray(vals) - Y[rows])))

    ours_med = statistics.median(ours)
    salib_med = statistics.median(salib)
    peer_total = scipy_per_run * runs + salib_sample_s + salib_med
    result.update(
        problem=dict(region=site.region, site=site.name, years="1995-2015", qoi=q.name,
                     parameters=list(NAMES14), d=d, N=N, second_order=True, runs=runs,
                     resamples=args.resamples, chunk=args.chunk, dtype_runs="float32",
                     dtype_indices="float64", failed_runs=study.failed_rows),
        regv1_sobol_s=ours_med, regv1_sobol_min_s=min(ours), regv1_sobol_all_s=ours,
        loadavg_per_repeat=loads, regv1_first_call_s=first,
        evaluate_s=statistics.median(ev_s), indices_s=statistics.median(idx_s),
        runs_per_s=runs / statistics.median(ev_s), runs_per_s_best=runs / min(ev_s),
        salib_analyze_s=salib_med, salib_analyze_all_s=salib, salib_sample_s=salib_sample_s,
        salib_same_matrix=same_matrix, max_abs_diff_vs_salib=err,
        scipy_RK45=dict(sample=m, seconds=scipy_s, per_run_s=scipy_per_run,
                        extrapolated_s=scipy_per_run * runs, rtol=1e-6, atol=1e-9,
                        max_abs_diff_V2015_vs_regv1_float32=scipy_err,
                        note="one solve_ivp per year per run, float64; timed on the sample "
                             "and extrapolated linearly to every run"),
        peer_total_s=peer_total, ratio_peer_over_regv1=peer_total / ours_med,
        ratio_index_step_salib_over_regv1=salib_med / statistics.median(idx_s),
        goal_s=2.0, loadavg_end=loadavg())
    print(f"regv1 Sobol' study: {ours_med:.2f}s (median of {args.repeats}, best "
          f"{min(ours):.2f}s; evaluate "
          f"{result['evaluate_s']:.2f}s = {result['runs_per_s']:,.0f} runs/s, indices "
          f"{result['indices_s']:.3f}s); goal < 2 s")
    print(f"peer: scipy RK45 {scipy_per_run * 1e3:.1f} ms/run x {runs} = "
          f"{scipy_per_run * runs:,.0f}s (extrapolated from {m}) + SALib sample "
          f"{salib_sample_s:.2f}s + analyze {salib_med:.2f}s = {peer_total:,.0f}s")
    print(f"ratio peer / regv1: {peer_total / ours_med:,.0f}x; index step SALib / regv1: "
          f"{result['ratio_index_step_salib_over_regv1']:.0f}x; load {loadavg()}")
    out = Path(args.out) if args.out else HERE / "results" / f"sobol_{socket.gethostname()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
