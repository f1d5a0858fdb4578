"""Compilation paid once: the main job run twice against one empty persistent cache.

    python benchmarks/bench_cache.py [--site Yanhe-basin] [--runs 2]
                                     [--out benchmarks/results/cache_<host>.json]

Runs the README's main job (``regv1 calibrate --site Yanhe-basin --out DIR``, as
``python -m regv1_jax.cli``) ``--runs`` times, each in a fresh Python process, with
``REGV1_CACHE_DIR`` pointing at one new, empty temporary folder (the user's own cache is
neither read nor written), and records the wall time of each process (start to exit,
imports included), the size of the cache after each run, and the ratio of the second run's
time to the first's.  Goal: the second run takes under half the first's time.
A third process with ``REGV1_NO_CACHE=1`` measures the run without any cache (``--no-cache-run``,
on by default), so that a warm cache can be told apart from a fast machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, machine_info, versions  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def folder_size(path: Path) -> tuple[int, int]:
    """(number of files, bytes) under ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def run_once(site: str, out: Path, env: dict) -> dict:
    cmd = [sys.executable, "-m", "regv1_jax.cli", "calibrate", "--site", site, "--out",
           str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return {"command": " ".join(cmd[1:]), "wall_s": round(wall, 2),
            "persistent_cache_warnings": proc.stderr.count("Not writing persistent cache")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", default="Yanhe-basin")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--no-cache-run", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or ROOT / "benchmarks" / "results"
               / f"cache_{socket.gethostname()}.json")
    result = {"machine": machine_info(), "versions": versions(), "loadavg_start": loadavg(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "site": args.site, "runs": []}
    with tempfile.TemporaryDirectory(prefix="regv1_cache_bench_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "REGV1_CACHE_DIR": str(tmp / "xla"),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        env.pop("REGV1_NO_CACHE", None)
        for i in range(args.runs):
            r = run_once(args.site, tmp / f"out{i}", env)
            r["cache_files"], r["cache_bytes"] = folder_size(tmp / "xla")
            result["runs"].append(r)
            print(f"run {i + 1}: {r['wall_s']:.1f} s, cache {r['cache_files']} files "
                  f"({r['cache_bytes'] / 1e6:.1f} MB)", flush=True)
        if args.no_cache_run:
            r = run_once(args.site, tmp / "out_nocache", {**env, "REGV1_NO_CACHE": "1"})
            result["no_cache_run"] = r
            print(f"REGV1_NO_CACHE=1: {r['wall_s']:.1f} s", flush=True)
    first, second = result["runs"][0]["wall_s"], result["runs"][-1]["wall_s"]
    result["ratio_second_to_first"] = round(second / first, 3)
    result["goal"] = "second run < 0.5 x first run"
    result["goal_met"] = bool(second < 0.5 * first)
    result["loadavg_end"] = loadavg()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"second/first = {result['ratio_second_to_first']:.2f} "
          f"(goal < 0.5: {'met' if result['goal_met'] else 'NOT met'}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
