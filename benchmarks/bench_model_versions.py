"""Model v2 against model v1 on the same forward work, same machine, same run.

    python benchmarks/bench_model_versions.py [--ref 625e129] [--B 10000] [--repeats 5]

Issue 8 asks that the new vegetation equations (water-limited growth, stress mortality,
drought mortality, infiltration feedback, smooth caps) keep the forward ensemble as fast as
before.  The reference model is checked out from git (``--ref``, default the last commit
of model v1) into a temporary worktree; each version runs in its own fresh Python process
(its own package on ``PYTHONPATH``), candidates interleaved, median of ``--repeats``:

* ``vmap_rk4``: ``jit(vmap(simulate(method="rk4")))`` — the same solver code in both
  versions, so the ratio isolates the cost of the right-hand side and the initial state;
* ``ensemble``: each version's own ``simulate_ensemble`` (the library default; the committed
  result predates the generated C++ kernel, so both versions ran the batch-last XLA path).

Problem: Yanhe 1995-2015 (21 years), RK4 12 steps/yr, float32, B LoessPlateau prior draws.
Writes ``benchmarks/results/model_versions_<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import run_header  # noqa: E402

V1_REF = "625e129"  # rate_terms refactor, last commit of model v1

SNIPPET = r"""
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
import regv1_jax as r
B, which = int(sys.argv[1]), sys.argv[2]
space = r.load_param_space("LoessPlateau")
draws = space.sample_prior(jax.random.PRNGKey(0), B, dtype=jnp.float32)
f = r.make_forcing(1995, 2015, rainfall=450.0, intensity=1.0,
                   psi_plant=r.grain_for_green(1995, 2015, 1999)).astype(jnp.float32)
if which == "vmap_rk4":
    fn = jax.jit(jax.vmap(lambda q: r.simulate(q, f, method="rk4", steps_per_year=12).V))
    run = lambda: fn(draws)
else:
    run = lambda: r.simulate_ensemble(draws, f, steps_per_year=12).V
t = time.perf_counter(); jax.block_until_ready(run()); compile_s = time.perf_counter() - t
times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter(); jax.block_until_ready(run()); times.append(time.perf_counter() - t)
print(json.dumps({"first_call_s": compile_s, "times_s": times,
                  "solves_per_s": B / float(np.median(times)), "file": r.__file__}))
"""


def _run(tree: Path, B: int, which: str, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", SNIPPET, str(B), which, str(repeats)],
                         env=env, cwd=tree, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default=V1_REF)
    ap.add_argument("--B", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds per candidate")
    args = ap.parse_args()
    header = run_header()
    root = HERE.parent
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "v1"
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(old),
                        args.ref], check=True, capture_output=True)
        try:
            rows = []
            for rnd in range(args.rounds):
                for which in ("vmap_rk4", "ensemble"):
                    for name, tree in (("v1", old), ("v2", root)):
                        res = _run(tree, args.B, which, args.repeats)
                        res.update(model=name, path=which, round=rnd)
                        rows.append(res)
                        print(f"{which:9s} {name}: {res['solves_per_s']:>10,.0f} solves/s "
                              f"(first call {res['first_call_s']:.1f} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(old)],
                           check=False, capture_output=True)
    summary = {}
    for which in ("vmap_rk4", "ensemble"):
        best = {m: max(r["solves_per_s"] for r in rows if r["model"] == m and r["path"] == which)
                for m in ("v1", "v2")}
        summary[which] = dict(best, ratio_v2_over_v1=best["v2"] / best["v1"])
        print(f"{which}: v2/v1 = {summary[which]['ratio_v2_over_v1']:.2f} "
              f"(best of rounds: v1 {best['v1']:,.0f}, v2 {best['v2']:,.0f} solves/s)")
    doc = dict(header, ref=args.ref, B=args.B, dtype="float32", steps_per_year=12, years=21,
               rows=rows, summary=summary)
    path = HERE / "results" / f"model_versions_{header['machine']['host']}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
