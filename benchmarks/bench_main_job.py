"""Wall time of the main job (``regv1 calibrate --site Yanhe-basin``) for two source trees in
the same run, alternating, each a fresh process with the compilation cache off.

    python benchmarks/bench_main_job.py BASE_TREE NEW_TREE [--repeat 2]
        [--out benchmarks/results/main_job_<host>.json]

Both trees are run with ``PYTHONPATH=<tree>`` and the tree as working directory (``-m``
puts the working directory first on ``sys.path``: the package is imported from there); the time
includes start-up, compilation, the staged fit, the local analysis and writing the report.
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


def run(tree: str, extra=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": tree, "REGV1_NO_CACHE": "1"}
        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = os.getloadavg()[0]
        p = subprocess.run([sys.executable, "-m", "regv1_jax", "calibrate", "--site",
                            "Yanhe-basin", "--out", str(Path(tmp) / "out"), *extra], env=env,
                           capture_output=True, text=True, cwd=tree)
        wall = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        load = (load0, os.getloadavg()[0])
        summary = {}
        pj = Path(tmp) / "out" / "params.json"
        if pj.exists():
            doc = json.loads(pj.read_text())
            block = next(v for k, v in doc.items() if not k.startswith("_"))
            cal = {n: e for n, e in block.items() if e.get("source") == "calibrated"}
            summary = {n: {"value": e["value"], "CI_95": e["CI_95"],
                           "flags": e.get("flags", "")} for n, e in cal.items()}
    first = p.stdout.splitlines()[:1]
    return {"tree": tree, "wall_s": wall, "cpu_s": cpu, "load_before_after": load,
            "rc": p.returncode, "first_line": first,
            "calibrated": summary,
            "tail": (p.stdout + p.stderr)[-1500:]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--new-args", default="",
                    help="extra options for the new tree only, e.g. '--end 2015 --holdout "
                    "2011-2015' (the old default years)")
    ap.add_argument("--out", default=f"benchmarks/results/main_job_{socket.gethostname()}.json")
    a = ap.parse_args()
    runs = []
    for _ in range(a.repeat):
        for tree in (a.base, a.new):
            r = run(tree, a.new_args.split() if tree == a.new else ())
            runs.append(r)
            print(f"{tree}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} cpu-s, load "
                  f"{r['load_before_after'][0]:.1f}->{r['load_before_after'][1]:.1f} "
                  f"(rc {r['rc']})", flush=True)
    best = {t: min(r["wall_s"] for r in runs if r["tree"] == t and r["rc"] == 0)
            for t in (a.base, a.new) if any(r["tree"] == t and r["rc"] == 0 for r in runs)}
    doc = {"host": socket.gethostname(), "cpus": os.cpu_count(), "runs": runs,
           "new_args": a.new_args,
           "best_s": best, "note": "min over repeats; alternating order; cache off; the "
           "machine was shared with other jobs"}
    best_cpu = {t: min(r["cpu_s"] for r in runs if r["tree"] == t and r["rc"] == 0)
                for t in best}
    doc["best_cpu_s"] = best_cpu
    if a.base in best and a.new in best:
        doc["ratio_new_over_base"] = best[a.new] / best[a.base]
        doc["cpu_ratio_new_over_base"] = best_cpu[a.new] / best_cpu[a.base]
        print(f"new / base = {doc['ratio_new_over_base']:.2f} wall, "
              f"{doc['cpu_ratio_new_over_base']:.2f} cpu-s")
    Path(a.out).write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
