"""Block bootstrap: batched staged refits (``analysis.bootstrap_study``) against a scipy
``least_squares`` loop over the same replicates; and (``--coverage K``) the coverage of the
nominal 95% intervals over K synthetic twins.

    python benchmarks/bench_bootstrap.py [--B 1000] [--chunk 256] [--scipy-sample 6]
                                         [--out benchmarks/results/bootstrap_<host>.json]
    python benchmarks/bench_bootstrap.py --coverage 100 [--coverage-B 200]

Speed problem: the Yanhe synthetic twin (``data/synthetic/yanhe_synthetic.csv``, training
years 1995-2010, as ``bench_calibrate.build_problem``), float64, stages (a) r_V, K_V on
cover and (b) a1, a2 on SOM of the seed config, RK4 with 12 steps per year, at most 20
Levenberg-Marquardt iterations, prior weight 1; point estimate from ``calibrate_stages``
(4 starts).  Moving blocks of 2 years, B replicates + the point refit + the
delete-one-block jackknife (all refits timed).

* ``regv1``: ``bootstrap_study`` (``fit_staged`` per replicate, warm-started from the
  point estimate, vmapped in chunks, sharded over the host devices); the first call
  compiles (``first_call_s``), the second is timed.
* peer: ``scipy.optimize.least_squares(trf, 2-point)`` stage by stage from the point
  estimate per replicate, on ``scipy_peer.NumpyObjective`` (the library's residuals
  in numpy, ``solve_ivp`` RK45 rtol = atol = 1e-6, one call per year) with each cell's
  residual times sqrt(its year's count).  Run on ``--scipy-sample`` replicates and
  **extrapolated linearly** to all refits; the sampled replicates' parameters are compared
  with the library's.

Coverage (``--coverage K``): K twins (``make_twin``, r_V = 0.15 true, cover noise sd 2
points, noise seeds 0..K-1, 1990-2019 = 30 years, planting from 1999), one stage (r_V,
K_V on cover; RK4, 4 steps per year, 15 LM iterations, no prior), point fit by
``fit_staged`` from the prior (4 starts, vmapped over the twins), then a bootstrap per twin
(``--coverage-B`` replicates, moving blocks, ``--coverage-L``: the automatic block length
by default, 1 matches the twins' independent noise); the share of twins
whose percentile / BCa interval covers the true r_V and K_V.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--B", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--scipy-sample", type=int, default=6)
    ap.add_argument("--coverage", type=int, default=0, help="twins for the coverage check")
    ap.add_argument("--coverage-B", type=int, default=200)
    ap.add_argument("--coverage-L", default="auto", help="block length of the coverage "
                    "bootstrap: 'auto' or an integer (the twins' noise is independent: 1)")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def speed(args, result):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from bench_calibrate import build_problem
    from scipy.optimize import least_squares
    from scipy_peer import NumpyObjective

    from regv1_jax.analysis import bootstrap_study, year_weights
    from regv1_jax.fit import SEED_STAGES, TARGET_VARIABLES, CalibrationConfig, calibrate_stages

    space, p0, forcing, train = build_problem()
    cfg = CalibrationConfig(stages=SEED_STAGES[:2], n_starts=4, method="rk4",
                            steps_per_year=12, lm_steps=20, prior_weight=1.0, holdout=None)
    point, _ = calibrate_stages(space, p0, forcing, train, cfg)
    names = ["r_V", "K_V", "a1", "a2"]
    kw = dict(B=args.B, block_length=2, chunk=args.chunk, planting_start=1999)
    t = time.perf_counter()
    bootstrap_study(space, point, forcing, train, cfg, names, **kw)
    first = time.perf_counter() - t
    t, c = time.perf_counter(), time.process_time()
    res = bootstrap_study(space, point, forcing, train, cfg, names, **kw)
    ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
    n_refits = 1 + res.B + res.jackknife.shape[0]
    print(f"regv1: {n_refits} refits in {ours:.2f}s ({n_refits / ours:.1f}/s; first call "
          f"{first:.1f}s); used {int(res.used.sum())}/{res.B}; load {loadavg()}", flush=True)

    # scipy peer on a sample of the same replicates.
    obj = NumpyObjective(space, forcing, train, events=cfg.events,
                         prior_weight=cfg.prior_weight, method="RK45", rtol=1e-6, atol=1e-6)
    ny = forcing.n_years
    train_idx = np.searchsorted(np.asarray(forcing.years), res.train_years)
    m = min(args.scipy_sample, res.B)
    rows = np.linspace(0, res.B - 1, m).astype(int)
    diffs, t_peer = [], 0.0
    for i in rows:
        w = np.asarray(year_weights(res.counts[i][None], train_idx, ny))[0]
        values = {k: float(v) for k, v in point.as_dict().items()}
        t = time.perf_counter()
        for st in cfg.stages:
            fun, v0 = obj.stage_function(st, values)
            extra = len(fun(v0)) - w.size
            sw = np.concatenate([np.sqrt(w), np.ones(extra)])
            sol = least_squares(lambda v, fun=fun, sw=sw: fun(v) * sw, v0, method="trf",
                                jac="2-point")
            values.update(obj.stage_values(st, values, sol.x))
        t_peer += time.perf_counter() - t
        ours_i = res.replicates[i, :len(names)]
        diffs.append(float(np.max(np.abs(np.array([values[n] for n in names]) - ours_i)
                               / np.abs(ours_i))))
    per = t_peer / m
    peer_total = per * n_refits
    ratio = peer_total / ours
    print(f"peer: scipy least_squares + solve_ivp {per:.2f}s/refit x {n_refits} = "
          f"{peer_total:,.0f}s (extrapolated from {m}); max rel. parameter difference on "
          f"the sample {max(diffs):.2e}")
    print(f"ratio peer / regv1: {ratio:,.0f}x (goal >= 50x); regv1 {ours:.1f}s (goal < 60 s)")
    result["speed"] = dict(
        problem=dict(data="data/synthetic/yanhe_synthetic.csv", train="1995-2010",
                     stages=[s.name for s in cfg.stages], parameters=names, method="rk4",
                     steps_per_year=12, lm_steps=20, prior_weight=1.0, dtype="float64",
                     scheme="moving", block_length=2, B=res.B,
                     jackknife=int(res.jackknife.shape[0]), refits=n_refits,
                     chunk=args.chunk, variables=list(TARGET_VARIABLES)),
        devices=[str(d) for d in jax.devices()], regv1_s=ours, regv1_cpu_s=ours_cpu,
        regv1_first_call_s=first, refits_per_s=n_refits / ours,
        status_counts={str(k): v for k, v in res.status_counts.items()},
        scipy=dict(sample=m, seconds=t_peer, per_refit_s=per, extrapolated_s=peer_total,
                   max_rel_param_diff_vs_regv1=max(diffs), method="RK45", rtol=1e-6,
                   atol=1e-6, note="least_squares(trf, 2-point) per stage per replicate, "
                   "timed on the sample and extrapolated linearly to every refit"),
        ratio_peer_over_regv1=ratio, goal_ratio=50, goal_s=60, loadavg_end=loadavg())
    del jnp


def coverage(args, result):
    import jax
    import jax.numpy as jnp
    import numpy as np

    import regv1_jax as r
    from regv1_jax.analysis import bootstrap_study
    from regv1_jax.fit import (
        SEED_STAGES,
        CalibrationConfig,
        fit_staged,
        make_targets,
        make_twin,
        staged_problem,
        twin_forcing,
        write_twin,
    )
    from regv1_jax.io import load_site

    K, start, end, ps = args.coverage, 1990, 2019, 1999
    rain = 420 + 60 * np.sin(np.arange(start, end + 1) * 1.7)
    stage = dataclasses.replace(SEED_STAGES[0], events=False)
    cfg = CalibrationConfig(stages=(stage,), n_starts=4, lm_steps=15, prior_weight=0.0,
                            holdout=None, method="rk4", steps_per_year=4)
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(start, end, rain, ps)
    truth = {"r_V": 0.15, "K_V": float(space.prior_values().K_V)}
    tmp = Path("/tmp") / f"bench_bootstrap_twins_{socket.gethostname()}"
    targets = []
    for k in range(K):
        frame, meta = make_twin("LoessPlateau", "cov-synthetic", {"r_V": truth["r_V"]},
                                start, end, rain, ps, noise={"veg_cover_%": 2.0}, seed=k,
                                depth_every=None)
        path = tmp / f"twin_{k}.csv"
        write_twin(frame, meta, path)
        targets.append(make_targets(load_site(path, "cov-synthetic"), forcing))
    T = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *targets)
    prior = space.prior_values(jnp.float64)
    prob = staged_problem(space, cfg.stages, cfg.n_starts, jax.random.PRNGKey(0))
    n = 8 * forcing.n_years
    t = time.perf_counter()
    fits = jax.vmap(lambda tg: fit_staged(prior, prob, forcing, tg, jnp.ones(n),
                                          jnp.asarray(0.0), space, cfg.fit_settings()))(T)
    t_point = time.perf_counter() - t
    L_arg = "auto" if args.coverage_L == "auto" else int(args.coverage_L)
    hits = {m: {p: 0 for p in truth} for m in ("percentile", "BCa")}
    counted = {p: 0 for p in truth}
    widths, Ls, used = [], [], []
    t = time.perf_counter()
    for k in range(K):
        point = jax.tree_util.tree_map(lambda x, k=k: x[k], fits.params)
        res = bootstrap_study(space, point, forcing, targets[k], cfg, list(truth),
                              B=args.coverage_B, chunk=args.chunk, planting_start=ps,
                              block_length=L_arg)
        Ls.append(res.block_length)
        used.append(int(res.used.sum()))
        for p, v in truth.items():
            iv = res.intervals[p]
            if not all(math.isfinite(x) for x in iv["BCa"] + iv["percentile"]):
                continue
            counted[p] += 1
            for meth in hits:
                lo, hi = iv[meth]
                hits[meth][p] += int(lo <= v <= hi)
        widths.append(res.intervals["r_V"]["percentile"][1]
                      - res.intervals["r_V"]["percentile"][0])
        if k % 10 == 9:
            print(f"  twin {k + 1}/{K}: coverage so far "
                  + ", ".join(f"{m} {p} {hits[m][p] / max(counted[p], 1):.2f}"
                              for m in hits for p in truth), flush=True)
    t_boot = time.perf_counter() - t
    cov = {m: {p: hits[m][p] / max(counted[p], 1) for p in truth} for m in hits}
    ok = all(0.90 <= c <= 0.99 for m in cov for c in cov[m].values())
    print(f"coverage over {K} twins (B = {args.coverage_B}): {cov}; within 90-99%: {ok}")
    result["coverage"] = dict(
        twins=K, B=args.coverage_B, years=[start, end], truth=truth, noise="veg_cover_% "
        "additive normal sd 2 points, seeds 0..K-1", stage=stage.name, method="rk4",
        steps_per_year=4, lm_steps=15, prior_weight=0.0, scheme="moving",
        block_length=args.coverage_L, block_lengths=Ls, replicates_used=used,
        intervals_counted=counted, coverage=cov, target=[0.90, 0.99], within_target=ok,
        r_V_percentile_width_median=float(np.median(widths)), point_fit_s=t_point,
        bootstrap_s=t_boot, loadavg_end=loadavg())


def main(argv=None):
    args = parse_args(argv)
    from bench_solve import _ensure_host_devices

    _ensure_host_devices()
    import jax

    jax.config.update("jax_enable_x64", True)
    result = run_header()
    if args.coverage:
        coverage(args, result)
        tag = "" if args.coverage_L == "auto" else f"_L{args.coverage_L}"
        name = f"bootstrap_coverage{tag}_{socket.gethostname()}.json"
    else:
        speed(args, result)
        name = f"bootstrap_{socket.gethostname()}.json"
    out = Path(args.out) if args.out else HERE / "results" / name
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
