"""Resident memory of a streamed 1M-run evaluation: bounded by one chunk.

    python benchmarks/bench_evaluate_memory.py [--n 1048576] [--chunk 65536]

``regv1_jax.analysis.evaluate`` with parameters built per chunk (prior draws) and the QoI
``V:2015`` (Yanhe-basin, 1995-2015, float32): the peak RSS after one chunk and after all
``n`` runs, the run rate, into ``results/evaluate_memory_<host>.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, run_header  # noqa: E402
from bench_solve import _ensure_host_devices  # noqa: E402

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--chunk", type=int, default=65536)
    args = ap.parse_args(argv)
    _ensure_host_devices()
    import jax
    import jax.numpy as jnp

    import regv1_jax as r
    from regv1_jax.analysis import QoIContext, evaluate, make_qoi
    from regv1_jax.io import get_site, site_forcing

    result = run_header()
    site = get_site("Yanhe-basin")
    space = r.load_param_space(site.region)
    forcing = site_forcing(site, 1995, 2015)
    q = make_qoi("V:2015", QoIContext(1995, 2015, site.planting_start, site.MAP_mm))

    def make(lo, hi):
        return space.sample_prior(jax.random.fold_in(jax.random.PRNGKey(0), lo), hi - lo,
                                  dtype=jnp.float32)

    def rss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    evaluate(make, forcing, q, n=args.chunk, chunk=args.chunk)
    one = rss_mb()
    t = time.perf_counter()
    ev = evaluate(make, forcing, q, n=args.n, chunk=args.chunk)
    dt = time.perf_counter() - t
    result.update(n=args.n, chunk=args.chunk, dtype="float32", qoi=q.name, years="1995-2015",
                  peak_rss_mb_after_one_chunk=one, peak_rss_mb_after_all=rss_mb(),
                  seconds=dt, runs_per_s=args.n / dt, failed=ev.n_failed,
                  loadavg_end=loadavg())
    print(f"{args.n} runs in chunks of {args.chunk}: {dt:.1f}s ({args.n / dt:,.0f} runs/s), "
          f"{ev.n_failed} failed; peak RSS {one:.0f} MB after one chunk, {rss_mb():.0f} MB "
          f"after all")
    out = HERE / "results" / f"evaluate_memory_{socket.gethostname()}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
