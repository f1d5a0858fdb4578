"""A pure numpy/scipy reference solve of the V-SOM-theta system (tests and benchmarks only).

The reference integrates :func:`regv1_jax._model.vector_field_numpy` - the very equations
that the JAX solvers use, evaluated with ``xp=numpy`` - by ``scipy.integrate.solve_ivp``,
one half year at a time.  Each piece ``[k/2, (k+1)/2]`` lies inside one calendar year, so no
step crosses a forcing jump; within a piece the forcing year is pinned (the right-hand side
is evaluated at the piece's year, also at the piece's right end where the right-continuous
forcing index would already point to the next year).  The annual outputs come from the same
observation operators as :func:`regv1_jax.simulate` (:func:`regv1_jax._solve.observe`).

scipy is imported inside the functions (importing it costs ~0.5 s; most runs never need it).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

from ..model import (
    N_LAG_DEFAULT,
    Forcing,
    Layout,
    Params,
    initial_state,
    vector_field_numpy,
    year_drivers,
)

__all__ = ["solve_scipy", "solve_scipy_grid", "OUTPUT_KEYS"]

# The annual outputs of ``Simulation`` that the reference returns.
OUTPUT_KEYS = ("V", "SOM", "SOM_layers", "theta", "rainfall", "runoff", "ET", "drainage",
               "water_yield", "erosion", "storage_change")


def _x64():
    """Context in which jax.numpy computes in float64 (whatever the global setting)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    try:  # jax < 0.5
        from jax.experimental import enable_x64

        return enable_x64()
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()


def _numpy_params(params: Params) -> Params:
    leaves = jax.tree_util.tree_leaves(params)
    if any(np.ndim(x) != 0 for x in leaves):
        raise ValueError("solve_scipy takes one parameter set (scalar leaves), not a batch")
    return jax.tree_util.tree_map(lambda x: np.asarray(x, dtype=np.float64), params)


def solve_scipy_grid(
    params: Params,
    forcing: Forcing,
    *,
    method: str = "Radau",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    n_lag: int = N_LAG_DEFAULT,
    **solve_ivp_kwargs,
) -> np.ndarray:
    """States on the half-year grid ``tau = 0, 0.5, ..., n_years``: shape ``(2 n + 1, D)``.

    Arguments:
        params: one parameter set (scalar leaves, any dtype; computed in float64).
        forcing: annual forcings.
        method, rtol, atol: passed to ``scipy.integrate.solve_ivp`` (any of its methods).
        n_lag: length of the linear-chain lags.
        solve_ivp_kwargs: further keywords for ``solve_ivp`` (e.g. ``first_step``).
    Raises:
        RuntimeError with solve_ivp's message when a piece fails.
    """
    from scipy.integrate import solve_ivp

    layout = Layout(n_lag)
    p = _numpy_params(params)
    fn = forcing.numpy()
    n = fn.n_years
    if n < 1:
        raise ValueError("forcing must cover at least one year")
    y = np.asarray(initial_state(p, year_drivers(p, fn), layout, xp=np), dtype=np.float64)
    grid = np.empty((2 * n + 1, layout.size), dtype=np.float64)
    grid[0] = y
    for k in range(2 * n):
        t0, t1 = 0.5 * k, 0.5 * (k + 1)
        # Any time inside the calendar year selects its forcing; the fields are autonomous
        # otherwise, so pinning tau to the year's middle is exact for the whole piece.
        tau_year = float(k // 2) + 0.5

        def rhs(_t, yy, tau_year=tau_year):
            return vector_field_numpy(tau_year, yy, p, fn, layout)

        sol = solve_ivp(rhs, (t0, t1), y, method=method, rtol=rtol, atol=atol,
                        **solve_ivp_kwargs)
        if not sol.success or not np.all(np.isfinite(sol.y[:, -1])):
            raise RuntimeError(
                f"solve_ivp ({method}) failed on tau in [{t0}, {t1}] "
                f"(year {fn.start + k // 2}): {sol.message}"
            )
        y = sol.y[:, -1]
        grid[k + 1] = y
    return grid


def solve_scipy(
    params: Params,
    forcing: Forcing,
    *,
    method: str = "Radau",
    rtol: float = 1e-10,
    atol: float = 1e-12,
    n_lag: int = N_LAG_DEFAULT,
    **solve_ivp_kwargs,
) -> dict[str, np.ndarray]:
    """Annual outputs of a scipy ``solve_ivp`` reference solve, as numpy float64 arrays.

    The keys are those of :class:`regv1_jax.Simulation` (``OUTPUT_KEYS``) plus ``years``;
    the values come from :func:`regv1_jax._solve.observe` applied to the half-year grid
    of :func:`solve_scipy_grid`, so that the observation operators have one source of truth.
    """
    from ._simulate import OK, observe

    ys = solve_scipy_grid(params, forcing, method=method, rtol=rtol, atol=atol, n_lag=n_lag,
                          **solve_ivp_kwargs)
    p = _numpy_params(params)
    with _x64():
        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.float64), p)
        sim = observe(jnp.asarray(ys, dtype=jnp.float64), jnp.asarray(OK, dtype=jnp.int32),
                      p64, forcing.astype(jnp.float64), Layout(n_lag))
        out = {k: np.asarray(getattr(sim, k), dtype=np.float64) for k in OUTPUT_KEYS}
    out["years"] = np.asarray(forcing.years)
    return out
