"""``simulate``: the one solve of the V-SOM-theta system, and its annual outputs.

The integrator is a solver object (``_solvers``: :class:`Diffrax` with an adaptive PID
controller that knows every forcing jump, or fixed-step :class:`RK4`), chosen by
``solver=`` or by the ``method=`` name.  Every solver shares the vector field and the
observation operators (``observe_year``), and returns a :class:`Simulation` with a
per-solve ``status`` (``RESULTS``); a failed solve (maximum steps, a solver failure, a
non-finite state) has every output set to NaN.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ..model import LAYER_DEPTHS_M, N_LAG_DEFAULT, Forcing, Layout, Params, som_layer, som_topsoil
from ..status import MESSAGES, code
from ._solvers import METHODS, AbstractSolver, solver_from

__all__ = ["simulate", "solve_grid", "Simulation", "STATUS_MESSAGES",
           "METHODS", "OBSERVED", "FIELDS", "observe_year", "assemble", "with_forcing",
           "OK", "MAX_STEPS", "SOLVER_FAILED", "NONFINITE"]

# Status codes of a solve (per sample under vmap): entries of ``RESULTS``.
OK, MAX_STEPS, SOLVER_FAILED, NONFINITE = (code(n) for n in (
    "successful", "max_steps_reached", "solver_failed", "nonfinite"))
STATUS_MESSAGES = {c: MESSAGES[c] for c in (OK, MAX_STEPS, SOLVER_FAILED, NONFINITE)}

Years = Float[Array, "*batch years"]


class Simulation(eqx.Module):
    """Annual outputs of one solve (add a leading batch axis under ``vmap``).

    Fields, per calendar year (shape ``(n_years,)`` unless stated):
        V: cover fraction at mid-year.
        SOM: mass-weighted SOM of 0-20 cm at mid-year, %.
        SOM_layers: ``(n_years, 3)`` SOM of 0-10, 10-20, 20-40 cm at mid-year, %.
        theta: root-zone soil moisture at mid-year, m^3 m^-3.
        rainfall, runoff, ET, drainage, water_yield: annual totals, mm.
        erosion: annual sediment, t ha^-1.
        storage_change: Z_r * (theta(end) - theta(start)) of the year, mm.
        status: int scalar, 0 when the solve succeeded (``RESULTS`` codes; words in
            ``STATUS_MESSAGES``).
    """

    years: Int[Array, "*batch years"]
    V: Years
    SOM: Years
    SOM_layers: Float[Array, "*batch years 3"]
    theta: Years
    rainfall: Years
    runoff: Years
    ET: Years
    drainage: Years
    water_yield: Years
    erosion: Years
    storage_change: Years
    status: Int[Array, "*batch"]

    @property
    def ok(self) -> Bool[Array, ""]:
        return self.status == OK

    @property
    def veg_cover_pct(self) -> Years:
        return 100.0 * self.V

    def water_balance_residual(self) -> Years:
        """rainfall - runoff - ET - drainage - storage change, mm (zero up to the solver)."""
        return self.rainfall - self.runoff - self.ET - self.drainage - self.storage_change


def solve_grid(
    params: Params,
    forcing: Forcing,
    *,
    method: str = "tsit5",
    adjoint: str = "checkpoint",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 16_384,
    steps_per_year: int = 12,
    n_lag: int = N_LAG_DEFAULT,
    solver: AbstractSolver | None = None,
) -> tuple[Float[Array, "grid state"], Int[Array, ""]]:
    """Raw states on the half-year grid ``tau = 0, 0.5, ..., n_years`` and the status code
    (``solver``, or the one :func:`solver_from` makes of ``method`` and its settings).

    Failed solves are *not* masked here; :func:`simulate` does that.
    """
    layout = Layout(n_lag)
    if forcing.n_years < 1:
        raise ValueError("forcing must cover at least one year")
    if solver is None:
        solver = solver_from(method, adjoint=adjoint, rtol=rtol, atol=atol,
                             max_steps=max_steps, steps_per_year=steps_per_year)
    forcing = forcing.astype(params.dtype)
    ys, status = solver.solve_grid(params, forcing, layout)
    finite = jnp.all(jnp.isfinite(ys))
    status = jnp.where((status == OK) & ~finite, NONFINITE, status).astype(jnp.int32)
    return ys, status


# Per-year outputs of :func:`observe_year`, in its order (``rainfall`` comes from the forcing).
OBSERVED = ("V", "SOM", "SOM_0_10", "SOM_10_20", "SOM_20_40", "theta", "runoff", "ET",
            "drainage", "water_yield", "erosion", "storage_change")


def observe_year(start, mid, end, params: Params, layout: Layout) -> tuple:
    """Observation operators of one year: outputs (in ``OBSERVED`` order) from the states at
    the start, the middle and the end of the year.

    ``start``, ``mid``, ``end``: indexable by state position (state on the leading axis, any
    trailing shape: one year as scalars, or every year).  Elementwise, so the ensemble kernel
    generates its observation step from this function too.
    """
    def annual(i):
        return end[i] - start[i]

    runoff, drainage = annual(layout.Q), annual(layout.L)
    C0, C1, C2 = mid[1], mid[2], mid[3]
    return (mid[layout.V], som_topsoil(C0, C1, params.rho_b),
            som_layer(C0, params.rho_b, 0), som_layer(C1, params.rho_b, 1),
            som_layer(C2, params.rho_b, 2), mid[layout.THETA], runoff, annual(layout.ET),
            drainage, runoff + drainage, annual(layout.E),
            params.Z_r * (end[layout.THETA] - start[layout.THETA]))


# The Simulation fields made of OBSERVED values: each field's OBSERVED names (one: shape
# (n_years,); several: stacked on a last axis, (n_years, k)).
FIELDS = (("V", ("V",)), ("SOM", ("SOM",)),
          ("SOM_layers", ("SOM_0_10", "SOM_10_20", "SOM_20_40")),
          ("theta", ("theta",)), ("runoff", ("runoff",)), ("ET", ("ET",)),
          ("drainage", ("drainage",)), ("water_yield", ("water_yield",)),
          ("erosion", ("erosion",)), ("storage_change", ("storage_change",)))


def assemble(values, status, forcing: Forcing) -> Simulation:
    """A :class:`Simulation` from the per-year values of :func:`observe_year` (each
    ``(n_years,)``, ``OBSERVED`` order); every output NaN unless ``status`` is OK."""
    out = dict(zip(OBSERVED, values))
    ok = status == OK
    fields = {name: jnp.where(ok, out[keys[0]] if len(keys) == 1 else
                              jnp.stack([out[k] for k in keys], axis=-1), jnp.nan)
              for name, keys in FIELDS}
    return with_forcing(fields, status, forcing)


def with_forcing(fields: dict, status, forcing: Forcing) -> Simulation:
    """A :class:`Simulation` from its ``FIELDS`` (NaN already where ``status`` is not OK;
    any leading batch shape, that of ``status``) and the forcing's years and rainfall."""
    shape = jnp.shape(status) + jnp.shape(forcing.years)
    dtype = fields["V"].dtype
    rain = jnp.where(jnp.expand_dims(status == OK, -1), jnp.asarray(forcing.rainfall, dtype),
                     jnp.nan)
    return Simulation(years=jnp.broadcast_to(jnp.asarray(forcing.years), shape),
                      rainfall=jnp.broadcast_to(rain, shape), status=status, **fields)


