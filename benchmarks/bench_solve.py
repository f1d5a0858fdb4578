"""Forward-ensemble throughput: ``simulate_ensemble`` against numpy, numba, scipy, diffrax.

    python benchmarks/bench_solve.py [--sizes 1000,10000,100000] [--dtype float32|float64]
                                     [--repeats 5] [--out benchmarks/results/...json]

The problem: LoessPlateau prior draws (``space.sample_prior``), Grain-for-Green planting,
1995-2015 = 21 years, fixed-step RK4 with 12 steps per year, annual outputs.

Rows (all in one run; the candidates of one size are *interleaved*: every repeat times each
candidate once, and the table holds the median of the repeats, so that load from other
processes on a shared machine hits every row alike):

* ``ensemble``: ``regv1_jax.simulate_ensemble(draws, forcing)``, the default call (on CPU
  the generated C++ kernel, one call whose OpenMP threads use every core; see
  ``regv1_jax.solve``).
* ``ensemble_xla``: ``simulate_ensemble(..., kernel=False)``: the pure-XLA path (batch-last
  state in ``lax.scan``, L2-sized chunks, sharded over the XLA devices) - what a GPU runs.
  The script exposes one XLA host device per core unless ``XLA_FLAGS`` says otherwise.
* ``vmap_rk4``: ``jax.jit(jax.vmap(lambda q: simulate(q, forcing, method="rk4")))``.
* ``numpy_rk4``: RK4 vectorised over the batch with numpy on ``rate_terms(xp=numpy)``.
* ``numba_rk4``: RK4 per member with a hand-written numba right-hand side, ``prange``.
  Both peers are first checked against ``simulate_ensemble`` on the same members (float64,
  1e-6 relative): a model change that the peers miss stops the benchmark.
* ``diffrax_tsit5_vmap``: adaptive diffrax Tsit5 vmapped naively (``--naive-size`` draws).
* ``scipy_RK45``, ``scipy_LSODA``: ``solve_ivp`` per member, restarted every year
  (``--scipy-sample`` draws, scaled linearly).

Also: small-batch latency of the default call (B = 1 and 64, median of many calls after
compilation), compile times, the loop fusions per right-hand-side evaluation of the XLA path,
accuracy against a tight float64 Tsit5 solve.  The JSON holds the machine, the devices, the
XLA flags, the versions, the load average before and after, and every number.
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
import _hlo  # noqa: E402
from _machine import loadavg, run_header  # noqa: E402

HERE = Path(__file__).resolve().parent


def _ensure_host_devices():
    """One XLA host device per core (before jax is imported); an explicit XLA_FLAGS wins."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        n = os.cpu_count() or 1
        os.environ["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={n}").strip()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--steps-per-year", type=int, default=12)
    ap.add_argument("--out", default=None, help="JSON path (default "
                    "benchmarks/results/solve_<host>_<device>_<dtype>.json)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repeats (median kept)")
    ap.add_argument("--max-seconds", type=float, default=30.0,
                    help="a candidate slower than this per call is timed once")
    ap.add_argument("--latency-calls", type=int, default=200)
    ap.add_argument("--scipy-sample", type=int, default=30)
    ap.add_argument("--naive-size", type=int, default=1000)
    ap.add_argument("--accuracy-draws", type=int, default=8)
    ap.add_argument("--skip", default="", help="comma list of rows to leave out")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def light_inputs(p_np, f_np):
    """Parameters and forcing in plain namespaces for the scipy peer.

    ``vector_field_numpy`` only reads attributes, and attribute access on an ``eqx.Module``
    costs microseconds; with plain namespaces the same numpy right-hand side runs ~2x faster.
    """
    from types import SimpleNamespace

    from regv1_jax.model import PARAM_NAMES

    p = SimpleNamespace(**{k: float(getattr(p_np, k)) for k in PARAM_NAMES})
    f = SimpleNamespace(rainfall=f_np.rainfall, intensity=f_np.intensity,
                        psi_plant=f_np.psi_plant, psi_eng=f_np.psi_eng, index=f_np.index,
                        n_years=f_np.n_years)
    return p, f


