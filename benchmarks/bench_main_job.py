"""The main job (``regv1 calibrate --site Yanhe-basin``) cold and warm, before and after, and
the scipy peer doing the same staged fit from the same starts, in one run.

    python benchmarks/bench_main_job.py [--base REF] [--repeat 1] [--no-peer]
        [--out benchmarks/results/main_job_<host>.json]

* **cold**: a fresh process with empty caches (the XLA compilation cache, the trace cache
  and the CPU kernels: ``REGV1_CACHE_DIR``, ``REGV1_KERNEL_CACHE`` and ``XDG_CACHE_HOME``
  point into a new temporary folder), so it includes building the kernels;
* **warm**: a second fresh process on the caches the cold one filled.
* **before / after**: ``--base REF`` (default ``a3764e9``, the tree before issues 20 and
  21) is checked out in a temporary ``git worktree`` and run the same way; the working
  tree is "after".  Each time is the process's wall time (start-up, imports, compilation,
  the fit, the local analysis and writing the report).
* **scipy peer** (``benchmarks/scipy_peer.py``): ``scipy.optimize.least_squares`` (trf,
  2-point Jacobian) on ``solve_ivp`` (RK45, rtol = atol = 1e-6) doing what the library's
  staged fit does on the same problem (the training targets, the initial state from the
  data), from the same starts: both branches (the seed's stages alone; the basin stage,
  started from the prior centre and the library's search draws, then the seed's stages),
  every stage from the warm start plus the library's ``n_starts - 1`` prior draws, stages
  without data left out as the library skips them.  The global start search itself is not
  re-run by the peer (it gets the library's draws); its scipy cost is measured on 200
  draws and scaled to the search's draw count (``screen_extrapolated_s``, labelled so).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))


def run_cli(tree: Path, cache: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "REGV1_CACHE_DIR": str(cache / "xla"),
           "REGV1_KERNEL_CACHE": str(cache / "kernels"), "XDG_CACHE_HOME": str(cache)}
    env.pop("REGV1_NO_CACHE", None)
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "regv1_jax", "calibrate", "--site",
                        "Yanhe-basin", "--out", str(out)], env=env, capture_output=True,
                       text=True, cwd=tree)
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    row = {"wall_s": wall, "cpu_s": cpu, "rc": p.returncode,
           "loadavg_after": os.getloadavg()[0], "log": p.stdout[-3000:] + p.stderr[-1500:]}
    m = out / "metrics.json"
    if m.exists():
        doc = json.loads(m.read_text())
        row["final_stage_loss"] = doc["stages"][-1].get("final_loss")
        row["stages"] = [s["name"] for s in doc["stages"]]
        row["R2_cover_training"] = doc["metrics"].get("veg_cover_%", {}).get(
            "training", {}).get("R2_1to1")
        if doc.get("screen"):
            row["screen"] = {k: doc["screen"].get(k) for k in (
                "n_draws", "best_loss", "incoming_loss", "kept", "comparison_loss",
                "comparison_score", "free", "seconds")}
    return row


def worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref],
                   check=True, capture_output=True)
    return where


def screen_probe(space, params, obj, plan, seed: int, n: int) -> float:
    """Seconds per draw of the global start search in scipy: ``n`` distinct draws of the
    library's screen (``fit.screen_draws``), each one ``solve_ivp`` and its residuals."""
    import numpy as np

    from regv1_jax import fit

    names = plan.summary["screened"]
    U, _ = fit.screen_draws(space, names, n, seed + 1, np.asarray(space.stack(params)))
    mask = np.ones(U.shape[1], bool)
    w = np.ones(len(fit.TARGET_VARIABLES))
    t0 = time.perf_counter()
    for row in U:
        obj.residuals_at(space.host_to_constrained(row), mask, w, 0.0)
    return (time.perf_counter() - t0) / n


