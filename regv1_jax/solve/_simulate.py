"""``simulate``: the one solve of the V-SOM-theta system, and its annual outputs.

Two integrators share the vector field and the observation operators:

* ``method="tsit5"`` (default), ``"dopri8"``, ``"kvaerno5"`` (implicit, for stiff draws):
  diffrax with an adaptive PID controller that knows every forcing jump, and a selectable
  adjoint (``"checkpoint"`` = recursive checkpointing, default; ``"backsolve"``).
* ``method="rk4"``: classical Runge-Kutta with a fixed number of steps per year inside
  ``lax.scan``: no adaptive ``while_loop``, no per-step checks, so that ``vmap`` over
  thousands of draws runs every member in lock-step.  ``simulate_ensemble``
  (``_ensemble.py``) is its batched, fast form.

Both return a :class:`Simulation` with a per-solve ``status``; a failed solve (maximum
steps, a solver failure, a non-finite state) has every output set to NaN.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ..model._field import (
    LAYER_DEPTHS_M,
    N_LAG_DEFAULT,
    Layout,
    driver_series,
    drivers,
    initial_state,
    rates,
    som_layer,
    som_topsoil,
    vector_field,
    year_drivers,
)
from ..model._forcing import Forcing
from ..model._params import Params

__all__ = ["simulate", "solve_grid", "Simulation", "STATUS_MESSAGES",
           "METHODS", "OBSERVED", "FIELDS", "observe_year", "assemble", "with_forcing"]

METHODS = ("tsit5", "dopri8", "kvaerno5", "rk4")
ADJOINTS = ("checkpoint", "backsolve", "forward")

# Status codes of a solve (per sample under vmap).
OK, MAX_STEPS, SOLVER_FAILED, NONFINITE = 0, 1, 2, 3
STATUS_MESSAGES = {
    OK: "ok",
    MAX_STEPS: "maximum number of solver steps reached (raise max_steps, or use "
    "method='kvaerno5' for a stiff parameter set)",
    SOLVER_FAILED: "the solver failed (step size collapsed or the implicit solve diverged)",
    NONFINITE: "the solution became non-finite (NaN or inf); the parameter set is "
    "outside the model's valid region",
}

Years = Float[Array, " years"]


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
        status: int scalar, 0 when the solve succeeded (see ``STATUS_MESSAGES``).
    """

    years: Int[Array, " years"]
    V: Years
    SOM: Years
    SOM_layers: Float[Array, "years 3"]
    theta: Years
    rainfall: Years
    runoff: Years
    ET: Years
    drainage: Years
    water_yield: Years
    erosion: Years
    storage_change: Years
    status: Int[Array, ""]

    @property
    def ok(self) -> Bool[Array, ""]:
        return self.status == OK

    @property
    def veg_cover_pct(self) -> Years:
        return 100.0 * self.V

    def water_balance_residual(self) -> Years:
        """rainfall - runoff - ET - drainage - storage change, mm (zero up to the solver)."""
        return self.rainfall - self.runoff - self.ET - self.drainage - self.storage_change


def _dtype_defaults(dtype):
    if dtype == jnp.float64:
        return 1e-8, 1e-9
    return 1e-5, 1e-6


def _solver(method: str):
    if method == "tsit5":
        return dfx.Tsit5()
    if method == "dopri8":
        return dfx.Dopri8()
    if method == "kvaerno5":
        return dfx.Kvaerno5()
    raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")


def _adjoint(adjoint: str):
    if adjoint == "checkpoint":
        return dfx.RecursiveCheckpointAdjoint()
    if adjoint == "backsolve":
        return dfx.BacksolveAdjoint(solver=dfx.Tsit5())
    if adjoint == "forward":
        return dfx.ForwardMode()  # for jax.jacfwd (Fisher information)
    raise ValueError(f"unknown adjoint {adjoint!r}; choose one of {ADJOINTS}")


def _solve_diffrax(params, forcing, layout, method, adjoint, rtol, atol, max_steps):
    dtype = params.dtype
    n = forcing.n_years
    y0 = initial_state(params, year_drivers(params, forcing), layout)
    ts = jnp.arange(2 * n + 1, dtype=dtype) * 0.5
    controller = dfx.PIDController(rtol=rtol, atol=atol, jump_ts=forcing.jump_ts(dtype))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(vector_field),
        _solver(method),
        t0=jnp.asarray(0.0, dtype),
        t1=jnp.asarray(float(n), dtype),
        dt0=jnp.asarray(0.05, dtype),
        y0=y0,
        args=(params, forcing, layout),
        saveat=dfx.SaveAt(ts=ts),
        stepsize_controller=controller,
        adjoint=_adjoint(adjoint),
        max_steps=max_steps,
        throw=False,
    )
    status = jnp.where(
        sol.result == dfx.RESULTS.successful,
        OK,
        jnp.where(sol.result == dfx.RESULTS.max_steps_reached, MAX_STEPS, SOLVER_FAILED),
    )
    return sol.ys, status


def _rk4_step(y, p, d, layout, h):
    k1 = rates(y, p, d, layout)
    k2 = rates(y + (0.5 * h) * k1, p, d, layout)
    k3 = rates(y + (0.5 * h) * k2, p, d, layout)
    k4 = rates(y + h * k3, p, d, layout)
    return y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def _solve_rk4(params, forcing, layout, steps_per_year, unroll=1):
    """Fixed-step RK4; with batched parameter leaves ``(B,)`` the state is ``(D, B)`` (the
    right-hand side broadcasts over the batch on the last axis, no ``vmap`` needed)."""
    if steps_per_year < 2 or steps_per_year % 2:
        raise ValueError(f"steps_per_year must be an even int >= 2, got {steps_per_year}")
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
    ys = jnp.concatenate([y0[None], pairs], axis=0)
    return ys, jnp.asarray(OK, dtype=jnp.int32)


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
) -> tuple[Float[Array, "grid state"], Int[Array, ""]]:
    """Raw states on the half-year grid ``tau = 0, 0.5, ..., n_years`` and the status code.

    Failed solves are *not* masked here; :func:`simulate` does that.
    """
    layout = Layout(n_lag)
    if forcing.n_years < 1:
        raise ValueError("forcing must cover at least one year")
    forcing = forcing.astype(params.dtype)
    if method == "rk4":
        ys, status = _solve_rk4(params, forcing, layout, steps_per_year)
    else:
        if adjoint not in ADJOINTS:
            raise ValueError(f"unknown adjoint {adjoint!r}; choose one of {ADJOINTS}")
        d_rtol, d_atol = _dtype_defaults(params.dtype)
        ys, status = _solve_diffrax(
            params, forcing, layout, method, adjoint,
            d_rtol if rtol is None else rtol, d_atol if atol is None else atol, max_steps,
        )
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


@eqx.filter_jit
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
    Returns:
        :class:`Simulation`; where ``status != 0`` every output is NaN.
    """
    ys, status = solve_grid(
        params, forcing, method=method, adjoint=adjoint, rtol=rtol, atol=atol,
        max_steps=max_steps, steps_per_year=steps_per_year, n_lag=n_lag,
    )
    return observe(ys, status, params, forcing.astype(params.dtype), Layout(n_lag))


# Depths (cm) of the SOC layers, for labels.
LAYER_LABELS = tuple(
    f"{int(round(100 * sum(LAYER_DEPTHS_M[:i])))}-{int(round(100 * sum(LAYER_DEPTHS_M[:i + 1])))}"
    for i in range(3)
)
