"""Equilibria, stability, V_crit and the bifurcation diagram over rainfall.

For fixed climatological forcing (a :class:`Climate`) the lag chains and running integrals
are slaved to the core state, so an equilibrium is a cover V together with the SOC
profile and soil moisture in balance with it.  For each V the balance of SOC and soil
moisture is solved directly (SOC is linear in the cover input; theta is the bucket's one
root), which turns the search for equilibria into the roots of one function of V, the
*slaved cover rate* ``h(V)`` = dV/dt with everything else at balance.  Every root is
bracketed on a grid of covers, bisected, and then polished by a vmapped Newton solve of the
full reduced system (``optimistix.Newton``) so that each reported equilibrium is a zero of
the model's own right-hand side; stability comes from the eigenvalues of the Jacobian
(``jax.jacfwd``) of every non-integral state, lag chains included.

Everything here is a pure JAX function of ``(Params, Climate)``: it jits, vmaps over
parameter sets or climates, and differentiates (V_crit's gradient flows through the
bisection's final Newton step).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ._field import (
    N_LAG_DEFAULT,
    Drivers,
    Layout,
    drivers,
    equilibrium_theta,
    erosion_loss_rate,
    field_capacity,
    rate_terms,
    relative_water,
    sediment,
    som_topsoil,
    water_fluxes,
)
from ._params import Params

__all__ = ["Climate", "Equilibria", "equilibria", "slaved_state", "cover_rate",
           "Bifurcation", "bifurcation", "rainfall_limits", "MAX_EQUILIBRIA"]

# At most this many equilibria are reported per climate (V = 0 included); the model has
# at most three in every case we have seen (bare, saddle, restored).
MAX_EQUILIBRIA = 6
# Inner fixed-point sweeps between SOC (erosion depends on theta) and theta (the bucket
# depends on SOM through theta_fc_eff); the coupling is weak, 24 sweeps reach float64 noise.
N_SLAVE_SWEEPS = 24
# Equilibria whose covers differ by less than this are one equilibrium.
DEDUP_TOL = 1e-7


class Climate(eqx.Module):
    """Fixed climatological forcing: rainfall (mm yr^-1), storm intensity (mm min^-1),
    planting effort and engineering share (0..1). Leaves may be batched for ``vmap``."""

    # Values are arrays (never static), so that a new rainfall does not recompile.
    rainfall: Float[Array, "*batch"] = eqx.field(converter=jnp.asarray)
    intensity: Float[Array, "*batch"] = eqx.field(converter=jnp.asarray, default=1.0)
    psi_plant: Float[Array, "*batch"] = eqx.field(converter=jnp.asarray, default=0.0)
    psi_eng: Float[Array, "*batch"] = eqx.field(converter=jnp.asarray, default=0.0)

    def drivers(self, p: Params) -> Drivers:
        dt = p.dtype
        return drivers(p, *(jnp.asarray(getattr(self, k), dt)
                            for k in ("rainfall", "intensity", "psi_plant", "psi_eng")))


def slaved_state(V, p: Params, d: Drivers):
    """SOC stocks (C0, C1, C2), soil moisture and 0-20 cm SOM in balance with cover ``V``.

    With the lags at their fixed points (x_n = V, y_n = SOM), each layer's SOC is
    ``a1 f_l' V / (a2 m_l + [l=0] erosion)`` and theta is the bucket's root; erosion
    depends on theta and theta on SOM, so the two are swept to a fixed point.
    """
    inp = p.a1 * V / (p.f_0 + p.f_1 + p.f_2)
    C1 = inp * p.f_1 / (p.a2 * p.m_1)
    C2 = inp * p.f_2 / (p.a2 * p.m_2)

    def sweep(_, C0):
        som = som_topsoil(C0, C1, p.rho_b)
        th = equilibrium_theta(V, som, p, d)
        fc = field_capacity(p, som)
        Q, _, _ = water_fluxes(th, V, fc, relative_water(th, fc, p.theta_wp), p, d)
        return inp * p.f_0 / (p.a2 + erosion_loss_rate(sediment(Q, V, p, d), p))

    C0 = jax.lax.fori_loop(0, N_SLAVE_SWEEPS, sweep, inp * p.f_0 / p.a2)
    som = som_topsoil(C0, C1, p.rho_b)
    th = equilibrium_theta(V, som, p, d)
    return C0, C1, C2, th, som


def _full_state(V, p: Params, d: Drivers, layout: Layout):
    """Non-integral state vector ``[V, C0, C1, C2, theta, x.., y..]`` at the slaved balance."""
    C0, C1, C2, th, som = slaved_state(V, p, d)
    n = layout.n_lag
    return jnp.stack([V, C0, C1, C2, th] + [V] * n + [som] * n)


def _core_rates(z, p: Params, d: Drivers, layout: Layout):
    """dz/dt of the non-integral states (the running integrals do not feed back)."""
    y = jnp.concatenate([z, jnp.zeros(4, z.dtype)])
    return jnp.stack(rate_terms(y, p, d, layout)[: z.shape[0]])


def cover_rate(V, p: Params, climate: Climate, n_lag: int = N_LAG_DEFAULT):
    """``h(V)``: dV/dt (yr^-1) with SOC, soil moisture and lags in balance with cover V."""
    layout = Layout(n_lag)
    d = climate.drivers(p)
    return _core_rates(_full_state(jnp.asarray(V, p.dtype), p, d, layout), p, d, layout)[0]


class Equilibria(eqx.Module):
    """Equilibria of one climate, padded to :data:`MAX_EQUILIBRIA` (``valid`` marks real ones).

    Fields (leading axis: equilibrium, sorted by cover; add batch axes under ``vmap``):
        V: cover fraction. SOM: 0-20 cm SOM, %. theta: soil moisture, m^3 m^-3.
        state: the non-integral state ``[V, C0, C1, C2, theta, x.., y..]``.
        max_real_eig: largest real part of the Jacobian's eigenvalues, yr^-1.
        stable: ``max_real_eig < 0``.  valid: a real equilibrium (padding is False).
        residual: max |dz/dt| after the Newton polish.
        V_crit: cover of the saddle between the lowest stable state and the next stable
            state above it (NaN when the climate is not bistable).
    """

    V: Float[Array, " m"]
    SOM: Float[Array, " m"]
    theta: Float[Array, " m"]
    state: Float[Array, "m d"]
    max_real_eig: Float[Array, " m"]
    stable: Bool[Array, " m"]
    valid: Bool[Array, " m"]
    residual: Float[Array, " m"]
    V_crit: Float[Array, ""]

    @property
    def n_stable(self):
        return jnp.sum(self.valid & self.stable, axis=-1)

    @property
    def bistable(self):
        return jnp.isfinite(self.V_crit)


def _cover_grid(K_V, n: int, dtype):
    u = jnp.linspace(0.0, 1.0, n + 1, dtype=dtype)[1:]
    return K_V * u * u  # dense at low cover, where the saddle and the bare state sit


def _bisect_flip(key, lo, hi, n_iter: int):
    """The point in [lo, hi] where ``key`` (a sign, or a boolean) changes from its value at
    lo, by ``n_iter`` bisections (key(lo) != key(hi) assumed)."""
    k_lo = key(lo)

    def body(_, b):
        lo, hi = b
        mid = 0.5 * (lo + hi)
        same = key(mid) == k_lo
        return jnp.where(same, mid, lo), jnp.where(same, hi, mid)

    lo, hi = jax.lax.fori_loop(0, n_iter, body, (lo, hi))
    return 0.5 * (lo + hi)


def _per_capita_on_grid(p: Params, d: Drivers, layout: Layout, n_grid: int):
    """``h(V)/V`` (its roots are the equilibria with V > 0), the cover grid and its values."""

    def per_capita(V):
        return _core_rates(_full_state(V, p, d, layout), p, d, layout)[0] / V

    Vg = _cover_grid(p.K_V, n_grid, p.dtype)
    return per_capita, Vg, jax.vmap(per_capita)(Vg)


@eqx.filter_jit
def equilibria(
    p: Params,
    climate: Climate,
    *,
    n_grid: int = 256,
    n_lag: int = N_LAG_DEFAULT,
) -> Equilibria:
    """All equilibria of the model under a fixed climate, with their stability and V_crit.

    Arguments:
        p: one parameter set (scalar leaves; ``vmap`` for many).
        climate: fixed forcing (planting 0 = natural dynamics, where bare soil V = 0 is an
            equilibrium).
        n_grid: covers in (0, K_V] on which sign changes of ``h(V)/V`` bracket the roots;
            two roots closer than the grid spacing near K_V² / n_grid² can be missed.
        n_lag: lag-chain length (static).
    Returns:
        :class:`Equilibria`.
    """
    layout = Layout(n_lag)
    d = climate.drivers(p)
    dtype = p.dtype
    per_capita, Vg, r = _per_capita_on_grid(p, d, layout, n_grid)
    change = jnp.sign(r[1:]) != jnp.sign(r[:-1])
    m_int = MAX_EQUILIBRIA - 1
    (idx,) = jnp.nonzero(change, size=m_int, fill_value=0)
    has = jnp.arange(m_int) < jnp.sum(change)
    V_root = jax.vmap(lambda i: _bisect_flip(lambda V: jnp.sign(per_capita(V)), Vg[i],
                                             Vg[i + 1], 60))(idx)

    # Newton polish of the full reduced system from each bracketed root.
    def polish(V):
        z0 = _full_state(V, p, d, layout)
        import optimistix as optx  # imported on use (0.2 s at package import)

        sol = optx.root_find(lambda z, _: _core_rates(z, p, d, layout), optx.Newton(
            rtol=1e-10, atol=1e-12), z0, max_steps=32, throw=False)
        z = jnp.where(sol.result == optx.RESULTS.successful, sol.value, z0)
        return z

    z_int = jax.vmap(polish)(V_root)
    # Bare soil is an equilibrium of the natural dynamics (no planting).
    z_bare = _full_state(jnp.zeros((), dtype), p, d, layout)
    bare_ok = jnp.asarray(climate.psi_plant, dtype) == 0
    Z = jnp.concatenate([z_bare[None], z_int], axis=0)
    valid = jnp.concatenate([bare_ok[None], has])

    jac = jax.vmap(jax.jacfwd(lambda z: _core_rates(z, p, d, layout)))(Z)
    eig = jnp.max(jnp.real(jnp.linalg.eigvals(jac)), axis=-1)
    resid = jnp.max(jnp.abs(jax.vmap(lambda z: _core_rates(z, p, d, layout))(Z)), axis=-1)
    valid = valid & jnp.all(jnp.isfinite(Z), axis=-1)
    # Deduplicate: a Newton polish that lands on an equilibrium already listed (bare soil
    # first) does not count twice.
    close = jnp.abs(Z[:, None, 0] - Z[None, :, 0]) < DEDUP_TOL
    earlier = jnp.tril(jnp.ones(close.shape, bool), k=-1)
    valid = valid & ~jnp.any(close & earlier & valid[None, :], axis=1)
    stable = eig < 0

    # Sort by cover, padding last.
    key = jnp.where(valid, Z[:, 0], jnp.inf)
    order = jnp.argsort(key)
    Z, valid, stable, eig, resid = (a[order] for a in (Z, valid, stable, eig, resid))
    nan = jnp.asarray(jnp.nan, dtype)
    V_crit = _v_crit(Z[:, 0], stable, valid, nan)
    som = som_topsoil(Z[:, 1], Z[:, 2], p.rho_b)
    return Equilibria(
        V=jnp.where(valid, Z[:, 0], nan), SOM=jnp.where(valid, som, nan),
        theta=jnp.where(valid, Z[:, 4], nan), state=jnp.where(valid[:, None], Z, nan),
        max_real_eig=jnp.where(valid, eig, nan), stable=stable & valid, valid=valid,
        residual=jnp.where(valid, resid, nan), V_crit=V_crit,
    )


def _v_crit(V, stable, valid, nan):
    """Cover of the first unstable equilibrium above the lowest stable one, if a stable
    equilibrium lies above it too (V sorted ascending, padding last)."""
    s = valid & stable
    u = valid & ~stable
    first_stable = jnp.argmax(s)
    any_stable = jnp.any(s)
    pos = jnp.arange(V.shape[0])
    above = u & (pos > first_stable)
    i_saddle = jnp.argmax(above)
    stable_above = jnp.any(s & (pos > i_saddle))
    ok = any_stable & jnp.any(above) & stable_above
    return jnp.where(ok, V[i_saddle], nan)


class Bifurcation(eqx.Module):
    """Equilibria over a rainfall sweep (the hysteresis diagram) and its fold points.

    ``rainfall``: (k,) mm yr^-1; ``equilibria``: :class:`Equilibria` with leading axis k;
    ``folds``: rainfall (mm yr^-1) where a stable vegetated branch and the saddle meet
    (NaN padded), found by bisection between the sweep's points; ``P_veg``: the lowest
    rainfall with a stable vegetated equilibrium (the rainfall limit to revegetation);
    ``P_bare_unstable``: the rainfall above which bare soil loses stability (NaN if never).
    """

    rainfall: Float[Array, " k"]
    equilibria: Equilibria
    folds: Float[Array, " f"]
    P_veg: Float[Array, ""]
    P_bare_unstable: Float[Array, ""]


def _grid_flags(p: Params, climate: Climate, n_grid: int, n_lag: int):
    """(stable vegetated state exists, bare soil stable) from the signs of h(V)/V on the
    cover grid alone: a stable root is a + to - change, bare soil is stable where the
    per-capita rate at the smallest cover is negative.  Cheap enough to bisect on."""
    _, _, r = _per_capita_on_grid(p, climate.drivers(p), Layout(n_lag), n_grid)
    return jnp.any((r[:-1] > 0) & (r[1:] <= 0)) | (r[-1] > 0), r[0] < 0


@eqx.filter_jit
def bifurcation(
    p: Params,
    rainfall: Float[Array, " k"],
    *,
    intensity: float = 1.0,
    psi_plant: float = 0.0,
    psi_eng: float = 0.0,
    n_grid: int = 256,
    n_lag: int = N_LAG_DEFAULT,
) -> Bifurcation:
    """Equilibria over a sweep of mean annual rainfall (mm yr^-1), with the fold points.

    ``P_veg`` and ``P_bare_unstable`` are located to ~1e-7 of the sweep's spacing by
    bisecting, between the neighbours where they change, the existence of a stable
    vegetated root of h(V) on the cover grid and the sign of h(V)/V at the smallest cover.
    """
    dtype = p.dtype
    P = jnp.asarray(rainfall, dtype)

    def climate(P_):
        return Climate(P_, intensity, psi_plant, psi_eng)

    eqs = jax.vmap(lambda P_: equilibria(p, climate(P_), n_grid=n_grid, n_lag=n_lag))(P)
    veg = jnp.any(eqs.valid & eqs.stable & (eqs.V > 0), axis=-1)
    bare = eqs.valid[:, 0] & eqs.stable[:, 0] & (eqs.V[:, 0] == 0)
    P_veg, P_bare = _folds(p, P, veg, bare, climate, n_grid, n_lag)
    folds = jnp.stack([P_veg, P_bare])
    return Bifurcation(P, eqs, folds, P_veg, P_bare)


@eqx.filter_jit
def rainfall_limits(
    p: Params,
    rainfall: Float[Array, " k"],
    *,
    intensity: float = 1.0,
    psi_plant: float = 0.0,
    psi_eng: float = 0.0,
    n_grid: int = 256,
    n_lag: int = N_LAG_DEFAULT,
    n_bisect: int = 24,
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """``(P_veg, P_bare_unstable)`` of :func:`bifurcation` (mm yr^-1) without the equilibria
    and their eigenvalues over the sweep: the flags on the sweep are the grid signs of
    h(V)/V (what the bisection uses anyway), so it costs a few per-capita grids per
    rainfall; ``vmap`` it over parameter sets (the thresholds of bootstrap replicates).
    ``n_bisect`` bisections locate each limit to ``spacing / 2**n_bisect``; the cost is
    ``len(rainfall) + 2 n_bisect`` per-capita grids of ``n_grid`` covers."""
    P = jnp.asarray(rainfall, p.dtype)

    def climate(P_):
        return Climate(P_, intensity, psi_plant, psi_eng)

    veg, bare = jax.vmap(lambda P_: _grid_flags(p, climate(P_), n_grid, n_lag))(P)
    return _folds(p, P, veg, bare, climate, n_grid, n_lag, n_bisect)


def _folds(p: Params, P, veg, bare, climate, n_grid: int, n_lag: int, n_bisect: int = 24):
    """``P_veg`` and ``P_bare_unstable`` from the flags on the sweep ``P``, bisected between
    the neighbours where each first changes (NaN where it never does, ``P[0]`` when cover
    is possible over the whole sweep)."""
    nan = jnp.asarray(jnp.nan, p.dtype)

    def first_flip(flag):
        flips = flag[1:] != flag[:-1]
        i = jnp.argmax(flips)
        return jnp.any(flips), P[i], P[i + 1]

    has_v, lo_v, hi_v = first_flip(veg)
    def flag(k):
        return lambda q: _grid_flags(p, climate(q), n_grid, n_lag)[k]

    P_veg = jnp.where(
        has_v, _bisect_flip(flag(0), lo_v, hi_v, n_bisect),
        jnp.where(veg[0], P[0], nan))
    has_b, lo_b, hi_b = first_flip(bare)
    P_bare = jnp.where(
        has_b, _bisect_flip(flag(1), lo_b, hi_b, n_bisect),
        nan)
    return P_veg, P_bare
