"""The V-SOM-theta vector field (``docs/model.md``).

The state is one flat vector (see :class:`Layout`).  The right-hand side is written once,
over an array namespace ``xp`` (``jax.numpy`` by default, ``numpy`` for the scipy reference),
so that the reference solve checks the integrator on exactly the same equations.  Parameters
always arrive as arguments, never by closure (the backsolve adjoint needs that).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ._forcing import Forcing
from ._params import Params

__all__ = ["Layout", "Drivers", "drivers", "rates", "rate_terms", "vector_field",
           "initial_state",
           "som_layers", "som_topsoil", "LAYER_DEPTHS_M", "N_LAG_DEFAULT"]

# Layer thicknesses (m) of the three SOC layers 0-10, 10-20, 20-40 cm.
LAYER_DEPTHS_M = (0.1, 0.1, 0.2)
# %SOM per (kg C m^-2) / (rho_b [g cm^-3] * d [m]):  100 * 1.724 / 1000 (van Bemmelen).
SOM_PER_C = 0.1724
# t ha^-1 -> kg m^-2
T_HA_TO_KG_M2 = 0.1
# Floor used inside powers so that d/dexponent stays finite at a zero base.
TINY = 1e-30
N_LAG_DEFAULT = 3


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

    P: object  # mm yr^-1
    runoff_intensity: object  # (i / i_ref)^omega
    erosion_intensity: object  # (i_ref / i)^omega_E
    psi_plant: object
    psi_eng: object


def drivers(p: Params, P, i, psi_plant, psi_eng) -> Drivers:
    return Drivers(P, (i / p.i_ref) ** p.omega, (p.i_ref / i) ** p.omega_E, psi_plant, psi_eng)


def som_layers(C, rho_b, xp=jnp):
    """%SOM of each layer from SOC stocks ``C`` (kg C m^-2, layers on the leading axis)."""
    d = xp.asarray(LAYER_DEPTHS_M, dtype=xp.asarray(C).dtype).reshape(
        (3,) + (1,) * (xp.ndim(C) - 1)
    )
    return SOM_PER_C * C / (rho_b * d)


def som_topsoil(C0, C1, rho_b):
    """Mass-weighted %SOM of 0-20 cm from the stocks of the two top layers."""
    return SOM_PER_C * (C0 + C1) / (rho_b * (LAYER_DEPTHS_M[0] + LAYER_DEPTHS_M[1]))


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

    # Vegetation: logistic growth whose per-capita rate carries the threshold feedbacks
    # (so that K_V stays the ceiling; see docs/model.md, "changes"), plus planting.
    net = p.r_V + p.lambda1 * (th - p.theta_star) + p.lambda2 * (som - p.SOM_star)
    dV = V * (1.0 - V / p.K_V) * net + p.s_plant * d.psi_plant * (p.K_V - V)

    # Linear-chain lags (mean delays tau_VS, tau_SH).
    kx = n / p.tau_VS
    ky = n / p.tau_SH
    dx = [kx * ((V if k == 0 else x[k - 1]) - x[k]) for k in range(n)]
    ds = [ky * ((som if k == 0 else s[k - 1]) - s[k]) for k in range(n)]

    # Root-zone bucket.
    # Powers are written exp(c log x): XLA:CPU lowers ``pow`` to a slow scalar path, and one
    # log of theta / theta_fc_eff serves both g(theta) (capped at 1) and the drainage.
    fc = p.theta_fc + p.eta1 * s[n - 1] / p.Z_r
    log_rel = xp.log(xp.maximum(th / fc, TINY))
    g = xp.exp(p.gamma * xp.minimum(log_rel, 0.0))  # clip(rel, tiny, 1) ** gamma
    Rc = p.c_R * d.runoff_intensity * g * (1.0 - p.b_V * V) * (1.0 - p.b_eng * d.psi_eng)
    ET = p.ET_p * (p.e_s + (1.0 - p.e_s) * V) * xp.clip(
        (th - p.theta_wp) / (fc - p.theta_wp), 0.0, 1.0
    )
    L = p.k_L * xp.exp(p.c_L * log_rel)  # max(rel, tiny) ** c_L
    Q = d.P * Rc
    dth = (d.P - Q - ET - L) / p.Z_r

    # Sediment (Q^m_E and the cover exponential in one exp) and soil carbon.
    E = p.k_E * xp.exp(p.m_E * xp.log(xp.maximum(Q, TINY)) - p.c_E * V * d.erosion_intensity) \
        * (1.0 - d.psi_eng)
    inp = p.a1 * x[n - 1] / (p.f_0 + p.f_1 + p.f_2)
    M0 = 1000.0 * p.rho_b * LAYER_DEPTHS_M[0]
    dC0 = inp * p.f_0 - p.a2 * C0 - p.e_C * (T_HA_TO_KG_M2 * E) * C0 / M0
    dC1 = inp * p.f_1 - p.a2 * p.m_1 * C1
    dC2 = inp * p.f_2 - p.a2 * p.m_2 * C2

    parts = (dV, dC0, dC1, dC2, dth, *dx, *ds, Q, E, ET, L)
    return tuple(xp.broadcast_to(q, xp.shape(V)) for q in parts)


def vector_field(tau, y, args):
    """Diffrax-style vector field: ``args = (params, forcing, layout)``; tau in years since start."""
    p, forcing, layout = args
    k = forcing.index(tau)
    d = drivers(p, forcing.rainfall[k], forcing.intensity[k], forcing.psi_plant[k],
                forcing.psi_eng[k])
    return rates(y, p, d, layout)


def vector_field_numpy(tau, y, p: Params, forcing: Forcing, layout: Layout):
    """The same vector field in numpy (scipy reference); ``p`` and ``forcing`` numpy-valued."""
    k = int(forcing.index(tau, xp=np))
    d = drivers(p, forcing.rainfall[k], forcing.intensity[k], forcing.psi_plant[k],
                forcing.psi_eng[k])
    return rates(np.asarray(y), p, d, layout, xp=np)


def initial_state(p: Params, layout: Layout, xp=jnp):
    """State at the start year from ``V0``, ``SOM0`` and ``theta0``.

    The SOC profile takes the shape of the input/decay balance (stock of layer l
    proportional to f_l / m_l), scaled so that the 0-20 cm mass-weighted SOM equals SOM0.
    Lag chains start at equilibrium (x_k = V0, y_k = SOM0); running integrals at zero.
    """
    w0, w1, w2 = p.f_0, p.f_1 / p.m_1, p.f_2 / p.m_2
    # C_l = c * w_l with som_topsoil(c w0, c w1) = SOM0
    c = p.SOM0 / som_topsoil(w0, w1, p.rho_b)
    zero = xp.zeros_like(xp.asarray(p.V0))
    n = layout.n_lag
    parts = ([p.V0, c * w0, c * w1, c * w2, p.theta0] + [p.V0] * n + [p.SOM0] * n
             + [zero] * 4)
    V0 = xp.asarray(p.V0)
    return xp.stack([xp.broadcast_to(xp.asarray(q, dtype=V0.dtype), xp.shape(V0))
                     for q in parts], axis=0)
