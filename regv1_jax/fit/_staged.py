"""The staged fit as one pure, jitted function: data in, :class:`FitResult` out.

``fit_staged`` runs every stage of a config inside one ``lax.scan`` (stage masks, variable
weights and starts are arrays, so all stages share one trace), every start of a stage under
``vmap``, picks the best start on the device (``argmin`` over finite losses), holds the free
parameters that no data row is sensitive to, and returns per-stage status codes instead of
raising.  Per-cell weights (``cell_w``) make it the seam for bootstrap (resampling by
weights) and profiles: ``jax.vmap(fit_staged, in_axes=(None, ..., 0))`` over weight vectors.

The host pipeline (``calibrate_stages``, and through it ``regv1 calibrate``) calls this
function once and only turns its :class:`FitResult` into the per-stage report records.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ..model._forcing import Forcing
from ..model._params import Params, ParamSpace
from ._config import (
    MAX_FREE,
    CalibrationConfig,
    CalibrationError,
    Stage,
    _adam,
    _levenberg_marquardt,
    _mask_tree,
    _optimise,
    _residuals,
    _Settings,
    _stack,
    _unstack,
)
from ._objective import TARGET_VARIABLES, Targets

__all__ = ["FitResult", "StageCode", "StagedProblem", "staged_problem", "fit_staged"]


class StageCode(eqx.Enumeration):
    ok = "converged"
    not_converged = "stopped before the convergence test passed"
    at_bound = "a fitted parameter ended at its physical bound (no convergence claimed)"
    skipped = "not run: no data constraint (or too few without a prior)"
    failed = "every start diverged; parameters left at their incoming values"


# Integer codes in FitResult.status (the order of StageCode).
CODES = {"ok": 0, "not_converged": 1, "at_bound": 2, "skipped": 3, "failed": 4}
TRACES = [0]
AT_BOUND_U = float(np.log((1 - 1e-3) / 1e-3))  # |u| beyond this: within 0.1% of a bound


class FitResult(eqx.Module):
    """What ``fit_staged`` returns (leading batch axes under ``vmap``).

    The first seven fields are the original interface; the rest (added for the host
    report, ``calibrate_stages``) describe each stage's optimisation."""

    u: Float[Array, " n_params"]  # final unconstrained vector (all parameters)
    params: Params  # final physical parameters
    status: Int[Array, " stages"]  # CODES
    loss: Float[Array, " stages"]  # best start's final loss per stage
    best_start: Int[Array, " stages"]
    fitted: Bool[Array, "stages n_params"]  # free and sensitive to the data
    n_iter: Int[Array, " stages"]
    # Physical values of every parameter after each stage (held and never-free parameters
    # keep their incoming values exactly).
    values: Float[Array, "stages n_params"]
    initial_loss: Float[Array, " stages"]  # best start's loss after its first iteration
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


def staged_problem(space: ParamSpace, stages: tuple[Stage, ...], n_starts: int, key,
                   dtype=jnp.float64, optimizer: str = "lm",
                   pad_to: int | None = None) -> StagedProblem:
    """Stage masks, variable and event weights, and the prior draws that start each stage
    (``n_starts - 1`` per stage; the warm start is the incoming vector).

    ``pad_to``: append stages with no free parameter and no data (always skipped, at no
    cost) up to this many, so that configs with fewer stages share one compiled fit.
    Raises :class:`CalibrationError` for a bad stage before any compute."""
    for st in stages:
        st.check(space)
        if optimizer == "lm" and len(st.free) > MAX_FREE:
            raise CalibrationError(f"stage {st.name!r}: {len(st.free)} free parameters; "
                                   f"optimizer 'lm' takes at most {MAX_FREE} (use 'lbfgs')")
    masks = jnp.stack([_stack(space, _mask_tree(space, st.free)) for st in stages])
    var_w = jnp.asarray([[1.0 if v in st.variables else 0.0 for v in TARGET_VARIABLES]
                         for st in stages], dtype)
    ev_w = jnp.asarray([1.0 if st.events else 0.0 for st in stages], dtype)
    n_draws = max(n_starts - 1, 1)
    draws = jnp.stack([
        _stack(space, space.to_unconstrained(
            space.sample_prior(jax.random.fold_in(key, i), n_draws, dtype=dtype)))
        for i in range(len(stages))])[:, : max(n_starts - 1, 0)]
    n_pad = max((pad_to or 0) - len(stages), 0)
    if n_pad:
        masks = jnp.concatenate([masks, jnp.zeros((n_pad,) + masks.shape[1:], bool)])
        var_w = jnp.concatenate([var_w, jnp.zeros((n_pad,) + var_w.shape[1:], dtype)])
        ev_w = jnp.concatenate([ev_w, jnp.zeros((n_pad,), dtype)])
        draws = jnp.concatenate([draws, jnp.zeros((n_pad,) + draws.shape[1:], dtype)])
    return StagedProblem(masks, var_w, ev_w, draws)


