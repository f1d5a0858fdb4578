"""Solvers as objects: how the V-SOM-theta system is integrated over a forcing.

A solver is a frozen ``eqx.Module`` (hashable, so it can be a static argument of a jitted
function) with one method, :meth:`AbstractSolver.solve_grid`: the raw states on the
half-year grid ``tau = 0, 0.5, ..., n_years`` and a status code (``RESULTS``).  Two kinds:

* :class:`Diffrax`: a diffrax solver (``Tsit5`` default, ``Dopri8``, ``Kvaerno5`` for stiff
  draws) with an adaptive PID controller that knows every forcing jump, and a diffrax
  adjoint (recursive checkpointing by default; backsolve; forward mode for ``jax.jacfwd``);
* :class:`RK4`: classical Runge-Kutta with a fixed number of steps per year inside
  ``lax.scan``: no adaptive ``while_loop``, no per-step checks, so that ``vmap`` over
  thousands of draws runs every member in lock-step (``simulate_ensemble`` is its batched,
  fast form).

:meth:`AbstractSolver.for_jacobian` and :meth:`AbstractSolver.for_gradient` give the variant
of a solver to differentiate in forward mode (Gauss-Newton Jacobians) or reverse mode
(gradients of a scalar loss); :func:`solver_from` maps the ``method=`` names of ``simulate``
and of the calibration config to objects (one table, ``METHODS``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..model import (
    Forcing,
    Layout,
    Params,
    driver_series,
    drivers,
    initial_state,
    rates,
    vector_field,
    year_drivers,
)
from ..status import code

__all__ = ["AbstractSolver", "Diffrax", "RK4", "METHODS", "ADJOINTS", "solver_from",
           "rk4_grid"]

OK = code("successful")

# Diffrax solvers by the names ``simulate(method=...)`` and the config take.
DIFFRAX_METHODS: dict[str, type[dfx.AbstractSolver]] = {
    "tsit5": dfx.Tsit5, "dopri8": dfx.Dopri8, "kvaerno5": dfx.Kvaerno5}
METHODS = (*DIFFRAX_METHODS, "rk4")
# Diffrax adjoints by name.
ADJOINTS: dict[str, Callable[[], dfx.AbstractAdjoint]] = {
    "checkpoint": dfx.RecursiveCheckpointAdjoint,
    "backsolve": lambda: dfx.BacksolveAdjoint(solver=dfx.Tsit5()),
    "forward": dfx.ForwardMode,  # for jax.jacfwd (Gauss-Newton, Fisher information)
}


class AbstractSolver(eqx.Module):
    """Integrates the system over a forcing; subclasses are final."""

    @abc.abstractmethod
    def solve_grid(self, params: Params, forcing: Forcing, layout: Layout
                   ) -> tuple[Float[Array, "grid state *batch"], Int[Array, ""]]:
        """States on the half-year grid ``(2 n_years + 1, D[, B])`` and a status code
        (``RESULTS``: successful, max_steps_reached or solver_failed; non-finite states
        are judged by the caller)."""

    def simulation(self, params: Params, forcing: Forcing, layout: Layout):
        """The ``Simulation`` computed by the solver itself, or None (the default):
        ``simulate`` then observes the state grid of :meth:`solve_grid`."""
        return None

    def simulation_of_vector(self, x: Float[Array, " n_params"], forcing: Forcing,
                             layout: Layout):
        """As :meth:`simulation` for the parameters stacked in ``PARAM_NAMES`` order (a
        fit's vector: no unstacking into ``Params`` and stacking back), or None."""
        return None

    def for_jacobian(self) -> AbstractSolver:
        """This solver, set up to be differentiated in forward mode (``jax.jacfwd``)."""
        return self

    def for_gradient(self) -> AbstractSolver:
        """This solver, set up to be differentiated in reverse mode (``jax.grad``)."""
        return self


class Diffrax(AbstractSolver):
    """An adaptive diffrax solve (``solver``, default Tsit5) with a PID controller that
    steps onto every forcing jump; ``rtol``/``atol`` default to 1e-8/1e-9 in float64 and
    1e-5/1e-6 in float32; reaching ``max_steps`` is a status, not an exception."""

    solver: dfx.AbstractSolver = dfx.Tsit5()
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()
    rtol: float | None = None
    atol: float | None = None
    max_steps: int = 16_384

    def for_jacobian(self) -> Diffrax:
        return dataclasses.replace(self, adjoint=dfx.ForwardMode())

    def for_gradient(self) -> Diffrax:
        return dataclasses.replace(self, adjoint=dfx.RecursiveCheckpointAdjoint())

    def solve_grid(self, params, forcing, layout):
        dtype = params.dtype
        d_rtol, d_atol = (1e-8, 1e-9) if dtype == jnp.float64 else (1e-5, 1e-6)
        rtol = d_rtol if self.rtol is None else self.rtol
        atol = d_atol if self.atol is None else self.atol
        n = forcing.n_years
        y0 = initial_state(params, year_drivers(params, forcing), layout)
        ts = jnp.arange(2 * n + 1, dtype=dtype) * 0.5
        controller = dfx.PIDController(rtol=rtol, atol=atol, jump_ts=forcing.jump_ts(dtype))
        sol = dfx.diffeqsolve(
            dfx.ODETerm(vector_field), self.solver,
            t0=jnp.asarray(0.0, dtype), t1=jnp.asarray(float(n), dtype),
            dt0=jnp.asarray(0.05, dtype), y0=y0, args=(params, forcing, layout),
            saveat=dfx.SaveAt(ts=ts), stepsize_controller=controller, adjoint=self.adjoint,
            max_steps=self.max_steps, throw=False)
        status = jnp.where(
            sol.result == dfx.RESULTS.successful, OK,
            jnp.where(sol.result == dfx.RESULTS.max_steps_reached, code("max_steps_reached"),
                      code("solver_failed")))
        return sol.ys, status


class RK4(AbstractSolver):
    """Classical RK4 with ``steps_per_year`` (even) fixed steps per year in ``lax.scan``;
    with batched parameter leaves ``(B,)`` the state is ``(D, B)`` (the right-hand side
    broadcasts over the batch on the last axis, no ``vmap`` needed)."""

    steps_per_year: int = 12
    unroll: int | bool = 1

    def __check_init__(self):
        k = self.steps_per_year
        if not isinstance(k, int) or k < 2 or k % 2:
            raise ValueError(f"steps_per_year must be an even int >= 2, got {k}")

    def solve_grid(self, params, forcing, layout):
        return rk4_grid(params, forcing, layout, self.steps_per_year, self.unroll), \
            jnp.asarray(OK, jnp.int32)


def _rk4_step(y, p, d, layout, h):
    k1 = rates(y, p, d, layout)
    k2 = rates(y + (0.5 * h) * k1, p, d, layout)
    k3 = rates(y + (0.5 * h) * k2, p, d, layout)
    k4 = rates(y + h * k3, p, d, layout)
    return y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def rk4_grid(params: Params, forcing: Forcing, layout: Layout, steps_per_year: int,
             unroll: int | bool = 1) -> Float[Array, "grid state *batch"]:
    """Fixed-step RK4 states on the half-year grid (``RK4.solve_grid`` without the
    status)."""
    h = 1.0 / steps_per_year
    half = steps_per_year // 2
    y0 = initial_state(params, year_drivers(params, forcing), layout)

    def half_year(y, d):
        def step(y, _):
            return _rk4_step(y, params, d, layout, h), None

        y, _ = jax.lax.scan(step, y, None, length=half, unroll=unroll)
        return y

    def year(y, f):
        d = drivers(params, *f)
        y_mid = half_year(y, d)
        y_end = half_year(y_mid, d)
        return y_end, (y_mid, y_end)

    _, (mids, ends) = jax.lax.scan(year, y0, driver_series(forcing))
    # Grid 0, 0.5, 1, ..., n  (years since start), states along axis 0.
    pairs = jnp.stack([mids, ends], axis=1).reshape((2 * forcing.n_years,) + y0.shape)
    return jnp.concatenate([y0[None], pairs], axis=0)


def solver_from(method: str = "tsit5", *, adjoint: str = "checkpoint",
                rtol: float | None = None, atol: float | None = None,
                max_steps: int = 16_384, steps_per_year: int = 12) -> AbstractSolver:
    """The solver object of a ``method`` name (``METHODS``) and its settings."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if method == "rk4":
        return RK4(steps_per_year)
    if adjoint not in ADJOINTS:
        raise ValueError(f"unknown adjoint {adjoint!r}; choose one of {tuple(ADJOINTS)}")
    return Diffrax(DIFFRAX_METHODS[method](), ADJOINTS[adjoint](), rtol, atol, max_steps)
