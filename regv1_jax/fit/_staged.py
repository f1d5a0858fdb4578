"""The staged fit as one pure, jitted function: data in, :class:`FitResult` out.

``fit_staged`` runs every stage of a config inside one ``lax.scan`` (stage masks, variable
weights and starts are arrays, so all stages share one trace: :func:`stage_step` is the
body), every start of a stage under ``vmap``, picks the best start on the device
(``argmin`` over finite losses), holds the free parameters that no data row is sensitive
to, and returns per-stage status codes (``RESULTS``) instead of raising.  Per-cell weights
(``cell_w``) make it the seam for bootstrap (resampling by weights) and profiles:
``jax.vmap(fit_staged, in_axes=(None, ..., 0))`` over weight vectors.

The solver and the optimiser are objects in :class:`FitSettings` (static: hashable
modules); the host pipeline (``calibrate_stages``) calls this function once and only turns
its :class:`FitResult` into the per-stage report records.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..model import PARAM_NAMES, Forcing, Params, ParamSpace
from ..status import code
from ._config import CalibrationError, FitSettings, Stage
from ._objective import TARGET_VARIABLES, Objective, Targets
from ._optimise import AbstractOptimiser

__all__ = ["FitResult", "StagedProblem", "Comparison", "staged_problem", "prior_starts",
           "fit_staged", "fit_compared", "fit_sites", "stage_step", "cell_weights",
           "STAGE_CODES", "AT_BOUND_U", "trace_count"]

# Stage status words (StageResult.status) and their RESULTS codes (FitResult.status).
STAGE_CODES = {"ok": code("successful"), "not_converged": code("not_converged"),
               "at_bound": code("at_bound"), "skipped": code("skipped"),
               "failed": code("failed")}
AT_BOUND_U = float(np.log((1 - 1e-3) / 1e-3))  # |u| beyond this: within 0.1% of a bound


class FitResult(eqx.Module):
    """What ``fit_staged`` returns (leading batch axes under ``vmap``)."""

    u: Float[Array, " n_params"]  # final unconstrained vector (all parameters)
    params: Params  # final physical parameters
    status: Int[Array, " stages"]  # RESULTS codes (STAGE_CODES)
    loss: Float[Array, " stages"]  # best start's final loss per stage
    best_start: Int[Array, " stages"]
    fitted: Bool[Array, "stages n_params"]  # free and sensitive to the data
    n_iter: Int[Array, " stages"]
    # Physical values of every parameter after each stage (held and never-free parameters
    # keep their incoming values exactly).
    values: Float[Array, "stages n_params"]
    initial_loss: Float[Array, " stages"]  # the best start's loss at its start
    grad_norm: Float[Array, " stages"]  # |J^T r| of the best start at its end
    loss_change: Float[Array, " stages"]  # max - min of its loss over the last 10 iterations
    start_losses: Float[Array, "stages starts"]  # every start's final loss (NaN: skipped)
    finite_starts: Bool[Array, "stages starts"]  # False: the start diverged (dropped)
    held: Bool[Array, "stages n_params"]  # free, but no data row sensitive: held
    at_bound: Bool[Array, "stages n_params"]  # fitted and within 0.1% of a bound
    n_constraints: Int[Array, " stages"]  # observed cells of its variables (+ events)
    # Free in the config but kept at their incoming values because an earlier stage that
    # had them free did not fit them (skipped, failed or held there): a later (joint)
    # stage does not move what the data of its own stage could not identify.
    kept: Bool[Array, "stages n_params"]


class StagedProblem(eqx.Module):
    """The arrays of a staged fit (built on the host by :func:`staged_problem`)."""

    masks: Bool[Array, "stages n_params"]
    var_w: Float[Array, "stages n_vars"]
    ev_w: Float[Array, " stages"]
    starts: Float[Array, "stages n_draws n_params"]
    prior_floor: Float[Array, " stages"]  # the stage's prior weight is at least this


class _Carry(eqx.Module):
    x: Float[Array, " n_params"]  # physical values after the stages so far
    ruled_out: Bool[Array, " n_params"]  # free in an earlier stage that could not fit them


class _StageInputs(eqx.Module):
    mask: Bool[Array, " n_params"]
    var_w: Float[Array, " n_vars"]
    ev_w: Float[Array, ""]
    draws: Float[Array, "n_draws n_params"]
    prior_floor: Float[Array, ""]


def staged_problem(space: ParamSpace, stages: tuple[Stage, ...], n_starts: int, key,
                   dtype=jnp.float64, optimiser: AbstractOptimiser | None = None,
                   pad_to: int | None = None, first_starts=None) -> StagedProblem:
    """Stage masks, variable and event weights, and the prior draws that start each stage
    (``n_starts - 1`` per stage; the warm start is the incoming vector).

    ``pad_to``: append stages with no free parameter and no data (always skipped, at no
    cost) up to this many, so that configs with fewer stages share one compiled fit.
    ``first_starts``: ``(n_starts - 1, n_params)`` unconstrained vectors that start the
    first stage instead of its prior draws (the global start search's).
    Raises :class:`CalibrationError` for a bad stage before any compute."""
    width = getattr(optimiser, "width", None)
    for st in stages:
        st.check(space)
        if width is not None and len(st.free) > width:
            raise CalibrationError(f"stage {st.name!r}: {len(st.free)} free parameters; "
                                   f"optimizer 'lm' takes at most {width} (use 'lbfgs')")
    # Built on the host (numpy) and moved once: each eager jnp op costs a dispatch.
    n_pad = max((pad_to or 0) - len(stages), 0)
    n_all = len(stages) + n_pad
    masks = np.zeros((n_all, len(PARAM_NAMES)), bool)
    var_w = np.zeros((n_all, len(TARGET_VARIABLES)))
    ev_w = np.zeros(n_all)
    floor = np.zeros(n_all)
    for i, st in enumerate(stages):
        floor[i] = st.min_prior_weight
        masks[i] = [n in st.free for n in PARAM_NAMES]
        var_w[i] = [v in st.variables for v in TARGET_VARIABLES]
        ev_w[i] = 1.0 if st.events else 0.0
    n_draws = max(n_starts - 1, 1)
    draws = np.zeros((n_all, max(n_starts - 1, 0), len(PARAM_NAMES)), np.dtype(dtype))
    draws[:len(stages)] = prior_starts(space, key, len(stages), n_draws)[:, :n_starts - 1]
    if first_starts is not None:
        first = np.asarray(first_starts)
        if first.shape != draws.shape[1:]:
            raise CalibrationError(f"first_starts has shape {first.shape}, expected "
                                   f"{draws.shape[1:]} (n_starts - 1 vectors)")
        draws[0] = first
    return StagedProblem(jnp.asarray(masks), jnp.asarray(var_w, dtype),
                         jnp.asarray(ev_w, dtype), jnp.asarray(draws, dtype),
                         jnp.asarray(floor, dtype))


def prior_starts(space: ParamSpace, key, n_stages: int, n_draws: int) -> np.ndarray:
    """``(n_stages, n_draws, n_params)`` unconstrained prior draws that start the stages:
    each parameter normal on its prior's scale truncated to its CI_95 (as
    ``ParamSpace.sample_prior``), stage ``i`` from the numpy generator seeded by ``key``'s
    data and ``i`` (host code: the same draws for any stage count and dtype)."""
    from scipy.special import ndtr, ndtri

    data = (jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            else key)
    seed = [int(v) for v in np.asarray(data).ravel()]
    mean, sd, ci, log = space.prior_on_scale()
    lo, hi = ndtr((ci[:, 0] - mean) / sd), ndtr((ci[:, 1] - mean) / sd)
    out = np.empty((n_stages, n_draws, len(space.specs)))
    for i in range(n_stages):
        rng = np.random.default_rng(seed + [i])
        s = mean + sd * ndtri(lo + rng.random((n_draws, len(space.specs))) * (hi - lo))
        out[i] = space.host_to_unconstrained(np.where(log, np.exp(np.where(log, s, 0.0)), s))
    return out


class _StageOutput(eqx.Module):
    status: Int[Array, ""]
    loss: Float[Array, ""]
    best_start: Int[Array, ""]
    fitted: Bool[Array, " n_params"]
    n_iter: Int[Array, ""]
    values: Float[Array, " n_params"]
    initial_loss: Float[Array, ""]
    grad_norm: Float[Array, ""]
    loss_change: Float[Array, ""]
    start_losses: Float[Array, " starts"]
    finite_starts: Bool[Array, " starts"]
    held: Bool[Array, " n_params"]
    at_bound: Bool[Array, " n_params"]
    n_constraints: Int[Array, ""]
    kept: Bool[Array, " n_params"]


def stage_step(carry: _Carry, stage: _StageInputs, *, counts, objective: Objective,
               settings: FitSettings) -> tuple[_Carry, _StageOutput]:
    """One stage from ``carry``: every start under ``vmap`` (the incoming vector and the
    stage's prior draws on its free coordinates), the best finite start, the held and
    at-bound parameters, the status code.  ``objective``: the fit's objective with this
    stage's mask and weights still to be set; ``counts``: observed cells per variable."""
    space = objective.space
    kept = stage.mask & carry.ruled_out
    mask_vec = stage.mask & ~carry.ruled_out
    base_s = space.unstack(carry.x)
    u_in = space.vector_to_unconstrained(carry.x)
    n_ev = settings.events.size
    n_con = jnp.sum(jnp.where(stage.var_w > 0, counts, 0)) + jnp.where(stage.ev_w > 0, n_ev, 0)
    n_free = jnp.sum(mask_vec)
    prior_w = jnp.maximum(objective.prior_w, stage.prior_floor)
    skip = (n_con == 0) | ((n_con < n_free) & (prior_w <= 0)) | (n_free == 0)
    obj = dataclasses.replace(objective, base=base_s, mask=mask_vec, var_w=stage.var_w,
                              ev_w=stage.ev_w, prior_w=prior_w)
    fwd, rev = obj.for_jacobian(), obj.for_gradient()
    # Rows of data and events (their Jacobian columns are the sensitivity): all but the
    # prior rows.
    n_data = len(TARGET_VARIABLES) * objective.forcing.n_years + settings.events.size
    u0s = jnp.concatenate([u_in[None], jnp.where(mask_vec, stage.draws, u_in)], axis=0)
    n_starts = u0s.shape[0]
    optimiser = settings.optimiser

    def one(u0):
        res = optimiser.minimise(fwd.residuals, rev.loss, u0, mask_vec, n_data)
        return res.u, res.trace, res.grad, res.n_iter.astype(jnp.int32), res.sensitivity

    def run(_):
        return jax.vmap(one)(u0s)

    def none(_):
        z = jnp.zeros_like(u0s)
        return (u0s, jnp.full((n_starts, optimiser.n_trace), jnp.nan, u0s.dtype), z,
                jnp.zeros((n_starts,), jnp.int32), z)

    u, traces, grads, n_it, sens = jax.lax.cond(skip, none, run, None)
    final = traces[:, -1]
    finite = jnp.isfinite(final) & jnp.all(jnp.isfinite(u), axis=1)
    best = jnp.argmin(jnp.where(finite, final, jnp.inf))
    failed = ~jnp.any(finite)
    s_best = sens[best]
    s_max = jnp.max(jnp.where(mask_vec & jnp.isfinite(s_best), s_best, 0.0))
    fitted = mask_vec & jnp.isfinite(s_best) & (s_best > 1e-9 * jnp.maximum(s_max, 1e-300))
    # At a physical bound the column is zero because the transform is saturated: such a
    # parameter stays at the bound (status at_bound), it is not held.
    near = mask_vec & (jnp.abs(u[best]) >= AT_BOUND_U)
    fitted = (fitted & (s_best > 0)) | near
    x_new = jnp.where(fitted, space.vector_to_constrained(u[best]), carry.x)
    loss_b = final[best]
    tail = traces[best, -11:]
    dloss = jnp.max(tail) - jnp.min(tail)
    scale = 1.0 + jnp.abs(loss_b)
    gnorm = jnp.linalg.norm(grads[best])
    conv = (gnorm <= settings.gtol * scale) & (dloss <= settings.ftol * scale)
    at_bound = fitted & near
    status = jnp.where(jnp.any(at_bound), STAGE_CODES["at_bound"],
                       jnp.where(conv, STAGE_CODES["ok"], STAGE_CODES["not_converged"]))
    status = jnp.where(failed, STAGE_CODES["failed"], status)
    status = jnp.where(skip, STAGE_CODES["skipped"], status)
    keep_in = skip | failed
    x_out = jnp.where(keep_in, carry.x, x_new)
    nan = jnp.asarray(jnp.nan, loss_b.dtype)
    ran = ~keep_in
    out = _StageOutput(
        status=status, loss=jnp.where(ran, loss_b, nan), best_start=jnp.where(ran, best, -1),
        fitted=fitted & ran, n_iter=jnp.where(ran, n_it[best], 0), values=x_out,
        initial_loss=jnp.where(ran, fwd.loss(u0s[best]), nan),
        grad_norm=jnp.where(ran, gnorm, nan), loss_change=jnp.where(ran, dloss, nan),
        start_losses=jnp.where(skip, nan, final), finite_starts=finite | skip,
        held=jnp.where(ran, mask_vec & ~fitted, mask_vec), at_bound=at_bound & ran,
        n_constraints=n_con.astype(jnp.int32), kept=kept)
    # Free here but not fitted: later stages keep them (fitted ones are released).
    ruled_out = (carry.ruled_out | mask_vec) & ~(fitted & ran)
    return _Carry(x_out, ruled_out), out


def _fit_staged(base: Params, problem: StagedProblem, forcing: Forcing, targets: Targets,
                cell_w: Float[Array, " cells"], prior_w: Float[Array, ""],
                space: ParamSpace, settings: FitSettings) -> FitResult:
    n = forcing.n_years
    counts = jnp.stack([jnp.sum(jnp.where(targets.masks[v], cell_w[i * n:(i + 1) * n] > 0,
                                          False)) for i, v in enumerate(TARGET_VARIABLES)])
    x_base = space.stack(base)
    objective = Objective(base, jnp.zeros(x_base.shape, bool),
                          jnp.zeros((len(TARGET_VARIABLES),), x_base.dtype),
                          jnp.asarray(0.0, x_base.dtype), prior_w, forcing, targets, space,
                          settings.solver, settings.events, cell_w)

    def body(carry, xs):
        return stage_step(carry, _StageInputs(*xs), counts=counts, objective=objective,
                          settings=settings)

    carry, out = jax.lax.scan(body, _Carry(x_base, jnp.zeros(x_base.shape, bool)),
                              (problem.masks, problem.var_w, problem.ev_w, problem.starts,
                               problem.prior_floor))
    params = space.unstack(carry.x)
    return FitResult(space.vector_to_unconstrained(carry.x), params, out.status, out.loss,
                     out.best_start, out.fitted, out.n_iter, out.values, out.initial_loss,
                     out.grad_norm, out.loss_change, out.start_losses, out.finite_starts,
                     out.held, out.at_bound, out.n_constraints, out.kept)


# The traced function, counted (``eqx.debug.get_num_traces``): a test hook for "one trace".
_fit_staged_counted = eqx.debug.assert_max_traces(_fit_staged, max_traces=None)


@eqx.filter_jit
def fit_staged(base: Params, problem: StagedProblem, forcing: Forcing, targets: Targets,
               cell_w: Float[Array, " cells"], prior_w: Float[Array, ""],
               space: ParamSpace, settings: FitSettings) -> FitResult:
    """Every stage in one ``lax.scan``; pure and jitted; ``vmap`` over any array argument.

    **Arguments:**

    - ``base``: incoming parameters (the prior values, or an earlier fit's);
    - ``problem``: :func:`staged_problem`;
    - ``forcing``, ``targets``: as for ``calibrate_stages``;
    - ``cell_w``: per-cell weights, ``(len(TARGET_VARIABLES) * n_years,)`` in the order of
      ``data_residuals`` (0 drops a cell; bootstrap counts resample);
    - ``prior_w``: prior weight (0: plain weighted least squares);
    - ``space``: the region's parameter space; ``settings``: :class:`FitSettings`.

    Each stage warm-starts from the physical values the previous one left; a skipped stage
    runs no solve (``lax.cond``; under ``vmap`` with a batched skip flag both branches run
    and the result is selected).

    **Returns:** a :class:`FitResult`; nothing raises at run time.
    """
    return _fit_staged_counted(base, problem, forcing, targets, cell_w, prior_w, space,
                               settings)


class Comparison(eqx.Module):
    """The objective on which :func:`fit_compared` ranks its branches: the data rows of
    ``var_w``, the event rows (``ev_w``) and the prior rows of ``mask`` (each times
    ``prior_rows``, the square root of the parameter's prior weight)."""

    mask: Bool[Array, " n_params"]
    var_w: Float[Array, " n_vars"]
    ev_w: Float[Array, ""]
    prior_rows: Float[Array, " n_params"]


@eqx.filter_jit
def fit_compared(base: Params, problems: StagedProblem, forcing: Forcing, targets: Targets,
                 cell_w: Float[Array, " cells"], prior_w: Float[Array, ""],
                 space: ParamSpace, settings: FitSettings, comparison: Comparison
                 ) -> tuple[FitResult, Float[Array, " branches"]]:
    """:func:`fit_staged` of each of ``problems`` (a leading axis: the branches, e.g. the
    seed's stages alone and the basin stage before them), one after the other in a
    ``lax.map`` (one trace; under ``vmap`` a stage's skip flag would be batched and every
    operand with it), and the ``comparison`` objective at each branch's final vector (one
    compiled call)."""
    return _fit_compared(base, problems, forcing, targets, cell_w, prior_w, space, settings,
                         comparison)


def _fit_compared(base, problems, forcing, targets, cell_w, prior_w, space, settings,
                  comparison):
    fits = jax.lax.map(lambda pr: _fit_staged_counted(base, pr, forcing, targets, cell_w,
                                                      prior_w, space, settings), problems)
    dtype = cell_w.dtype
    obj = Objective(base, comparison.mask, comparison.var_w, comparison.ev_w,
                    jnp.asarray(1.0, dtype), forcing, targets, space, settings.solver,
                    settings.events, cell_w, comparison.prior_rows)
    return fits, jax.vmap(obj.loss)(fits.u)


@eqx.filter_jit
def fit_sites(bases: Params, problems: StagedProblem, forcings: Forcing, targets: Targets,
              cell_w: Float[Array, "sites cells"], prior_w: Float[Array, ""],
              space: ParamSpace, settings: FitSettings,
              comparisons: Comparison | None = None):
    """The staged fits of many sites of one region in one compiled call: every argument but
    ``prior_w``, ``space`` and ``settings`` has a leading site axis (sites padded to a
    common number of years, the padding masked).  A ``vmap`` over the sites of
    :func:`fit_staged` (``comparisons`` None: returns the stacked :class:`FitResult`) or
    of :func:`fit_compared` (returns ``(FitResult with axes (sites, branches, ...),
    losses (sites, branches))``): on CPU every site's starts and tangents are members of
    one kernel call per evaluation, each with its own forcing (the optimiser's loops run
    until the slowest site has finished)."""
    if comparisons is None:
        return jax.vmap(lambda b, pr, fo, ta, w: _fit_staged_counted(
            b, pr, fo, ta, w, prior_w, space, settings))(bases, problems, forcings, targets,
                                                         cell_w)
    return jax.vmap(lambda b, pr, fo, ta, w, c: _fit_compared(b, pr, fo, ta, w, prior_w,
                                                              space, settings, c))(
        bases, problems, forcings, targets, cell_w, comparisons)


def trace_count() -> int:
    """How many times ``fit_staged`` has been traced in this process (a compile happens per
    trace): tests assert that stages, configs and batches share one."""
    return eqx.debug.get_num_traces(_fit_staged_counted)


def cell_weights(targets: Targets, dtype=jnp.float64) -> Float[Array, " cells"]:
    """All-ones per-cell weights for ``targets`` (the plain fit)."""
    n = next(iter(targets.masks.values())).shape[0]
    return jnp.ones((len(TARGET_VARIABLES) * n,), dtype)
