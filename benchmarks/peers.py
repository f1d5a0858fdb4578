"""The peers of the forward-ensemble benchmark: what a skilled numpy or numba user writes.

* ``numpy_rk4``: fixed-step RK4 vectorised over the batch, every member a lane of ``(B,)``
  arrays, on the library's own right-hand side ``rate_terms(..., xp=numpy)`` (so it does the
  very same arithmetic as the library, at numpy speed).
* ``numba_rk4``: fixed-step RK4 per member, members spread over cores with ``prange``; the
  right-hand side written by hand for numba (scalar code, as a user would write it).  This is
  a copy of the equations, so ``bench_solve.py`` first asserts that both peers agree with
  ``simulate_ensemble`` on the same members: when the model changes and this copy does not,
  the benchmark stops instead of timing different work.

Both return the half-year state grid ``(2 n_years + 1, D, B)`` of ``solve_grid``.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from regv1_jax.model import (
    PARAM_NAMES,
    Drivers,
    Layout,
    drivers,
    initial_state,
    rate_terms,
    year_drivers,
)


def _numpy_params(params, dtype):
    return SimpleNamespace(**{k: np.asarray(getattr(params, k), dtype=dtype)
                              for k in PARAM_NAMES})


def numpy_rk4(params, forcing, layout: Layout, steps_per_year=12, dtype=np.float32):
    """RK4 over the batch with numpy arrays, on ``rate_terms(..., xp=numpy)``."""
    p = _numpy_params(params, dtype)
    f = forcing.numpy()
    h = 1.0 / steps_per_year
    y = tuple(np.asarray(c, dtype=dtype)
              for c in initial_state(p, year_drivers(p, f), layout, xp=np))
    grid = [np.stack(y)]
    B = y[0].shape[0]
    for k in range(f.n_years):
        d = drivers(p, f.rainfall[k], f.intensity[k], f.psi_plant[k], f.psi_eng[k])
        d = Drivers(*[np.broadcast_to(np.asarray(x, dtype=dtype), (B,)) for x in d])
        for _half in range(2):
            for _ in range(steps_per_year // 2):
                k1 = rate_terms(y, p, d, layout, np)
                k2 = rate_terms(tuple(a + (0.5 * h) * b for a, b in zip(y, k1)), p, d, layout,
                                np)
                k3 = rate_terms(tuple(a + (0.5 * h) * b for a, b in zip(y, k2)), p, d, layout,
                                np)
                k4 = rate_terms(tuple(a + h * b for a, b in zip(y, k3)), p, d, layout, np)
                y = tuple(a + (h / 6.0) * (b1 + 2.0 * b2 + 2.0 * b3 + b4)
                          for a, b1, b2, b3, b4 in zip(y, k1, k2, k3, k4))
            grid.append(np.stack(y))
    return np.stack(grid)


_NUMBA = {}


def _numba_kernel():
    """Compile (once) the numba RK4: scalar right-hand side, ``prange`` over members."""
    if "rk4" in _NUMBA:
        return _NUMBA["rk4"]
    import numba

    ix = {name: i for i, name in enumerate(PARAM_NAMES)}
    (r_V, K_V, l1, l2, th_s, som_s, a1, a2, eta1, tau_VS, tau_SH, s_plant, Z_r, th_fc, th_wp,
     ET_p, e_s, c_R, gam, omega, b_V, b_eng, k_L, c_L, k_E, m_E, c_E, omega_E, e_C, rho_b,
     f_0, f_1, f_2, m_1, m_2, i_ref, m_D, k_I) = [ix[k] for k in (
        "r_V", "K_V", "lambda1", "lambda2", "theta_star", "SOM_star", "a1", "a2", "eta1",
        "tau_VS", "tau_SH", "s_plant", "Z_r", "theta_fc", "theta_wp", "ET_p", "e_s", "c_R",
        "gamma", "omega", "b_V", "b_eng", "k_L", "c_L", "k_E", "m_E", "c_E", "omega_E", "e_C",
        "rho_b", "f_0", "f_1", "f_2", "m_1", "m_2", "i_ref", "m_D", "k_I")]
    TINY = 1e-30
    EPS_F, EPS_D = 1e-3, 1e-2  # smoothing of max(F, 0) and of the drought deficit

    @numba.njit(inline="always", fastmath=True)
    def rhs(y, q, P, ri, ei, pp, pe, n, k):
        V, C0, C1, C2, th = y[0], y[1], y[2], y[3], y[4]
        som = 0.1724 * (C0 + C1) / (q[rho_b] * 0.2)
        fc = q[th_fc] + q[eta1] * y[4 + 2 * n] / q[Z_r]
        rel = min(max((th - q[th_wp]) / (fc - q[th_wp]), 0.0), 1.0)
        F = q[l1] * (th - q[th_s]) + q[l2] * (som - q[som_s])
        Fp = 0.5 * (F + np.sqrt(F * F + EPS_F * EPS_F))
        x = (q[th_s] - th) / (q[th_s] - q[th_wp])
        D = min(0.5 * (x + np.sqrt(x * x + EPS_D * EPS_D)), 1.0)
        k[0] = (V * ((q[r_V] * rel + Fp) * (1.0 - V / q[K_V]) - (Fp - F) - q[m_D] * D)
                + q[s_plant] * pp * rel * (q[K_V] - V))
        kx = n / q[tau_VS]
        ky = n / q[tau_SH]
        for j in range(n):
            k[5 + j] = kx * ((V if j == 0 else y[4 + j]) - y[5 + j])
            k[5 + n + j] = ky * ((som if j == 0 else y[4 + n + j]) - y[5 + n + j])
        log_rel = np.log(max(th / fc, TINY))
        g = np.exp(q[gam] * min(log_rel, 0.0))
        hI = V * (1.0 + q[k_I]) / (V + q[k_I])
        raw = q[c_R] * ri * g * (1.0 - q[b_V] * hI) * (1.0 - q[b_eng] * pe)
        Rc = raw / (1.0 + raw ** 8) ** 0.125
        ET = q[ET_p] * (q[e_s] + (1.0 - q[e_s]) * V) * rel
        L = q[k_L] * np.exp(q[c_L] * log_rel)
        Q = P * Rc
        k[4] = (P - Q - ET - L) / q[Z_r]
        E = q[k_E] * np.exp(q[m_E] * np.log(max(Q, TINY)) - q[c_E] * V * ei) * (1.0 - pe)
        inp = q[a1] * y[4 + n] / (q[f_0] + q[f_1] + q[f_2])
        M0 = 1000.0 * q[rho_b] * 0.1
        k[1] = inp * q[f_0] - (q[a2] + q[e_C] * (0.1 * E) / M0) * C0
        k[2] = inp * q[f_1] - q[a2] * q[m_1] * C1
        k[3] = inp * q[f_2] - q[a2] * q[m_2] * C2
        k[5 + 2 * n] = Q
        k[6 + 2 * n] = E
        k[7 + 2 * n] = ET
        k[8 + 2 * n] = L

    @numba.njit(parallel=True, fastmath=True)
    def rk4(prm, y0, rain, inten, psi_p, psi_e, steps, n, out):
        D, B = y0.shape
        h = 1.0 / steps
        for b in numba.prange(B):
            q = prm[:, b].copy()
            y = y0[:, b].copy()
            z = np.empty_like(y)
            k1 = np.empty_like(y)
            k2 = np.empty_like(y)
            k3 = np.empty_like(y)
            k4 = np.empty_like(y)
            out[0, :, b] = y
            for yr in range(rain.shape[0]):
                P = rain[yr]
                ri = (inten[yr] / q[i_ref]) ** q[omega]
                ei = (q[i_ref] / inten[yr]) ** q[omega_E]
                for hf in range(2):
                    for _ in range(steps // 2):
                        rhs(y, q, P, ri, ei, psi_p[yr], psi_e[yr], n, k1)
                        for c in range(D):
                            z[c] = y[c] + 0.5 * h * k1[c]
                        rhs(z, q, P, ri, ei, psi_p[yr], psi_e[yr], n, k2)
                        for c in range(D):
                            z[c] = y[c] + 0.5 * h * k2[c]
                        rhs(z, q, P, ri, ei, psi_p[yr], psi_e[yr], n, k3)
                        for c in range(D):
                            z[c] = y[c] + h * k3[c]
                        rhs(z, q, P, ri, ei, psi_p[yr], psi_e[yr], n, k4)
                        for c in range(D):
                            y[c] = y[c] + h / 6.0 * (k1[c] + 2.0 * k2[c] + 2.0 * k3[c] + k4[c])
                    out[1 + 2 * yr + hf, :, b] = y

    _NUMBA["rk4"] = rk4
    return rk4


def numba_rk4(params, forcing, layout: Layout, steps_per_year=12, dtype=np.float32):
    """RK4 per member with numba, members over cores (``prange``).

    Scalar code gains nothing from float32 (no SIMD across members) and loses to the
    float32/float64 conversions of its float literals, so the peer always computes in
    float64 and returns ``dtype`` (its float32 row is its best float32 answer).
    """
    rk4 = _numba_kernel()
    p = _numpy_params(params, np.float64)
    prm = np.ascontiguousarray(np.stack([getattr(p, k) for k in PARAM_NAMES]))
    y0 = np.ascontiguousarray(np.stack(
        [np.asarray(c, dtype=np.float64)
         for c in initial_state(p, year_drivers(p, forcing.numpy()), layout, xp=np)]))
    f = forcing.numpy()
    cast = lambda a: np.ascontiguousarray(a, dtype=np.float64)  # noqa: E731
    out = np.empty((2 * f.n_years + 1,) + y0.shape, dtype=np.float64)
    rk4(prm, y0, cast(f.rainfall), cast(f.intensity), cast(f.psi_plant), cast(f.psi_eng),
        steps_per_year, layout.n_lag, out)
    return out.astype(dtype, copy=False)