def peer(n_screen_probe: int = 200) -> dict:
    """The scipy peer on the main job's problem (see the module docstring)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import scipy_peer

    import regv1_jax as r
    from regv1_jax import fit, io

    jax.config.update("jax_enable_x64", True)
    site = r.get_site("Yanhe-basin")
    space = r.load_param_space(site.region)
    cfg = fit.CalibrationConfig()
    obs = site.observations
    forcing = io.site_forcing(site, int(obs.years.min()), int(obs.years.max()))
    years = forcing.years
    hold, _ = fit.resolve_holdout(cfg.holdout, obs, years)
    keep = fit.training_years(years, hold)
    params, _, init_fit = fit.initial_state_from_data(
        space, space.prior_values(jnp.float64), obs, int(years[0]), cfg.initial_state,
        train_years=years[keep])
    if init_fit:
        cfg = dataclasses.replace(cfg, stages=fit.with_initial_state(cfg.stages, init_fit))
    train = fit.training_targets(obs, forcing, hold, jnp.float64)
    counts = train.count()
    t0 = time.perf_counter()
    plan = fit.plan_basin(space, cfg.stages, params, forcing, train, cfg)
    plan_s = time.perf_counter() - t0
    key = jax.random.PRNGKey(cfg.seed)
    n_more = cfg.n_starts - 1
    branches = {"stages_alone": (cfg.stages, None), "with_basin_stage": (plan.stages,
                                                                          plan.first_starts)}
    out: dict = {"solver": "solve_ivp RK45 rtol 1e-6 atol 1e-6",
                 "optimizer": "least_squares trf, 2-point Jacobian, default tolerances",
                 "n_starts_per_stage": cfg.n_starts}
    obj = scipy_peer.NumpyObjective(space, forcing, train, events=cfg.events,
                                    prior_weight=cfg.prior_weight)
    total = 0.0
    for label, (stages, first) in branches.items():
        draws = fit.prior_starts(space, key, len(stages), n_more)
        run = [i for i, st in enumerate(stages)
               if st.events or sum(counts[v] for v in st.variables) > 0]
        starts = {}
        for k, i in enumerate(run):
            u = first if (i == 0 and first is not None) else draws[i]
            starts[k] = space.host_to_constrained(u)
        res = scipy_peer.fit_stages(space, params, forcing, train, [stages[i] for i in run],
                                    stage_starts=starts, objective=obj,
                                    progress=lambda s: print("    " + s, flush=True))
        out[label] = {"wall_s": res.wall_s, "cpu_s": res.cpu_s, "solves": res.solves,
                      "stages": [{"name": s.name, "final_loss": s.final_loss,
                                  "wall_s": s.wall_s, "nfev": s.nfev} for s in res.stages]}
        total += res.wall_s
    per = screen_probe(space, params, obj, plan, cfg.seed, n_screen_probe)
    out["screen_per_draw_s"] = per
    out["screen_extrapolated_s"] = per * cfg.screen
    out["screen_note"] = (f"{n_screen_probe} solves timed, scaled to {cfg.screen} draws "
                          "(extrapolated, not run)")
    out["staged_fit_total_s"] = total
    out["library_plan_basin_s_in_process"] = plan_s
    return out


def main():
    from _machine import run_header

    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="a3764e9", help="git ref of the 'before' tree "
                    "('' for none)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" /
                                         f"main_job_{socket.gethostname()}.json"))
    a = ap.parse_args()
    doc = run_header()
    doc["what"] = ("regv1 calibrate --site Yanhe-basin (float64, the default config), cold "
                   "and warm, before and after; scipy peer on the same staged fit")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trees = {"after": ROOT}
        if a.base:
            trees = {"before": worktree(a.base, tmp / "base"), **trees}
            doc["base_ref"] = a.base
        runs = []
        try:
            for rep in range(a.repeat):
                for label, tree in trees.items():
                    cache = tmp / f"cache_{label}_{rep}"
                    for kind in ("cold", "warm"):
                        row = run_cli(tree, cache, tmp / f"out_{label}_{rep}_{kind}")
                        row.update(tree=label, kind=kind, repeat=rep)
                        runs.append(row)
                        print(f"{label:6s} {kind}: {row['wall_s']:6.1f} s wall, "
                              f"{row['cpu_s']:6.1f} cpu-s (rc {row['rc']}), final stage "
                              f"loss {row.get('final_stage_loss')}", flush=True)
        finally:
            if a.base:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(tmp / "base")], capture_output=True)
    doc["runs"] = runs
    best = {}
    for label in trees:
        for kind in ("cold", "warm"):
            ok = [x["wall_s"] for x in runs if x["tree"] == label and x["kind"] == kind
                  and x["rc"] == 0]
            if ok:
                best[f"{label}_{kind}_s"] = min(ok)
    doc["best_s"] = best
    if not a.no_peer:
        print("scipy peer ...", flush=True)
        doc["scipy_peer"] = p = peer()
        best["scipy_staged_fit_s"] = p["staged_fit_total_s"]
        best["scipy_staged_fit_plus_screen_s"] = (p["staged_fit_total_s"]
                                                  + p["screen_extrapolated_s"])
        for kind in ("cold", "warm"):
            if f"after_{kind}_s" in best:
                doc[f"scipy_staged_fit_over_after_{kind}"] = (
                    p["staged_fit_total_s"] / best[f"after_{kind}_s"])
        print(f"scipy staged fit {p['staged_fit_total_s']:.1f} s (+ screen "
              f"{p['screen_extrapolated_s']:.0f} s extrapolated)", flush=True)
    for k, v in best.items():
        print(f"  {k}: {v:.1f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
