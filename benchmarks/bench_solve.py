"""Forward-ensemble throughput of ``regv1_jax.simulate`` against scipy ``solve_ivp``.

    python benchmarks/bench_solve.py [--sizes 1,1000,10000,100000] [--dtype float32|float64]
                                     [--steps-per-year 12] [--out benchmarks/results/...json]

What is timed (LoessPlateau prior draws, Grain-for-Green planting, 1995-2015 = 21 years):

* ``jax_rk4``: the library's ensemble path,
  ``jax.jit(jax.vmap(lambda q: simulate(q, forcing, method="rk4", steps_per_year=S)))``;
  compile time (lower + compile) is reported apart, then one warm-up call, then the best of
  several repeats, each ending in ``block_until_ready``.
* ``jax_ensemble``: ``regv1_jax.simulate_ensemble`` (where the library has it): the same RK4
  with the batch on the last axis, in cache-sized chunks; ``..._sharded<k>`` splits the
  batch over the ``k`` CPU devices (one per core) with ``shard_map``.
* ``jax_rk4_db_fast`` (``--variants``, on by default): the candidate from
  ``benchmarks/rk4_variants.py`` - batch on the last axis, cheap transcendentals, hoisted
  constants - on one XLA device, and ``..._chunked_sharded`` with the batch split over every
  CPU device (the script asks XLA for one host device per core unless ``XLA_FLAGS`` already
  sets it) and run in cache-sized chunks (``--chunk``) on each.
* ``diffrax_tsit5_vmap``: the adaptive diffrax path vmapped naively over ``--naive-size``
  draws (default tolerances of the dtype).
* the peer: scipy ``solve_ivp`` on the numpy right-hand side (``vector_field_numpy``, fed
  plain namespaces rather than ``eqx.Module``s, which halves its cost),
  restarted at every year boundary as a user must with yearly forcings, ``RK45`` at
  rtol 1e-6 / atol 1e-9 and ``LSODA`` at the same tolerances, timed on ``--scipy-sample``
  draws and scaled linearly to every ensemble size.
* accuracy, on ``--accuracy-draws`` draws: the rk4 path (and the scipy peers) against a
  tight float64 diffrax Tsit5 solve (rtol 1e-10, atol 1e-12): max relative error of the
  annual runoff and of mid-year V.

The JSON result holds the machine, the JAX devices, the dtype, the package versions and all
the numbers; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent


def _ensure_host_devices():
    """One XLA host device per core, so that the sharded variant can use every core.

    This must happen before jax is imported; an explicit XLA_FLAGS setting wins.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        n = os.cpu_count() or 1
        os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,1000,10000,100000",
                    help="comma-separated ensemble sizes (default 1,1000,10000,100000)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps-per-year", type=int, default=12)
    ap.add_argument("--out", default=None, help="JSON path (default "
                    "benchmarks/results/solve_<host>_<device>_<dtype>.json)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats (best is kept)")
    ap.add_argument("--max-seconds", type=float, default=20.0,
                    help="stop repeating a case once this much time was spent on it")
    ap.add_argument("--scipy-sample", type=int, default=50)
    ap.add_argument("--naive-size", type=int, default=1000,
                    help="draws for the naive vmap of adaptive diffrax Tsit5 (0 to skip)")
    ap.add_argument("--accuracy-draws", type=int, default=8)
    ap.add_argument("--variants", action=argparse.BooleanOptionalAction, default=True,
                    help="also time the candidate variants of benchmarks/rk4_variants.py")
    ap.add_argument("--chunk", type=int, default=4096,
                    help="chunk size (per device) of the chunked, sharded variant")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------
# machine / versions
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# timing helpers
# --------------------------------------------------------------------------------------------
def time_compiled(fn, args, repeats, max_seconds):
    """Compile ``fn`` (a jitted callable) for ``args``.

    Returns ``(compile_s, best_wall_s, best_cpu_s, out)``: the best wall time of the repeats,
    and the least process CPU time (all threads) of a repeat.  On a shared machine the CPU
    time is the contention-robust figure: ``n / cpu_s`` is the throughput per busy core.
    """
    import jax

    t = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t
    out = jax.block_until_ready(compiled(*args))  # warm-up
    best = best_cpu = float("inf")
    spent = 0.0
    for _ in range(max(1, repeats)):
        c = time.process_time()
        t = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        dt = time.perf_counter() - t
        best_cpu = min(best_cpu, time.process_time() - c)
        best = min(best, dt)
        spent += dt
        if spent > max_seconds:
            break
    return compile_s, best, best_cpu, out


