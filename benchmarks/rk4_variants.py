"""Experimental variants of the fixed-step RK4 ensemble path (profiling only, not the library).

Everything here solves exactly the equations of ``regv1_jax._model.rates``; the profile script
(``benchmarks/profile_rk4.py``) checks every variant against ``regv1_jax.simulate`` before
it times it, so a change to the model that these copies miss shows up as a mismatch.

Variants:

* ``solve_db``: the batch on the *last* axis: the state is ``(D, B)`` and ``rates`` runs on
  whole ``(B,)`` rows (no ``vmap``: the library's ``rates`` already broadcasts over a batch of
  parameters), instead of ``vmap`` over a ``(D,)`` solve, whose batched state is ``(B, D)``.
* ``rates_fast``: the same right-hand side with (i) ``x ** p`` written ``exp(p * log(x))``
  (XLA:CPU lowers ``pow`` to a slow scalar path: ~6 ns/element in float32 against ~1.6 ns
  for exp-log), (ii) one shared ``log(theta / theta_fc_eff)`` for the runoff sensitivity and
  the drainage, (iii) the sediment power and the cover exponential merged into one ``exp``,
  and (iv) every parameter-only expression (reciprocals, input shares, ...) computed once per
  solve (``Consts``) and every driver-only expression once per year (``YearConsts``).
* ``chunked``: ``lax.map`` over chunks of the batch, so that the ~15 state rows and the RK4
  stages of one chunk stay in the core's L2 cache (1 MiB here) between the ~20 XLA loop
  kernels that each right-hand-side evaluation becomes.
* ``sharded``: the batch split over the host's CPU devices with ``shard_map``
  (``XLA_FLAGS=--xla_force_host_platform_device_count=<cores>``): XLA:CPU runs one
  computation on one core, so this is how a single jitted ensemble uses every core.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from regv1_jax._model import (
    LAYER_DEPTHS_M,
    SOM_PER_C,
    T_HA_TO_KG_M2,
    TINY,
    Layout,
    drivers,
    initial_state,
    rates,
)
from regv1_jax._solve import observe

__all__ = ["rates_fast", "solve_db", "simulate_db", "Consts", "consts", "sharded", "chunked",
           "MATH"]

# The transcendentals used by ``rates_fast``; the profile swaps them for cheap stand-ins
# (while tracing only) to measure their share of the run time.
MATH = {"exp": jnp.exp, "log": jnp.log}


class Consts(NamedTuple):
    """Parameter-only factors of the right-hand side (computed once per solve)."""

    p: object
    inv_K: object
    base_net: object
    kx: object
    ky: object
    som_c: object
    eta_Z: object
    inv_Z: object
    ET_a: object
    ET_b: object
    in0: object
    in1: object
    in2: object
    a2m1: object
    a2m2: object
    eC: object


def consts(p, layout: Layout) -> Consts:
    n = layout.n_lag
    inp = p.a1 / (p.f_0 + p.f_1 + p.f_2)
    M0 = 1000.0 * p.rho_b * LAYER_DEPTHS_M[0]
    return Consts(
        p=p,
        inv_K=1.0 / p.K_V,
        base_net=p.r_V - p.lambda1 * p.theta_star - p.lambda2 * p.SOM_star,
        kx=n / p.tau_VS,
        ky=n / p.tau_SH,
        som_c=SOM_PER_C / (p.rho_b * (LAYER_DEPTHS_M[0] + LAYER_DEPTHS_M[1])),
        eta_Z=p.eta1 / p.Z_r,
        inv_Z=1.0 / p.Z_r,
        ET_a=p.ET_p * p.e_s,
        ET_b=p.ET_p * (1.0 - p.e_s),
        in0=inp * p.f_0,
        in1=inp * p.f_1,
        in2=inp * p.f_2,
        a2m1=p.a2 * p.m_1,
        a2m2=p.a2 * p.m_2,
        eC=p.e_C * T_HA_TO_KG_M2 / M0,
    )


class YearConsts(NamedTuple):
    """Driver-dependent factors (computed once per year)."""

    P: object
    R_pre: object  # c_R (i/i_ref)^omega (1 - b_eng psi_eng)
    E_pre: object  # k_E (1 - psi_eng)
    cE_i: object  # c_E (i_ref/i)^omega_E
    plant: object  # s_plant psi_plant


def year_consts(c: Consts, d) -> YearConsts:
    p = c.p
    return YearConsts(
        P=d.P,
        R_pre=p.c_R * d.runoff_intensity * (1.0 - p.b_eng * d.psi_eng),
        E_pre=p.k_E * (1.0 - d.psi_eng),
        cE_i=p.c_E * d.erosion_intensity,
        plant=p.s_plant * d.psi_plant,
    )


def rates_fast(y, c: Consts, yc: YearConsts, layout: Layout):
    """``rates`` with cheap transcendentals and hoisted constants (state on axis 0)."""
    p = c.p
    n = layout.n_lag
    V, C0, C1, C2, th = y[0], y[1], y[2], y[3], y[4]
    x = [y[5 + k] for k in range(n)]
    s = [y[5 + n + k] for k in range(n)]

    som = c.som_c * (C0 + C1)
    net = c.base_net + p.lambda1 * th + p.lambda2 * som
    dV = V * (1.0 - V * c.inv_K) * net + yc.plant * (p.K_V - V)

    dx = [c.kx * ((V if k == 0 else x[k - 1]) - x[k]) for k in range(n)]
    ds = [c.ky * ((som if k == 0 else s[k - 1]) - s[k]) for k in range(n)]

    fc = p.theta_fc + c.eta_Z * s[n - 1]
    exp, log = MATH["exp"], MATH["log"]
    log_rel = log(jnp.maximum(th / fc, TINY))
    g = exp(p.gamma * jnp.minimum(log_rel, 0.0))  # clip(rel, TINY, 1) ** gamma
    L = p.k_L * exp(p.c_L * log_rel)  # max(rel, TINY) ** c_L
    Q = yc.P * (yc.R_pre * g * (1.0 - p.b_V * V))
    ET = (c.ET_a + c.ET_b * V) * jnp.clip((th - p.theta_wp) / (fc - p.theta_wp), 0.0, 1.0)
    dth = (yc.P - Q - ET - L) * c.inv_Z
    # k_E Q^m_E exp(-c_E V ei) (1 - psi_eng)
    E = yc.E_pre * exp(p.m_E * log(jnp.maximum(Q, TINY)) - yc.cE_i * V)
    dC0 = c.in0 * x[n - 1] - p.a2 * C0 - c.eC * E * C0
    dC1 = c.in1 * x[n - 1] - c.a2m1 * C1
    dC2 = c.in2 * x[n - 1] - c.a2m2 * C2
    parts = [dV, dC0, dC1, dC2, dth, *dx, *ds, Q, E, ET, L]
    return jnp.stack([jnp.broadcast_to(q, jnp.shape(V)) for q in parts], axis=0)


def solve_db(params, forcing, *, steps_per_year=12, fast=True, n_lag=3, unroll_inner=True,
             unroll_outer=1):
    """RK4 over a batch of parameters (leaves of shape ``(B,)``), state ``(D, B)``.

    Returns the half-year grid ``(2 n + 1, D, B)``.
    """
    if steps_per_year < 2 or steps_per_year % 2:
        raise ValueError("steps_per_year must be an even int >= 2")
    layout = Layout(n_lag)
    forcing = forcing.astype(params.dtype)
    h = 1.0 / steps_per_year
    half = steps_per_year // 2
    y0 = initial_state(params, layout)
    c = consts(params, layout) if fast else None

    def half_year(y, d):
        if fast:
            yc = year_consts(c, d)

            def f(y):
                return rates_fast(y, c, yc, layout)
        else:
            def f(y):
                return rates(y, params, d, layout)

        def step(y, _):
            k1 = f(y)
            k2 = f(y + (0.5 * h) * k1)
            k3 = f(y + (0.5 * h) * k2)
            k4 = f(y + h * k3)
            return y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None

        return jax.lax.scan(step, y, None, length=half, unroll=unroll_inner)[0]

    def year(y, fr):
        d = drivers(params, *fr)
        y_mid = half_year(y, d)
        y_end = half_year(y_mid, d)
        return y_end, (y_mid, y_end)

    per_year = (forcing.rainfall, forcing.intensity, forcing.psi_plant, forcing.psi_eng)
    _, (mids, ends) = jax.lax.scan(year, y0, per_year, unroll=unroll_outer)
    n = forcing.n_years
    pairs = jnp.stack([mids, ends], axis=1).reshape((2 * n,) + y0.shape)
    return jnp.concatenate([y0[None], pairs], axis=0)


def simulate_db(params, forcing, **kw):
    """Batched ``Simulation`` (leading batch axis, like ``vmap(simulate)``) via ``solve_db``."""
    ys = solve_db(params, forcing, **kw)  # (G, D, B)
    finite = jnp.all(jnp.isfinite(ys), axis=(0, 1))
    status = jnp.where(finite, 0, 3).astype(jnp.int32)
    layout = Layout(kw.get("n_lag", 3))
    f = forcing.astype(params.dtype)
    return jax.vmap(lambda y, s, q: observe(y, s, q, f, layout), in_axes=(2, 0, 0))(
        ys, status, params)


def sharded(fn, n_devices=None):
    """``fn(params)`` with the batch axis of every leaf split across the CPU devices."""
    from jax.sharding import Mesh, PartitionSpec

    try:
        from jax import shard_map
    except ImportError:  # jax < 0.6
        from jax.experimental.shard_map import shard_map

    devs = jax.devices()[: n_devices or len(jax.devices())]
    mesh = Mesh(devs, ("b",))
    spec = PartitionSpec("b")
    return shard_map(fn, mesh=mesh, in_specs=(spec,), out_specs=spec)


def chunked(fn, chunk):
    """``fn(params)`` evaluated by ``lax.map`` over equal chunks of at most ``chunk`` draws.

    The batch is padded (with copies of its first draw) to the next multiple of the chunk
    size (less than one draw per chunk) and the padding dropped from the result.
    """

    def run(params):
        n = jax.tree_util.tree_leaves(params)[0].shape[0]
        k = -(-n // chunk)  # number of chunks
        c = -(-n // k)  # equal chunks of at most ``chunk``
        m = k * c

        def pad(a):
            if m == n:
                return a
            return jnp.concatenate([a, jnp.broadcast_to(a[:1], (m - n,) + a.shape[1:])])

        q = jax.tree_util.tree_map(lambda a: pad(a).reshape((m // c, c) + a.shape[1:]), params)
        out = jax.lax.map(fn, q)
        return jax.tree_util.tree_map(lambda a: a.reshape((m,) + a.shape[2:])[:n], out)

    return run