def scipy_yearly_grid(p_np, f_np, layout, method, rtol, atol, stats=None):
    """What a user writes: one ``solve_ivp`` per year (forcing constant), output at mid/end."""
    import numpy as np
    from scipy.integrate import solve_ivp

    from regv1_jax.model import initial_state, vector_field_numpy, year_drivers

    y = np.asarray(initial_state(p_np, year_drivers(p_np, f_np), layout, xp=np),
                   dtype=np.float64)
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


def grid_outputs(ys, layout):
    """Annual runoff and mid-year V from grids ``(G, D, B)``: ``(B, years)`` each."""
    import numpy as np

    ys = np.asarray(ys, dtype=np.float64)
    return dict(V=ys[1::2, layout.V].T, runoff=(ys[2::2, layout.Q] - ys[0:-1:2, layout.Q]).T)


def check_peers(space, forcing, layout, S, key):
    """The numpy and numba peers must solve the library's model: float64, 1e-6 relative."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import peers

    import regv1_jax as r

    d = space.sample_prior(jax.random.fold_in(key, 17), 16, dtype=jnp.float64)
    lib = r.simulate_ensemble(d, forcing, steps_per_year=S)
    out = {}
    for name, fn in (("numpy_rk4", peers.numpy_rk4), ("numba_rk4", peers.numba_rk4)):
        g = grid_outputs(fn(d, forcing, layout, S, np.float64), layout)
        err = max(max_rel(g[k], getattr(lib, k)) for k in ("V", "runoff"))
        out[name] = err
        if not err < 1e-6:
            raise SystemExit(f"{name} disagrees with simulate_ensemble (max rel {err:.2e}): "
                             "the peer no longer solves the library's model; update "
                             "benchmarks/peers.py before timing it")
    return out


def interleaved(cands, repeats, max_seconds, cpu=None):
    """Median wall time per candidate over ``repeats`` rounds, each timing every candidate.

    ``cpu`` (a dict) receives the median process CPU time (all threads) per candidate: on a
    shared machine ``n / cpu_s`` holds up better than wall time.
    """
    import numpy as np

    times = {k: [] for k in cands}
    cpus = {k: [] for k in cands}
    for i in range(repeats):
        for k, fn in cands.items():
            if i > 0 and times[k] and times[k][0] > max_seconds:
                continue
            c = time.process_time()
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
            cpus[k].append(time.process_time() - c)
    if cpu is not None:
        cpu.update({k: float(np.median(v)) for k, v in cpus.items()})
    return {k: (float(np.median(v)), float(np.min(v)), len(v)) for k, v in times.items()}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def run(args):
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)  # the accuracy reference is float64

    import peers

    import regv1_jax as r
    from regv1_jax.model import Layout

    dtype = jnp.float32 if args.dtype == "float32" else jnp.float64
    np_dtype = np.float32 if args.dtype == "float32" else np.float64
    S = args.steps_per_year
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    skip = set(filter(None, args.skip.split(",")))
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
        n_years=forcing.n_years, dtype=args.dtype, steps_per_year=S, **run_header(),
        timing=f"candidates interleaved, median of {args.repeats} repeats (min also kept); "
               "the machine may be shared: see loadavg_start/loadavg_end",
        cases=[])
    print(f"# {result['machine']['cpu_model']}, {result['machine']['cpu_count']} cores, "
          f"jax {result['versions']['jax']} on {result['jax_backend']} ({n_dev} device(s)), "
          f"{args.dtype}, rk4 {S} steps/yr, load {result['loadavg_start']}", flush=True)

    # ---- the peers solve the library's model ---------------------------------------------
    result["peer_check_max_rel"] = check_peers(space, forcing, layout, S, key)
    print(f"  peers agree with simulate_ensemble: {result['peer_check_max_rel']}", flush=True)

    # ---- loop kernels per right-hand-side evaluation --------------------------------------
    probe = space.sample_prior(jax.random.fold_in(key, 3), 1024, dtype=dtype)
    hlo = r.solve.ensemble_hlo(probe, f_dt, steps_per_year=S, kernel=False)
    vm_hlo = jax.jit(jax.vmap(lambda q: r.simulate(q, f_dt, method="rk4", steps_per_year=S))
                     ).lower(probe).compile().as_text()
    from regv1_jax.solve import kernel as _kernel

    target = _kernel.target(probe, layout, dtype)
    result["fusions_per_rhs_evaluation"] = dict(
        xla_batch_last=_hlo.loop_body_fusions(hlo) / (4 * S),  # body = one year
        vmap_rk4=_hlo.loop_body_fusions(vm_hlo) / 4,  # body = one RK4 step
        kernel="one pass over each block of members per evaluation (generated C++; the time "
               "loop is one XLA custom call)" if target else "kernel not available")
    print(f"  loop fusions per rhs evaluation: {result['fusions_per_rhs_evaluation']}",
          flush=True)
    # The kernel's hoisting: scalar equations of rate_terms by what they depend on; without
    # hoisting every one of them runs at each of the 4 S evaluations of a year.
    eqs = _kernel.rhs_source(jax.tree_util.tree_structure(probe), layout, dtype)["equations"]
    result["kernel_equations"] = dict(
        eqs, before_hoisting_per_evaluation=eqs["per_member"] + eqs["per_year"]
        + eqs["per_evaluation"], after_hoisting_per_evaluation=eqs["per_evaluation"],
        note="per_member: parameter-only terms, once per member; per_year: terms of the "
             "parameters and the year's drivers; hoisted_loads: values the evaluation reads "
             "back instead of recomputing")
    print(f"  kernel equations: {result['kernel_equations']}", flush=True)
    del probe, hlo, vm_hlo

    # ---- small-batch latency of the default call -----------------------------------------
    lat = {}
    for n in (1, 64):
        d = space.sample_prior(jax.random.fold_in(key, 100 + n), n, dtype=dtype)
        t = time.perf_counter()
        jax.block_until_ready(r.simulate_ensemble(d, forcing, steps_per_year=S))
        first = time.perf_counter() - t
        ts = []
        for _ in range(args.latency_calls):
            t = time.perf_counter()
            jax.block_until_ready(r.simulate_ensemble(d, forcing, steps_per_year=S))
            ts.append(time.perf_counter() - t)
        lat[str(n)] = dict(first_call_s=first, median_ms=1e3 * float(np.median(ts)),
                           p10_ms=1e3 * float(np.percentile(ts, 10)),
                           p90_ms=1e3 * float(np.percentile(ts, 90)))
        print(f"  latency B={n:<3d}: median {lat[str(n)]['median_ms']:.3f} ms "
              f"(p10 {lat[str(n)]['p10_ms']:.3f}, p90 {lat[str(n)]['p90_ms']:.3f}; first call "
              f"with compile {first:.2f} s)", flush=True)
    result["latency"] = lat

    # ---- throughput, interleaved ---------------------------------------------------------
    vmap_rk4 = jax.jit(jax.vmap(lambda q: r.simulate(q, f_dt, method="rk4", steps_per_year=S)))
    rows = []
    for n in sizes:
        d = space.sample_prior(jax.random.fold_in(key, n), n, dtype=dtype)
        cands = {
            "ensemble": lambda: r.simulate_ensemble(d, forcing, steps_per_year=S),
            "ensemble_xla": lambda: r.simulate_ensemble(d, forcing, steps_per_year=S,
                                                        kernel=False),
            "vmap_rk4": lambda: vmap_rk4(d),
            "numpy_rk4": lambda: peers.numpy_rk4(d, forcing, layout, S, np_dtype),
            "numba_rk4": lambda: peers.numba_rk4(d, forcing, layout, S, np_dtype),
        }
        cands = {k: v for k, v in cands.items() if k not in skip}
        compile_s = {}
        for k, fn in cands.items():  # compile + warm up (numba compiles on first call)
            t = time.perf_counter()
            out = fn()
            jax.block_until_ready(out)
            compile_s[k] = time.perf_counter() - t
            if hasattr(out, "status"):
                failed = int(np.sum(np.asarray(out.status) != 0))
                compile_s[k + "_failed"] = failed
        timed = {k: (lambda fn=fn: jax.block_until_ready(fn())) for k, fn in cands.items()}
        cpu = {}
        med = interleaved(timed, args.repeats, args.max_seconds, cpu)
        row = dict(n=n)
        for k, (m, best, reps) in med.items():
            case = dict(name=k, n=n, run_s=m, best_run_s=best, repeats=reps,
                        solves_per_s=n / m, best_solves_per_s=n / best, cpu_s=cpu[k],
                        solves_per_cpu_s=n / max(cpu[k], 1e-9),
                        first_call_s=compile_s[k], failed=compile_s.get(k + "_failed"))
            result["cases"].append(case)
            row[k] = n / m
            print(f"  {k:<16s} n={n:>7d}  first call {compile_s[k]:6.2f} s  median "
                  f"{m * 1e3:10.2f} ms  {n / m:10.0f} solves/s  (best {n / best:10.0f}, "
                  f"{n / max(cpu[k], 1e-9):10.0f} per cpu-s)",
                  flush=True)
        for peer in ("numpy_rk4", "numba_rk4", "vmap_rk4"):
            if peer in row and "ensemble" in row:
                row[f"ensemble/{peer}"] = row["ensemble"] / row[peer]
        rows.append(row)
        del d, cands, timed

    # ---- naive vmap of adaptive diffrax --------------------------------------------------
    if args.naive_size > 0 and "diffrax" not in skip:
        n = args.naive_size
        d = space.sample_prior(jax.random.fold_in(key, 7), n, dtype=dtype)
        naive = jax.jit(jax.vmap(lambda q: r.simulate(q, f_dt, method="tsit5")))
        t = time.perf_counter()
        jax.block_until_ready(naive(d))
        first = time.perf_counter() - t
        m, best, reps = interleaved({"x": lambda: jax.block_until_ready(naive(d))}, 3,
                                    args.max_seconds)["x"]
        result["cases"].append(dict(name="diffrax_tsit5_vmap", n=n, run_s=m, best_run_s=best,
                                    solves_per_s=n / m, first_call_s=first,
                                    note="adaptive Tsit5, default tolerances, vmapped"))
        result["diffrax_tsit5_vmap_solves_per_s"] = n / m
        print(f"  diffrax_tsit5_vmap n={n}: {n / m:.0f} solves/s", flush=True)

    # ---- the scipy peer ------------------------------------------------------------------
    from regv1_jax.model import initial_state, vector_field_numpy, year_drivers

    m = args.scipy_sample
    sample = space.sample_prior(jax.random.fold_in(key, 11), m, dtype=jnp.float64)
    f_np = forcing.numpy()
    p_list = [jax.tree_util.tree_map(lambda x, i=i: np.asarray(x[i], dtype=np.float64), sample)
              for i in range(m)]
    light = [light_inputs(p_np, f_np) for p_np in p_list]
    y0 = initial_state(p_list[0], year_drivers(p_list[0], f_np), layout, xp=np)
    assert np.array_equal(vector_field_numpy(0.5, y0, p_list[0], f_np, layout),
                          vector_field_numpy(0.5, y0, *light[0], layout))
    scipy_rates = {}
    for method in ("RK45", "LSODA"):
        if "scipy" in skip:
            break
        failed = 0
        stats = {}
        t = time.perf_counter()
        for p_l, f_l in light:
            try:
                scipy_yearly_grid(p_l, f_l, layout, method, 1e-6, 1e-9, stats)
            except RuntimeError:
                failed += 1
        dt = time.perf_counter() - t
        scipy_rates[method] = m / dt
        result["cases"].append(dict(name=f"scipy_{method}", n=m, run_s=dt, solves_per_s=m / dt,
                                    failed=failed, rtol=1e-6, atol=1e-9,
                                    rhs_evals_per_solve=stats.get("nfev", 0) / m,
                                    note="one solve_ivp per year, float64; timed on the "
                                         "sample, scaled linearly to each size"))
        print(f"  scipy {method:<10s} n={m}: {m / dt:.1f} solves/s", flush=True)
    for row in rows:
        for method, rate in scipy_rates.items():
            row[f"scipy_{method}"] = rate
            if "ensemble" in row:
                row[f"ensemble/scipy_{method}"] = row["ensemble"] / rate

    # ---- accuracy ------------------------------------------------------------------------
    k = args.accuracy_draws
    acc_draws = space.sample_prior(jax.random.fold_in(key, 13), k, dtype=jnp.float64)
    tight = jax.jit(jax.vmap(lambda q: r.simulate(q, forcing.astype(jnp.float64),
                                                  method="tsit5", rtol=1e-10, atol=1e-12)))
    ref = tight(acc_draws)
    ens = r.simulate_ensemble(acc_draws.astype(dtype), forcing, steps_per_year=S)
    vm = vmap_rk4(acc_draws.astype(dtype))
    result["accuracy"] = dict(
        reference="diffrax tsit5 float64 rtol 1e-10 atol 1e-12", draws=k,
        ensemble=dict(runoff=max_rel(ens.runoff, ref.runoff), V=max_rel(ens.V, ref.V)),
        vmap_rk4=dict(runoff=max_rel(vm.runoff, ref.runoff), V=max_rel(vm.V, ref.V)),
        ensemble_vs_vmap_rk4=dict(runoff=max_rel(ens.runoff, vm.runoff),
                                  V=max_rel(ens.V, vm.V)))
    print(f"  accuracy: {result['accuracy']}", flush=True)

    # ---- summary -------------------------------------------------------------------------
    result["summary"] = rows
    # issue 12's goals: 2 CPU cores at B = 100k; one H100 at 1M draws (float32 only)
    platform = jax.devices()[0].platform
    goal = {("cpu", "float32"): 300_000, ("cpu", "float64"): 150_000,
            ("gpu", "float32"): 10_000_000}.get((platform, args.dtype))
    big = [row for row in rows if row["n"] == max(sizes)][0]
    result["goal"] = dict(target_solves_per_s=goal, dtype=args.dtype, n=big["n"],
                          platform=platform, ensemble_solves_per_s=big.get("ensemble"),
                          met=None if goal is None else bool(big.get("ensemble", 0) >= goal),
                          ratio_to_numpy=big.get("ensemble/numpy_rk4"),
                          ratio_met=bool(big.get("ensemble/numpy_rk4", 0) >= 10))
    result["loadavg_end"] = loadavg()
    print()
    print(markdown_table(result))
    verdict = {None: "no goal", True: "met", False: "not met"}[result["goal"]["met"]]
    print(f"\ngoal ({platform}): {goal} solves/s at n={big['n']} ({args.dtype}): "
          f"{big.get('ensemble', 0):.0f} -> {verdict}; "
          f"load {result['loadavg_start']} -> {result['loadavg_end']}")
    return result


def markdown_table(result):
    """The summary as a markdown table (solves/s, medians; the README pastes it)."""
    rows = result["summary"]
    names = [k for k in dict.fromkeys(k for row in rows for k in row)
             if k != "n" and "/" not in k]
    ratios = [k for k in dict.fromkeys(k for row in rows for k in row) if "/" in k]
    lines = ["| n | " + " | ".join(names + ratios) + " |",
             "|---:|" + "---:|" * (len(names) + len(ratios))]
    for row in rows:
        cells = [(f"{row[k]:,.0f}" if row[k] >= 100 else f"{row[k]:.1f}") if k in row else "-"
                 for k in names]
        cells += [f"{row[k]:,.1f}x" if k in row else "-" for k in ratios]
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