def light_inputs(p_np, f_np):
    """Parameters and forcing in plain namespaces for the scipy peer.

    ``vector_field_numpy`` only reads attributes, and attribute access on an ``eqx.Module``
    costs microseconds; with plain namespaces the same numpy right-hand side runs ~2x faster.
    """
    from types import SimpleNamespace

    from regv1_jax._params import PARAM_NAMES

    p = SimpleNamespace(**{k: float(getattr(p_np, k)) for k in PARAM_NAMES})
    f = SimpleNamespace(rainfall=f_np.rainfall, intensity=f_np.intensity,
                        psi_plant=f_np.psi_plant, psi_eng=f_np.psi_eng, index=f_np.index,
                        n_years=f_np.n_years)
    return p, f


def scipy_yearly_grid(p_np, f_np, layout, method, rtol, atol, stats=None):
    """What a user writes: one ``solve_ivp`` per year (forcing constant), output at mid/end."""
    import numpy as np
    from scipy.integrate import solve_ivp

    from regv1_jax._model import initial_state, vector_field_numpy

    y = np.asarray(initial_state(p_np, layout, xp=np), dtype=np.float64)
    grid = [y]
    for k in range(f_np.n_years):
        def rhs(_t, yy, tau=k + 0.5):
            return vector_field_numpy(tau, yy, p_np, f_np, layout)

        sol = solve_ivp(rhs, (float(k), float(k + 1)), y, method=method, rtol=rtol, atol=atol,
                        t_eval=[k + 0.5, k + 1.0])
        if not sol.success:
            raise RuntimeError(sol.message)
        if stats is not None:
            stats["nfev"] = stats.get("nfev", 0) + sol.nfev
        grid += [sol.y[:, 0], sol.y[:, 1]]
        y = sol.y[:, 1]
    return np.stack(grid)


def annual_from_grid(ys, p_np, f_np, layout):
    """Annual runoff and mid-year V from a numpy half-year grid (as ``observe`` defines them)."""
    return dict(V=ys[1::2, layout.V], runoff=ys[2::2, layout.Q] - ys[0:-1:2, layout.Q])


