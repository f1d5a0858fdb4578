"""Many sites in one compiled call against one site and against a loop of single-site fits.

    python benchmarks/bench_multisite.py [--sites 12] \
        [--out benchmarks/results/multisite_<host>.json]

The bundled-style synthetic MAP gradient (``science.synthetic_gradient``, written to a
temporary folder; labelled synthetic) calibrated with ``science.GRADIENT_CONFIG`` (float64,
the default solver and optimiser, 8 starts per stage):

* ``many``: ``science.calibrate_many`` of all sites (one ``fit_sites`` call per region);
* ``one``: ``calibrate_many`` of the first site alone;
* ``loop``: ``calibrate_many`` of each site alone, one after another (what a user without
  the batched call would run).

Each is timed on its first call in this process (compilation included) and warm (its second
call), and ``one`` and ``many`` also in a fresh Python process each (imports, tracing and
compilation included: what a user's script pays; the built CPU kernels are on disk).  The
ratios to read are ``many / one`` (goal < 3 for 12 sites) and ``loop / many``.
The scipy peer of one site's staged fit is ``bench_main_job.py``'s (the per-site cost does
not change with batching).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=12)
    ap.add_argument("--out", default=str(HERE / "results" /
                                         f"multisite_{socket.gethostname()}.json"))
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    from _machine import run_header

    from regv1_jax import fit, science

    tmp = Path(tempfile.mkdtemp(prefix="regv1_multisite_"))
    maps = science.GRADIENT_MAPS if args.sites == 12 else tuple(
        float(x) for x in __import__("numpy").linspace(200, 700, args.sites))
    table = science.synthetic_gradient(tmp, maps=maps)
    specs = science.read_sites_table(table)
    cfg = fit.CalibrationConfig(**science.GRADIENT_CONFIG)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    res: dict = {**run_header(), "what": __doc__.splitlines()[0], "n_sites": len(specs),
                 "config": dict(science.GRADIENT_CONFIG), "dtype": "float64"}
    for key, fn in (
        ("one", lambda: science.calibrate_many(specs[:1], cfg, identifiability=False)),
        ("many", lambda: science.calibrate_many(specs, cfg, identifiability=False)),
        ("loop", lambda: [science.calibrate_many([s], cfg, identifiability=False)[0]
                          for s in specs]),
    ):
        first, _ = timed(fn)
        warm, cals = timed(fn)
        res[key] = {"first_call_s": first, "warm_s": warm}
        print(f"{key:5s}: first call {first:7.2f} s, warm {warm:7.2f} s", flush=True)
    for key, n in (("one", 1), ("many", len(specs))):
        code = ("import time, jax; t = time.perf_counter(); jax.config.update("
                "'jax_enable_x64', True); from regv1_jax import fit, science; "
                f"specs = science.read_sites_table({str(table)!r})[:{n}]; "
                "cfg = fit.CalibrationConfig(**science.GRADIENT_CONFIG); "
                "science.calibrate_many(specs, cfg, identifiability=False); "
                "print(time.perf_counter() - t)")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        res[key]["fresh_process_s"] = time.perf_counter() - t
        res[key]["fresh_process_in_script_s"] = float(out.stdout.strip().splitlines()[-1])
        print(f"{key:5s}: fresh process {res[key]['fresh_process_s']:7.2f} s", flush=True)
    res["many_over_one_fresh_process"] = (res["many"]["fresh_process_s"]
                                          / res["one"]["fresh_process_s"])
    many_loss = [float(c.stages[-1].final_loss) for c in
                 science.calibrate_many(specs, cfg, identifiability=False)]
    loop_loss = [float(c.stages[-1].final_loss) for c in cals]
    res["final_losses_many"], res["final_losses_loop"] = many_loss, loop_loss
    res["many_over_one_warm"] = res["many"]["warm_s"] / res["one"]["warm_s"]
    res["many_over_one_first"] = res["many"]["first_call_s"] / res["one"]["first_call_s"]
    res["loop_over_many_warm"] = res["loop"]["warm_s"] / res["many"]["warm_s"]
    print(f"many / one: {res['many_over_one_warm']:.2f} warm (goal < 3), "
          f"{res['many_over_one_first']:.2f} first call; loop / many: "
          f"{res['loop_over_many_warm']:.2f} warm; many / one in fresh processes: "
          f"{res['many_over_one_fresh_process']:.2f}", flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
