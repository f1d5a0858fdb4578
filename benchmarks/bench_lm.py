"""Hand-written Levenberg-Marquardt (``regv1_jax.fit.LevenbergMarquardt``, the library path)
against ``optimistix.LevenbergMarquardt`` on the same residuals, one start, one stage.

    python benchmarks/bench_lm.py [--stage 4] [--repeat 3] [--vmap N]
        [--out benchmarks/results/lm_<host>.json]

``--vmap N``: both solvers under ``jax.vmap`` over N starts (the prior value plus N - 1 prior
draws of the free parameters, as the staged fit starts a stage), the way ``fit_staged`` runs
them; the reported cost is the best start's.

Problem: the noisy Yanhe twin (``data/synthetic/yanhe_synthetic.csv``), 1995-2015, training
1995-2010, LoessPlateau priors, float64, Tsit5 rtol = atol = 1e-6, the seed stage chosen by
``--stage`` (1-based; default 5, the joint stage with 12 free parameters) from the prior.
Both are jitted; compile time is reported apart; the time is the best of ``--repeat`` warm
calls; the final cost 0.5 |r|^2 is evaluated by the same residual function.
"""

from __future__ import annotations

import argparse
import json
import socket
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402
from _machine import run_header  # noqa: E402

import regv1_jax as r  # noqa: E402
from regv1_jax.fit import (  # noqa: E402
    SEED_STAGES,
    TARGET_VARIABLES,
    CalibrationConfig,
    LevenbergMarquardt,
    Objective,
    make_targets,
    variable_weights,
)
from regv1_jax.io import get_site, site_forcing  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stage", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--vmap", type=int, default=0)
    ap.add_argument("--out", default=f"benchmarks/results/lm_{socket.gethostname()}.json")
    a = ap.parse_args()
    site = get_site("Yanhe-basin-synthetic")
    space = r.load_param_space("LoessPlateau")
    prior = space.prior_values(jnp.float64)
    forcing = site_forcing(site, 1995, 2015)
    keep = jnp.asarray(np.asarray(forcing.years) <= 2010)
    targets = make_targets(site.observations, forcing).with_mask(keep)
    cfg = CalibrationConfig()
    st = SEED_STAGES[a.stage - 1]
    lm = LevenbergMarquardt(max_steps=cfg.lm_steps)
    mask_vec = space.mask(st.free)
    objective = Objective(prior, mask_vec, variable_weights(st.variables, jnp.float64),
                          jnp.asarray(1.0 if st.events else 0.0), jnp.asarray(cfg.prior_weight),
                          forcing, targets, space, cfg.make_solver().for_jacobian(), cfg.events)
    n_data = len(TARGET_VARIABLES) * forcing.n_years + cfg.events.size
    u0 = space.vector_to_unconstrained(space.stack(prior))
    S = lm.selection(mask_vec).astype(u0.dtype)
    k = len(st.free)
    res = objective.residuals

    def cost(u):
        return 0.5 * jnp.sum(res(u) ** 2)

    if a.vmap > 1:
        draws = space.vector_to_unconstrained(space.stack(
            space.sample_prior(jax.random.PRNGKey(cfg.seed), a.vmap - 1, dtype=jnp.float64)))
        u0s = jnp.concatenate([u0[None], jnp.where(mask_vec, draws, u0)], axis=0)
    else:
        u0s = u0[None]

    def hand_one(u_start):
        out = lm.solve(res, u_start, S, n_data)
        return out.u, out.n_iter

    Sk = S[:, :k]

    def optimistix_one(u_start):
        solver = optx.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
        sol = optx.least_squares(lambda v, _: res(u_start + Sk @ v), solver, jnp.zeros(k),
                                 max_steps=cfg.lm_steps * 4, throw=False)
        return u_start + Sk @ sol.value, sol.stats["num_steps"]

    def best_of(one):
        @jax.jit
        def run():
            u, it = jax.vmap(one)(u0s)
            c = jax.vmap(cost)(u)
            b = jnp.argmin(jnp.where(jnp.isfinite(c), c, jnp.inf))
            return u[b], jnp.max(it)
        return run

    hand, optimistix = best_of(hand_one), best_of(optimistix_one)

    out = {"host": socket.gethostname(), "stage": st.name, "free": list(st.free),
           "lm_steps": cfg.lm_steps, "initial_cost": float(cost(u0)),
           "n_starts_vmapped": int(u0s.shape[0]),
           "run_header": run_header()}
    for name, fn in (("hand_lm", hand), ("optimistix_lm", optimistix)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            u, it = jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        out[name] = {"first_call_s": first, "compile_s": first - min(times),
                     "best_s": min(times), "iterations_max_over_starts": int(it),
                     "final_cost": float(cost(u))}
        print(name, out[name], flush=True)
    out["ratio_optimistix_over_hand"] = out["optimistix_lm"]["best_s"] / out["hand_lm"]["best_s"]
    print(f"optimistix / hand = {out['ratio_optimistix_over_hand']:.2f}")
    Path(a.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