def observe(ys, status, params: Params, forcing: Forcing, layout: Layout) -> Simulation:
    """Observation operators: annual outputs from the half-year grid of states ``(G, D)``."""
    starts, mids, ends = ys[0:-1:2].T, ys[1::2].T, ys[2::2].T  # (D, years)
    return assemble(observe_year(starts, mids, ends, params, layout), status, forcing)


def simulate(
    params: Params,
    forcing: Forcing,
    *,
    method: str = "tsit5",
    adjoint: str = "checkpoint",
    rtol: float | None = None,
    atol: float | None = None,
    max_steps: int = 16_384,
    steps_per_year: int = 12,
    n_lag: int = N_LAG_DEFAULT,
    solver: AbstractSolver | None = None,
) -> Simulation:
    """Solve the V-SOM-theta system over the forcing's years and return annual outputs.

    Safe under ``jit``, ``vmap`` (over ``params`` and/or ``forcing`` leaves) and ``grad``.
    The dtype of ``params`` sets the precision (``params.astype(jnp.float32)`` for speed).

    Arguments:
        params: one parameter set (scalar leaves).
        forcing: annual forcings; the run covers ``forcing.start .. forcing.end``.
        method: ``"tsit5"`` (default), ``"dopri8"``, ``"kvaerno5"`` (implicit) or ``"rk4"``
            (fixed ``steps_per_year``, the fast ensemble path).
        adjoint: ``"checkpoint"`` (default), ``"backsolve"`` or ``"forward"`` (forward-mode
            autodiff, for ``jax.jacfwd``); diffrax methods only.
        rtol, atol: adaptive tolerances (default 1e-8/1e-9 in float64, 1e-5/1e-6 in float32).
        max_steps: cap on adaptive steps; reaching it gives status 1, not an exception.
        steps_per_year: even number of RK4 steps per year (``method="rk4"``).
        n_lag: length of the linear-chain lags (static).
        solver: a solver object (``Diffrax(...)``, ``RK4(...)``) used instead of ``method``
            and its settings.
    Returns:
        :class:`Simulation`; where ``status != 0`` every output is NaN.
    """
    # every setting passed on explicitly: a call that spells out a default and one that
    # leaves it out are one trace and one compilation, not two
    return _simulate(params, forcing, method, adjoint, rtol, atol, max_steps, steps_per_year,
                     n_lag, solver)


def _simulate_traced(params, forcing, method, adjoint, rtol, atol, max_steps, steps_per_year,
                     n_lag, solver) -> Simulation:
    if solver is not None:
        if forcing.n_years < 1:
            raise ValueError("forcing must cover at least one year")
        sim = solver.simulation(params, forcing, Layout(n_lag))
        if sim is not None:  # the solver computed the annual outputs itself (the kernel)
            return sim
    ys, status = solve_grid(
        params, forcing, method=method, adjoint=adjoint, rtol=rtol, atol=atol,
        max_steps=max_steps, steps_per_year=steps_per_year, n_lag=n_lag, solver=solver,
    )
    return observe(ys, status, params, forcing.astype(params.dtype), Layout(n_lag))


# counted (``eqx.debug.get_num_traces``): a test hook for "one trace per call signature"
_simulate_counted = eqx.debug.assert_max_traces(_simulate_traced, max_traces=None)
_simulate = eqx.filter_jit(_simulate_counted)


def simulate_trace_count() -> int:
    """How many times :func:`simulate` has been traced in this process (a compile happens
    per trace): tests assert that equivalent calls share one."""
    return eqx.debug.get_num_traces(_simulate_counted)


# Depths (cm) of the SOC layers, for labels.
LAYER_LABELS = tuple(
    f"{int(round(100 * sum(LAYER_DEPTHS_M[:i])))}-{int(round(100 * sum(LAYER_DEPTHS_M[:i + 1])))}"
    for i in range(3)
)