@eqx.filter_jit
def fit_staged(base: Params, problem: StagedProblem, forcing: Forcing, targets: Targets,
               cell_w: Float[Array, " cells"], prior_w: Float[Array, ""],
               space: ParamSpace, settings: _Settings, gtol: float = 1e-3,
               ftol: float = 1e-6) -> FitResult:
    """Every stage in one ``lax.scan``; pure and jitted; ``vmap`` over any array argument.

    **Arguments:**
    - ``base``: incoming parameters (the prior values, or an earlier fit's);
    - ``problem``: :func:`staged_problem`;
    - ``forcing``, ``targets``: as for ``calibrate_stages``;
    - ``cell_w``: per-cell weights, ``(len(TARGET_VARIABLES) * n_years,)`` in the order of
      ``data_residuals`` (0 drops a cell; bootstrap counts resample);
    - ``prior_w``: prior weight (0: plain weighted least squares).

    Each stage warm-starts from the physical values the previous one left (as the host
    loop did); a skipped stage runs no solve (``lax.cond``; under ``vmap`` with a batched
    skip flag both branches run and the result is selected).

    **Returns:** a :class:`FitResult`; nothing raises at run time.
    """
    TRACES[0] += 1  # Python runs only while tracing: counts compilations (tests)
    n = forcing.n_years
    counts = jnp.stack([jnp.sum(jnp.where(targets.masks[v], cell_w[i * n:(i + 1) * n] > 0,
                                          False)) for i, v in enumerate(TARGET_VARIABLES)])
    x_base = _stack(space, base)
    n_ev = settings.events.size
    fwd = "checkpoint" if settings.method == "rk4" else "forward"
    n_starts = problem.starts.shape[1] + 1
    n_trace = settings.adam_steps + settings.second_steps + (
        1 if settings.optimizer == "lbfgs" else 0)

    def stage(carry, xs):
        x_in, ruled_out = carry
        mask_cfg, var_w, ev_w, draws = xs
        kept = mask_cfg & ruled_out
        mask_vec = mask_cfg & ~ruled_out
        mask = _unstack(space, mask_vec)
        base_s = _unstack(space, x_in)
        u_in = _stack(space, space.to_unconstrained(base_s))
        n_con = jnp.sum(jnp.where(var_w > 0, counts, 0)) + jnp.where(ev_w > 0, n_ev, 0)
        n_free = jnp.sum(mask_vec)
        skip = (n_con == 0) | ((n_con < n_free) & (prior_w <= 0)) | (n_free == 0)

        def res(u):
            return _residuals(u, base_s, mask, var_w, ev_w, prior_w, forcing, targets, space,
                              settings, fwd, cell_w)

        def loss(u):
            r = _residuals(u, base_s, mask, var_w, ev_w, prior_w, forcing, targets, space,
                           settings, "checkpoint", cell_w)
            return 0.5 * jnp.sum(r**2)

        u0s = jnp.concatenate([u_in[None], jnp.where(mask_vec, draws, u_in)], axis=0)

        def one(u0):
            if settings.optimizer == "lbfgs":
                u, t, g = _optimise(loss, u0, mask_vec, settings)
                # No Jacobian here: every free coordinate counts as sensitive.
                return (u, t, g, jnp.asarray(settings.adam_steps + settings.second_steps),
                        jnp.where(mask_vec, 1.0, 0.0).astype(u0.dtype))
            idx = jnp.cumsum(mask_vec) - 1
            S = jnp.where(mask_vec[:, None] & (idx[:, None] == jnp.arange(MAX_FREE)[None, :]),
                          1.0, 0.0).astype(u0.dtype)
            u, t_adam = _adam(loss, u0, mask_vec, settings)
            u, t_lm, g, it, sens = _levenberg_marquardt(res, u, S, settings)
            return u, jnp.concatenate([t_adam, t_lm]), g, settings.adam_steps + it, sens

        def run(_):
            u, t, g, it, sens = jax.vmap(one)(u0s)
            return u, t, g, it.astype(jnp.int32), sens

        def none(_):
            z = jnp.zeros_like(u0s)
            return (u0s, jnp.full((n_starts, n_trace), jnp.nan, u0s.dtype), z,
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
        x_new = jnp.where(fitted, _stack(space, space.to_constrained(_unstack(space, u[best]))),
                          x_in)
        loss_b = final[best]
        tail = traces[best, -11:]
        dloss = jnp.max(tail) - jnp.min(tail)
        scale = 1.0 + jnp.abs(loss_b)
        gnorm = jnp.linalg.norm(grads[best])
        conv = (gnorm <= gtol * scale) & (dloss <= ftol * scale)
        at_bound = fitted & near
        code = jnp.where(jnp.any(at_bound), CODES["at_bound"],
                         jnp.where(conv, CODES["ok"], CODES["not_converged"]))
        code = jnp.where(failed, CODES["failed"], code)
        code = jnp.where(skip, CODES["skipped"], code)
        keep_in = skip | failed
        x_out = jnp.where(keep_in, x_in, x_new)
        nan = jnp.asarray(jnp.nan, loss_b.dtype)
        ran = ~keep_in
        out = (code, jnp.where(ran, loss_b, nan), jnp.where(ran, best, -1), fitted & ran,
               jnp.where(ran, n_it[best], 0), x_out, jnp.where(ran, traces[best, 0], nan),
               jnp.where(ran, gnorm, nan), jnp.where(ran, dloss, nan),
               jnp.where(skip, nan, final), finite | skip,
               jnp.where(ran, mask_vec & ~fitted, mask_vec), at_bound & ran,
               n_con.astype(jnp.int32), kept)
        # Free here but not fitted: later stages keep them (fitted ones are released).
        ruled_out = (ruled_out | mask_vec) & ~(fitted & ran)
        return (x_out, ruled_out), out

    (x_fin, _), outs = jax.lax.scan(
        stage, (x_base, jnp.zeros(x_base.shape, bool)),
        (problem.masks, problem.var_w, problem.ev_w, problem.starts))
    (codes, losses, bests, fitted, n_it, values, loss0, gnorm, dloss, start_losses, finite,
     held, at_bound, n_con, kept) = outs
    params = _unstack(space, x_fin)
    u_fin = _stack(space, space.to_unconstrained(params))
    return FitResult(u_fin, params, codes, losses, bests, fitted, n_it, values, loss0, gnorm,
                     dloss, start_losses, finite, held, at_bound, n_con, kept)


def cell_weights(targets: Targets, dtype=jnp.float64) -> Float[Array, " cells"]:
    """All-ones per-cell weights for ``targets`` (the plain fit)."""
    n = next(iter(targets.masks.values())).shape[0]
    return jnp.ones((len(TARGET_VARIABLES) * n,), dtype)


def settings_of(cfg: CalibrationConfig) -> _Settings:
    return _Settings.of(dataclasses.replace(cfg))
