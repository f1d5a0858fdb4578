"""The V-SOM-theta vector field (``docs/model.md``).

The state is one flat vector (see :class:`Layout`).  The right-hand side is written once,
over an array namespace ``xp`` (``jax.numpy`` by default, ``numpy`` for the scipy reference),
so that the reference solve checks the integrator on exactly the same equations.  Parameters
always arrive as arguments, never by closure (the backsolve adjoint needs that).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from ._forcing import Forcing
from ._params import Params

__all__ = ["Layout", "Drivers", "drivers", "rates", "rate_terms", "vector_field", "initial_state",
           "initial_terms", "year_drivers", "equilibrium_theta", "water_fluxes", "sediment",
           "field_capacity", "som_layer", "soc_stock", "som_topsoil", "driver_series",
           "LAYER_DEPTHS_M", "N_LAG_DEFAULT", "SOM_PER_C", "infiltration_cover",
           "vector_field_numpy", "THETA_BISECTIONS", "THETA_BISECTIONS_F32"]

# Layer thicknesses (m) of the three SOC layers 0-10, 10-20, 20-40 cm.
LAYER_DEPTHS_M = (0.1, 0.1, 0.2)
# %SOM per (kg C m^-2) / (rho_b [g cm^-3] * d [m]):  100 * 1.724 / 1000 (van Bemmelen).
SOM_PER_C = 0.1724
# t ha^-1 -> kg m^-2
T_HA_TO_KG_M2 = 0.1
# Floor used inside powers so that d/dexponent stays finite at a zero base.
TINY = 1e-30
N_LAG_DEFAULT = 3
# Bisections of the initial soil moisture under JAX (one Newton step follows): 2^-40 of
# the bracket in float64; 2^-26 in float32, whose 24-bit mantissa the Newton step then
# reaches (quadratic convergence).
THETA_BISECTIONS = 40
THETA_BISECTIONS_F32 = 26


@dataclasses.dataclass(frozen=True)
class Layout:
    """Positions in the flat state vector for a lag chain of length ``n_lag``.

    ``[V, C_0, C_1, C_2, theta, x_1..x_n, y_1..y_n, Q_cum, E_cum, ET_cum, L_cum]``
    """

    n_lag: int = N_LAG_DEFAULT

    def __post_init__(self):
        if not (isinstance(self.n_lag, int) and self.n_lag >= 1):
            raise ValueError(f"n_lag must be a positive int, got {self.n_lag!r}")

    V = 0
    C = slice(1, 4)
    THETA = 4

    @property
    def x(self) -> slice:
        return slice(5, 5 + self.n_lag)

    @property
    def y(self) -> slice:
        return slice(5 + self.n_lag, 5 + 2 * self.n_lag)

    @property
    def cum(self) -> slice:
        return slice(5 + 2 * self.n_lag, 9 + 2 * self.n_lag)

    @property
    def Q(self) -> int:
        return 5 + 2 * self.n_lag

    @property
    def E(self) -> int:
        return 6 + 2 * self.n_lag

    @property
    def ET(self) -> int:
        return 7 + 2 * self.n_lag

    @property
    def L(self) -> int:
        return 8 + 2 * self.n_lag

    @property
    def size(self) -> int:
        return 9 + 2 * self.n_lag


class Drivers(NamedTuple):
    """Forcing values for one year, with the intensity factors evaluated once."""

    P: Any  # mm yr^-1 (a JAX or numpy array, or a float)
    runoff_intensity: Any  # (i / i_ref)^omega
    erosion_intensity: Any  # (i_ref / i)^omega_E
    psi_plant: Any
    psi_eng: Any


def drivers(p: Params, P, i, psi_plant, psi_eng) -> Drivers:
    # (i / i_ref)^omega and (i_ref / i)^omega_E from one log (a pow is a slow call in the
    # ensemble kernel and in XLA:CPU)
    ratio = i / p.i_ref
    xp = jnp if isinstance(ratio, jax.Array) else np  # numpy for the scipy reference
    log_i = xp.log(ratio)
    return Drivers(P, xp.exp(p.omega * log_i), xp.exp(-p.omega_E * log_i), psi_plant, psi_eng)


def som_layer(C_l, rho_b, layer: int):
    """%SOM of layer ``layer`` (0: 0-10, 1: 10-20, 2: 20-40 cm) from its SOC stock (kg C m^-2)."""
    return C_l * (SOM_PER_C / (rho_b * LAYER_DEPTHS_M[layer]))


def soc_stock(som_layers, rho_b, xp: Any = jnp):
    """The 0-40 cm SOC stock, kg C m^-2, from the layers' %SOM ``som_layers`` (``(...,
    years, 3)``: a simulation's ``SOM_layers``) and the bulk density ``rho_b`` (g cm^-3; a
    scalar, or one per leading batch entry): the inverse of :func:`som_layer`, summed over
    the layers -> ``(..., years)``.  ``xp``: the array module (``numpy`` on the host)."""
    d = xp.asarray(LAYER_DEPTHS_M, dtype=som_layers.dtype)
    rho = xp.asarray(rho_b)[..., None, None]
    return xp.sum(som_layers * rho * d, axis=-1) / SOM_PER_C


def som_topsoil(C0, C1, rho_b):
    """Mass-weighted %SOM of 0-20 cm from the stocks of the two top layers."""
    # The parameter-only factor first, as one value: the ensemble kernel computes it once
    # per member (the same holds for the groupings below).
    return (C0 + C1) * (SOM_PER_C / (rho_b * (LAYER_DEPTHS_M[0] + LAYER_DEPTHS_M[1])))


# Smoothing scale (yr^-1) of the split of the threshold feedback F into F+ and F-.
F_SMOOTH = 1e-3
# Smoothing scale of the drought deficit at theta_star (share of theta_star - theta_wp): a
# kink there made finite-difference gradients depend on where the solver stepped.
D_SMOOTH = 1e-2


def field_capacity(p: Params, som_lag):
    """Effective field capacity ``theta_fc + eta1 SOM_lag / Z_r`` (m^3 m^-3)."""
    return p.theta_fc + som_lag * (p.eta1 / p.Z_r)


def smooth_max0(F, xp=jnp, scale=F_SMOOTH):
    """Smooth ``max(F, 0)``: ``(F + sqrt(F^2 + scale^2)) / 2`` (one square root, no exp/log;
    within ``scale / 2`` of the kink, exact far from it)."""
    return 0.5 * (F + xp.sqrt(F * F + scale * scale))


def relative_water(th, fc, theta_wp, xp=jnp):
    """Relative extractable water ``clip((theta - theta_wp) / (fc - theta_wp), 0, 1)``."""
    return xp.clip((th - theta_wp) / (fc - theta_wp), 0.0, 1.0)


def infiltration_factor(V, b_V, k_I):
    """``1 - b_V infiltration_cover(V, k_I)`` as one fraction,
    ``(k_I + (1 - b_V (1 + k_I)) V) / (V + k_I)``: one division and no cancellation."""
    return (k_I + (1.0 - b_V * (1.0 + k_I)) * V) / (V + k_I)


def infiltration_cover(V, k_I):
    """Share of the full-cover infiltration gain reached at cover V: ``V (1 + k_I)/(V + k_I)``.

    Concave (Rietkerk et al. 1997; HilleRisLambers et al. 2001): a little cover on crusted
    bare soil already opens most of the infiltration gain; 0 at V = 0, 1 at V = 1.
    """
    return V * (1.0 + k_I) / (V + k_I)


def water_fluxes(th, V, fc, w, p: Params, d: Drivers, xp=jnp):
    """Runoff Q, evapotranspiration ET and deep drainage L, mm yr^-1.

    Powers are written exp(c log x): XLA:CPU lowers ``pow`` to a slow scalar path, and one
    log of theta / theta_fc_eff serves both g(theta) (capped at 1) and the drainage.
    """
    log_rel = xp.log(xp.maximum(th / fc, TINY))
    g = xp.exp(p.gamma * xp.minimum(log_rel, 0.0))  # clip(rel, tiny, 1) ** gamma
    raw = ((p.c_R * d.runoff_intensity * (1.0 - p.b_eng * d.psi_eng))
           * (g * infiltration_factor(V, p.b_V, p.k_I)))
    # Smooth cap at 1: raw / (1 + raw^8)^(1/8) (differs from raw by < 1e-7 below 0.15),
    # the eighth root as a reciprocal square root and two square roots.
    raw2 = raw * raw
    raw4 = raw2 * raw2
    Rc = raw * xp.sqrt(xp.sqrt(1.0 / xp.sqrt(1.0 + raw4 * raw4)))
    ET = (p.ET_p * p.e_s + p.ET_p * (1.0 - p.e_s) * V) * w
    L = p.k_L * xp.exp(p.c_L * log_rel)  # max(rel, tiny) ** c_L
    return d.P * Rc, ET, L


def sediment(Q, V, p: Params, d: Drivers, xp=jnp):
    """Sediment E (t ha^-1 yr^-1): ``k_E Q^m_E exp(-c_E V (i_ref/i)^omega_E) (1 - psi_eng)``."""
    return xp.exp(p.m_E * xp.log(xp.maximum(Q, TINY)) - (p.c_E * d.erosion_intensity) * V) \
        * (p.k_E * (1.0 - d.psi_eng))


def erosion_loss_rate(E, p: Params):
    """Fractional loss rate (yr^-1) of top-layer SOC by erosion: ``e_C (0.1 E) / M_0``."""
    return E * (p.e_C * T_HA_TO_KG_M2 / (1000.0 * p.rho_b * LAYER_DEPTHS_M[0]))


def rates(y, p: Params, d: Drivers, layout: Layout, xp=jnp):
    """dy/dt of the flat state ``y`` (state on the leading axis) for fixed drivers ``d``.

    The stacked form of :func:`rate_terms` (one array, state on axis 0).
    """
    parts = rate_terms(y, p, d, layout, xp)
    return xp.stack([xp.broadcast_to(q, xp.shape(parts[0])) for q in parts], axis=0)


def rate_terms(y, p: Params, d: Drivers, layout: Layout, xp=jnp) -> tuple:
    """dy/dt component by component: the one definition of the model's equations.

    ``y`` is anything indexable by state position: a flat array with the state on the
    leading axis, or a tuple of per-component arrays (the fused ensemble path).  Returns a
    tuple of ``layout.size`` arrays in state order.

    Units: V yr^-1, C kg C m^-2 yr^-1, theta (m^3/m^3) yr^-1, lag states per yr, cumulative
    fluxes in mm yr^-1 (runoff, ET, drainage) and t ha^-1 yr^-1 (sediment).
    """
    n = layout.n_lag
    V = y[0]
    C0, C1, C2 = y[1], y[2], y[3]
    th = y[4]
    x = [y[5 + k] for k in range(n)]
    s = [y[5 + n + k] for k in range(n)]

    som = som_topsoil(C0, C1, p.rho_b)
    fc = field_capacity(p, s[n - 1])
    w = relative_water(th, fc, p.theta_wp, xp)

    # Vegetation (docs/model.md, "Vegetation"): water-limited logistic growth plus the
    # threshold feedbacks, split into a growth bonus above the thresholds and a mortality
    # below them, plus drought mortality; stress acts at any cover, K_V included.
    F = (p.lambda1 * th + p.lambda2 * som) - (p.lambda1 * p.theta_star + p.lambda2 * p.SOM_star)
    F_plus = smooth_max0(F, xp)
    F_minus = F_plus - F
    # (theta_star - th) / (theta_star - theta_wp)
    inv_range = 1.0 / (p.theta_star - p.theta_wp)
    deficit = smooth_max0(p.theta_star * inv_range - th * inv_range, xp, D_SMOOTH)
    drought = xp.minimum(deficit, 1.0)
    growth = (p.r_V * w + F_plus) * (1.0 - V * (1.0 / p.K_V))
    dV = V * (growth - F_minus - p.m_D * drought) \
        + (p.s_plant * d.psi_plant) * w * (p.K_V - V)

    # Linear-chain lags (mean delays tau_VS, tau_SH).
    kx = n / p.tau_VS
    ky = n / p.tau_SH
    dx = [kx * ((V if k == 0 else x[k - 1]) - x[k]) for k in range(n)]
    ds = [ky * ((som if k == 0 else s[k - 1]) - s[k]) for k in range(n)]

    # Root-zone bucket.
    Q, ET, L = water_fluxes(th, V, fc, w, p, d, xp)
    dth = (d.P - Q - ET - L) / p.Z_r

    # Sediment and soil carbon.
    E = sediment(Q, V, p, d, xp)
    # input a1 x_n split by f_l / (f_0 + f_1 + f_2); per-layer decay a2 m_l (+ erosion)
    a1_f = p.a1 / (p.f_0 + p.f_1 + p.f_2)
    dC0 = (a1_f * p.f_0) * x[n - 1] - (p.a2 + erosion_loss_rate(E, p)) * C0
    dC1 = (a1_f * p.f_1) * x[n - 1] - (p.a2 * p.m_1) * C1
    dC2 = (a1_f * p.f_2) * x[n - 1] - (p.a2 * p.m_2) * C2

    parts = (dV, dC0, dC1, dC2, dth, *dx, *ds, Q, E, ET, L)
    return tuple(xp.broadcast_to(q, xp.shape(V)) for q in parts)


def vector_field(tau, y, args):
    """Diffrax-style vector field: ``args = (params, forcing, layout)``; tau in years since
    the start."""
    p, forcing, layout = args
    return rates(y, p, year_drivers(p, forcing, forcing.index(tau)), layout)


def vector_field_numpy(tau, y, p: Params, forcing: Forcing, layout: Layout):
    """The same vector field in numpy (scipy reference); ``p`` and ``forcing`` numpy-valued."""
    k = int(forcing.index(tau, xp=np))
    return rates(np.asarray(y), p, year_drivers(p, forcing, k), layout, xp=np)


def driver_series(forcing: Forcing) -> tuple:
    """The annual series :func:`drivers` takes after the parameters, in its argument order:
    rainfall, intensity, psi_plant, psi_eng."""
    return (forcing.rainfall, forcing.intensity, forcing.psi_plant, forcing.psi_eng)


def year_drivers(p: Params, forcing: Forcing, k: int | Int[Array, ""] = 0) -> Drivers:
    """The drivers of forcing year ``k`` (default the start year)."""
    return drivers(p, *(x[k] for x in driver_series(forcing)))


def _bisect(fun, lo, hi, n_iter: int, xp):
    """Root of a decreasing ``fun`` in ``[lo, hi]`` by ``n_iter`` bisections (elementwise)."""

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        pos = fun(mid) > 0
        return xp.where(pos, mid, lo), xp.where(pos, hi, mid)

    if xp is jnp:
        lo, hi = jax.lax.fori_loop(0, n_iter, body, (lo, hi))
    else:
        for i in range(n_iter):
            lo, hi = body(i, (lo, hi))
    return 0.5 * (lo + hi)


def equilibrium_theta(V, som_lag, p: Params, d: Drivers, xp=jnp):
    """Soil moisture at which the bucket balances (P = Q + ET + L) for fixed V and lagged SOM.

    The balance is decreasing in theta, positive at 0 and negative where drainage alone
    exceeds rainfall, so bisection finds its one root; under JAX one Newton step from the
    bisected value (held constant) carries the implicit-function gradient.
    """
    fc = field_capacity(p, som_lag)

    def balance(th):
        w = relative_water(th, fc, p.theta_wp, xp)
        Q, ET, L = water_fluxes(th, V, fc, w, p, d, xp)
        return d.P - Q - ET - L

    hi = fc * xp.exp(xp.log(d.P / p.k_L + 2.0) / p.c_L)  # L(hi) = P + 2 k_L > P
    # Under JAX 40 bisections (~1e-12 of the bracket) and one Newton step (quadratic)
    # reach float64 noise (26 reach float32's); numpy (the scipy reference) bisects to the
    # last bit.
    n_bisect = 64 if xp is not jnp else (
        THETA_BISECTIONS_F32 if jnp.result_type(hi) == jnp.float32 else THETA_BISECTIONS)
    th = _bisect(balance, xp.zeros_like(hi), hi, n_bisect, xp)
    if xp is jnp:
        th = jax.lax.stop_gradient(th)
        f, df = jax.jvp(balance, (th,), (jnp.ones_like(th),))
        th = th - f / df
    return th


def initial_state(p: Params, d: Drivers, layout: Layout, xp=jnp):
    """State at the start year from ``V0`` and ``SOM0``, the rest in balance with them.

    ``d``: the start year's drivers (:func:`year_drivers`).  Soil moisture is the bucket's
    equilibrium for V0 and SOM0 under that year's forcing; the SOC profile has the shape of
    each layer's input/loss balance, erosion of the top layer included
    (``C_l ∝ f_l / (a2 m_l + [l=0] erosion)``), scaled so that the 0-20 cm SOM equals SOM0;
    lag chains start at equilibrium (x_k = V0, y_k = SOM0); running integrals at zero.
    """
    parts = initial_terms(p, d, layout, xp)
    shape = xp.shape(sum(xp.asarray(q) for q in parts))
    return xp.stack([xp.broadcast_to(xp.asarray(q, dtype=parts[0].dtype), shape)
                     for q in parts], axis=0)


def initial_terms(p: Params, d: Drivers, layout: Layout, xp=jnp) -> tuple:
    """:func:`initial_state` component by component (state order; elementwise, so that the
    ensemble kernel generates its initial state from it)."""
    V0 = xp.asarray(p.V0)
    th0 = equilibrium_theta(V0, p.SOM0, p, d, xp)
    fc = field_capacity(p, p.SOM0)
    Q0, _, _ = water_fluxes(th0, V0, fc, relative_water(th0, fc, p.theta_wp, xp), p, d, xp)
    k_er = erosion_loss_rate(sediment(Q0, V0, p, d, xp), p)
    w0, w1, w2 = p.f_0 / (p.a2 + k_er), p.f_1 / (p.a2 * p.m_1), p.f_2 / (p.a2 * p.m_2)
    # C_l = c * w_l with som_topsoil(c w0, c w1) = SOM0
    c = p.SOM0 / som_topsoil(w0, w1, p.rho_b)
    zero = xp.zeros_like(V0)
    n = layout.n_lag
    return tuple([V0, c * w0, c * w1, c * w2, th0] + [V0] * n + [p.SOM0] * n + [zero] * 4)