def max_rel(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.nanmax(np.abs(a - b) / np.abs(b)))


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def run(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)  # the accuracy reference is float64

    import regv1_jax as r
    from regv1_jax._model import Layout

    sys.path.insert(0, str(HERE))
    import rk4_variants as variants

    dtype = jnp.float32 if args.dtype == "float32" else jnp.float64
    S = args.steps_per_year
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    space = r.load_param_space("LoessPlateau")
    forcing = r.make_forcing(1995, 2015, rainfall=450.0, intensity=1.0,
                             psi_plant=r.grain_for_green(1995, 2015))
    f_dt = forcing.astype(dtype)
    layout = Layout()
    key = jax.random.PRNGKey(args.seed)
    devices = jax.devices()
    n_dev = len(devices)

    result = dict(
        benchmark="regv1_jax forward ensemble, LoessPlateau prior, Grain for Green, 1995-2015",
        n_years=forcing.n_years,
        dtype=args.dtype,
        steps_per_year=S,
        **run_header(),
        cases=[],
    )
    print(f"# {result['machine']['cpu_model']}, {result['machine']['cpu_count']} cores, "
          f"jax {result['versions']['jax']} on {result['jax_backend']} ({n_dev} device(s)), "
          f"{args.dtype}, rk4 {S} steps/yr, load {result['loadavg_start']}", flush=True)

    def record(name, n, compile_s, best_s, cpu_s, out=None, **extra):
        case = dict(name=name, n=n, compile_s=compile_s, run_s=best_s, cpu_s=cpu_s,
                    solves_per_s=n / best_s, solves_per_cpu_s=n / max(cpu_s, 1e-9), **extra)
        if out is not None:
            status = np.asarray(out.status)
            case["failed"] = int(np.sum(status != 0))
        result["cases"].append(case)
        print(f"  {name:<26s} n={n:>7d}  compile {compile_s:6.2f} s  run {best_s * 1e3:10.2f} ms"
              f"  {n / best_s:10.0f} solves/s  ({case['solves_per_cpu_s']:8.0f} per cpu-s)"
              + (f"  failed {case.get('failed', 0)}" if out is not None else ""), flush=True)
        return case

    # ---- the library rk4 ensemble path ---------------------------------------------------
    lib = jax.jit(jax.vmap(lambda q: r.simulate(q, f_dt, method="rk4", steps_per_year=S)))
    db_fast = jax.jit(lambda q: variants.simulate_db(q, f_dt, steps_per_year=S, fast=True))
    db_fast_sh = jax.jit(variants.sharded(variants.chunked(
        lambda q: variants.simulate_db(q, f_dt, steps_per_year=S, fast=True), args.chunk)))
    has_ens = hasattr(r, "simulate_ensemble")
    if has_ens:
        ens = jax.jit(lambda q: r.simulate_ensemble(q, f_dt, steps_per_year=S))
        ens_sh = jax.jit(variants.sharded(
            lambda q: r.simulate_ensemble(q, f_dt, steps_per_year=S)))
    for n in sizes:
        draws = space.sample_prior(jax.random.fold_in(key, n), n, dtype=dtype)
        c, b, cpu, out = time_compiled(lib, (draws,), args.repeats, args.max_seconds)
        record("jax_rk4", n, c, b, cpu, out)
        if has_ens:
            c, b, cpu, out = time_compiled(ens, (draws,), args.repeats, args.max_seconds)
            record("jax_ensemble", n, c, b, cpu, out)
            if n_dev > 1 and n % n_dev == 0:
                c, b, cpu, out = time_compiled(ens_sh, (draws,), args.repeats,
                                               args.max_seconds)
                record(f"jax_ensemble_sharded{n_dev}", n, c, b, cpu, out, devices=n_dev)
        if args.variants:
            c, b, cpu, out = time_compiled(db_fast, (draws,), args.repeats, args.max_seconds)
            record("jax_rk4_db_fast", n, c, b, cpu, out)
            if n_dev > 1 and n % n_dev == 0:
                c, b, cpu, out = time_compiled(db_fast_sh, (draws,), args.repeats, args.max_seconds)
                record(f"jax_rk4_db_fast_chunked_sharded{n_dev}", n, c, b, cpu, out,
                       devices=n_dev, chunk=args.chunk)
        del draws, out

    # ---- naive vmap of adaptive diffrax --------------------------------------------------
    if args.naive_size > 0:
        n = args.naive_size
        draws = space.sample_prior(jax.random.fold_in(key, 7), n, dtype=dtype)
        naive = jax.jit(jax.vmap(lambda q: r.simulate(q, f_dt, method="tsit5")))
        c, b, cpu, out = time_compiled(naive, (draws,), min(args.repeats, 3), args.max_seconds)
        record("diffrax_tsit5_vmap", n, c, b, cpu, out,
               note="adaptive Tsit5, default tolerances of the dtype, vmapped")

    # ---- the scipy peer ------------------------------------------------------------------
    from regv1_jax._model import initial_state, vector_field_numpy

    m = args.scipy_sample
    sample = space.sample_prior(jax.random.fold_in(key, 11), m, dtype=jnp.float64)
    f_np = forcing.numpy()
    p_list = [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i], dtype=np.float64), sample)
              for i in range(m)]
    light = [light_inputs(p_np, f_np) for p_np in p_list]
    # The light containers must give the very same right-hand side.
    y0 = initial_state(p_list[0], layout, xp=np)
    assert np.array_equal(vector_field_numpy(0.5, y0, p_list[0], f_np, layout),
                          vector_field_numpy(0.5, y0, *light[0], layout))
    t = time.perf_counter()
    reps = 200
    for _ in range(reps):
        vector_field_numpy(0.5, y0, *light[0], layout)
    rhs_us = (time.perf_counter() - t) / reps * 1e6
    scipy_rates = {}
    for method in ("RK45", "LSODA"):
        failed = 0
        stats = {}
        c0 = time.process_time()
        t = time.perf_counter()
        for p_l, f_l in light:
            try:
                scipy_yearly_grid(p_l, f_l, layout, method, 1e-6, 1e-9, stats)
            except RuntimeError:
                failed += 1
        dt = time.perf_counter() - t
        cpu = time.process_time() - c0
        rate = m / dt
        scipy_rates[method] = rate
        nfev = stats.get("nfev", 0) / m
        result["cases"].append(dict(name=f"scipy_{method}", n=m, compile_s=0.0, run_s=dt,
                                    solves_per_s=rate, cpu_s=cpu, solves_per_cpu_s=m / cpu,
                                    failed=failed, rtol=1e-6, atol=1e-9,
                                    rhs_evals_per_solve=nfev, rhs_us=rhs_us,
                                    note="one solve_ivp per year; timed on the sample, "
                                         "scaled linearly to each size"))
        print(f"  scipy {method:<20s} n={m:>7d}  run {dt:8.2f} s  {rate:12.1f} solves/s  "
              f"({dt / m * 1e3:.1f} ms/solve, {nfev:.0f} rhs evals of {rhs_us:.0f} us)",
              flush=True)

    # ---- accuracy ------------------------------------------------------------------------
    k = args.accuracy_draws
    acc_draws = space.sample_prior(jax.random.fold_in(key, 13), k, dtype=jnp.float64)
    tight = jax.jit(jax.vmap(lambda q: r.simulate(q, forcing.astype(jnp.float64),
                                                  method="tsit5", rtol=1e-10, atol=1e-12)))
    ref = tight(acc_draws)
    rk4 = lib(acc_draws.astype(dtype))
    acc = dict(reference="diffrax tsit5 float64 rtol 1e-10 atol 1e-12", draws=k,
               rk4=dict(runoff=max_rel(rk4.runoff, ref.runoff), V=max_rel(rk4.V, ref.V)))
    if has_ens:
        v = ens(acc_draws.astype(dtype))
        acc["ensemble"] = dict(runoff=max_rel(v.runoff, ref.runoff), V=max_rel(v.V, ref.V))
    if args.variants:
        v = db_fast(acc_draws.astype(dtype))
        acc["rk4_db_fast"] = dict(runoff=max_rel(v.runoff, ref.runoff), V=max_rel(v.V, ref.V))
    for method in ("RK45", "LSODA"):
        errs_q, errs_v = [], []
        for i in range(k):
            p_np = jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i]), acc_draws)
            ys = scipy_yearly_grid(*light_inputs(p_np, f_np), layout, method, 1e-6, 1e-9)
            a = annual_from_grid(ys, p_np, f_np, layout)
            errs_q.append(max_rel(a["runoff"], ref.runoff[i]))
            errs_v.append(max_rel(a["V"], ref.V[i]))
        acc[f"scipy_{method}"] = dict(runoff=max(errs_q), V=max(errs_v))
    result["accuracy"] = acc
    print("  accuracy (max rel. error vs tight float64 Tsit5):", flush=True)
    for name, e in acc.items():
        if isinstance(e, dict):
            print(f"    {name:<22s} runoff {e['runoff']:.2e}   V {e['V']:.2e}")

    # ---- summary table -------------------------------------------------------------------
    rows = []
    by = {(c["name"], c["n"]): c for c in result["cases"]}
    jax_names = sorted({c["name"] for c in result["cases"] if c["name"].startswith("jax_")},
                       key=lambda s: (len(s), s))
    for n in sizes:
        row = dict(n=n)
        for name in jax_names:
            if (name, n) in by:
                row[name] = by[(name, n)]["solves_per_s"]
                row[f"{name}_per_cpu_s"] = by[(name, n)]["solves_per_cpu_s"]
        for method, rate in scipy_rates.items():
            row[f"scipy_{method}"] = rate
            row[f"scipy_{method}_time_s"] = n / rate
            if "jax_rk4" in row:
                row[f"speedup_jax_rk4_vs_{method}"] = row["jax_rk4"] / rate
        rows.append(row)
    result["summary"] = rows
    best = max((c for c in result["cases"] if c["name"].startswith("jax_")),
               key=lambda c: c["solves_per_s"])
    result["goal"] = dict(target_solves_per_s=200_000, dtype=args.dtype,
                          best_case=best["name"], best_n=best["n"],
                          best_solves_per_s=best["solves_per_s"],
                          met=best["solves_per_s"] >= 200_000)
    result["loadavg_end"] = loadavg()

    print()
    head = ["n"] + jax_names + [f"scipy_{m}" for m in scipy_rates] + \
        [f"jax_rk4/scipy_{m}" for m in scipy_rates]
    widths = [max(len(h), 9) for h in head]
    print(" | ".join(f"{h:>{w}s}" for h, w in zip(head, widths)))
    for row in rows:
        vals = [row["n"]] + [row.get(nm, float("nan")) for nm in jax_names] + \
            [row[f"scipy_{m}"] for m in scipy_rates] + \
            [row.get(f"speedup_jax_rk4_vs_{m}", float("nan")) for m in scipy_rates]
        cells = [f"{val:>{w}.0f}" if isinstance(val, float) and val >= 100 else
                 (f"{val:>{w}.2f}" if isinstance(val, float) else f"{val:>{w}d}")
                 for val, w in zip(vals, widths)]
        print(" | ".join(cells))
    print()
    print(markdown_table(result))
    print(f"\nbest: {best['name']} at n={best['n']}: {best['solves_per_s']:.0f} solves/s "
          f"({args.dtype}); goal 200000/s {'met' if result['goal']['met'] else 'not met'}; "
          f"load {result['loadavg_start']} -> {result['loadavg_end']}")
    return result


def markdown_table(result):
    """The summary as a markdown table (solves/s; the README pastes it)."""
    rows = result["summary"]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    names = [k for k in keys if k.startswith("jax_") and not k.endswith("_per_cpu_s")]
    names += [k for k in keys if k.startswith("scipy_") and not k.endswith("_time_s")]
    lines = ["| n | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{row[k]:,.0f}" if row.get(k, 0) >= 100 else f"{row.get(k, float('nan')):.1f}"
                 for k in names]
        lines.append(f"| {row['n']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    _ensure_host_devices()
    result = run(args)
    import jax

    out = args.out
    if out is None:
        dev = jax.devices()[0].platform
        host = socket.gethostname().split(".")[0]
        out = HERE / "results" / f"solve_{host}_{dev}_{args.dtype}.json"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
