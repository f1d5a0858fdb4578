"""The staged fit as one pure, jitted function: data in, :class:`FitResult` out.

``fit_staged`` runs every stage of a config inside one ``lax.scan`` (stage masks, variable
weights and starts are arrays, so all stages share one trace), every start of a stage under
``vmap``, picks the best start on the device (``argmin`` over finite losses), holds the free
parameters that no data row is sensitive to, and returns per-stage status codes instead of
raising.  Per-cell weights (``cell_w``) make it the seam for bootstrap (resampling by
weights) and profiles: ``jax.vmap(fit_staged, in_axes=(None, ..., 0))`` over weight vectors.

The host pipeline (``calibrate_stages``) still runs stage by stage; this function uses the
same residuals, the same Levenberg-Marquardt and the same status rules, so the two agree.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._calibrate import (
    MAX_FREE,
    CalibrationConfig,
    CalibrationError,
    Stage,
    _adam,
    _levenberg_marquardt,
    _mask_tree,
    _residuals,
    _Settings,
    _stack,
    _unstack,
)
from ._forcing import Forcing
from ._objective import TARGET_VARIABLES, Targets
from ._params import Params, ParamSpace

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
    """What ``fit_staged`` returns (leading batch axes under ``vmap``)."""

    u: Float[Array, " n_params"]  # final unconstrained vector (all parameters)
    params: Params  # final physical parameters
    status: Int[Array, " stages"]  # CODES
    loss: Float[Array, " stages"]  # best start's final loss per stage
    best_start: Int[Array, " stages"]
    fitted: Bool[Array, "stages n_params"]  # free and sensitive to the data
    n_iter: Int[Array, " stages"]


class StagedProblem(eqx.Module):
    """The arrays of a staged fit (built on the host by :func:`staged_problem`)."""

    masks: Bool[Array, "stages n_params"]
    var_w: Float[Array, "stages n_vars"]
    ev_w: Float[Array, " stages"]
    starts: Float[Array, "stages n_draws n_params"]


def staged_problem(space: ParamSpace, stages: tuple[Stage, ...], n_starts: int, key,
                   dtype=jnp.float64) -> StagedProblem:
    """Stage masks, variable and event weights, and the prior draws that start each stage
    (``n_starts - 1`` per stage; the warm start is the incoming vector)."""
    for st in stages:
        st.check(space)
        if len(st.free) > MAX_FREE:
            raise CalibrationError(f"stage {st.name!r}: more than {MAX_FREE} free parameters")
    masks = jnp.stack([_stack(space, _mask_tree(space, st.free)) for st in stages])
    var_w = jnp.asarray([[1.0 if v in st.variables else 0.0 for v in TARGET_VARIABLES]
                         for st in stages], dtype)
    ev_w = jnp.asarray([1.0 if st.events else 0.0 for st in stages], dtype)
    n_draws = max(n_starts - 1, 1)
    draws = [
        _stack(space, space.to_unconstrained(
            space.sample_prior(jax.random.fold_in(key, i), n_draws, dtype=dtype)))
        for i in range(len(stages))]
    return StagedProblem(masks, var_w, ev_w, jnp.stack(draws)[:, : max(n_starts - 1, 0)])


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

    **Returns:** a :class:`FitResult`; nothing raises at run time.
    """
    TRACES[0] += 1  # Python runs only while tracing: counts compilations (tests)
    n = forcing.n_years
    counts = jnp.stack([jnp.sum(jnp.where(targets.masks[v], cell_w[i * n:(i + 1) * n] > 0,
                                          False)) for i, v in enumerate(TARGET_VARIABLES)])
    u_base = _stack(space, space.to_unconstrained(base))
    n_ev = settings.events.size
    fwd = "checkpoint" if settings.method == "rk4" else "forward"
    n_params = u_base.shape[0]

    def stage(u_in, xs):
        mask_vec, var_w, ev_w, draws = xs
        mask = _unstack(space, mask_vec)
        base_s = space.to_constrained(_unstack(space, u_in))
        n_con = jnp.sum(jnp.where(var_w > 0, counts, 0)) + jnp.where(ev_w > 0, n_ev, 0)
        n_free = jnp.sum(mask_vec)
        skip = (n_con == 0) | ((n_con < n_free) & (prior_w <= 0))

        def res(u):
            return _residuals(u, base_s, mask, var_w, ev_w, prior_w, forcing, targets, space,
                              settings, fwd, cell_w)

        def loss(u):
            r = _residuals(u, base_s, mask, var_w, ev_w, prior_w, forcing, targets, space,
                           settings, "checkpoint", cell_w)
            return 0.5 * jnp.sum(r**2)

        idx = jnp.cumsum(mask_vec) - 1
        S = jnp.where(mask_vec[:, None] & (idx[:, None] == jnp.arange(MAX_FREE)[None, :]),
                      1.0, 0.0).astype(u_in.dtype)
        u0s = jnp.concatenate([u_in[None], jnp.where(mask_vec, draws, u_in)], axis=0)

        def one(u0):
            u, t_adam = _adam(loss, u0, mask_vec, settings)
            u, t_lm, g, it, sens = _levenberg_marquardt(res, u, S, settings)
            return u, jnp.concatenate([t_adam, t_lm]), g, settings.adam_steps + it, sens

        u, traces, grads, n_it, sens = jax.vmap(one)(u0s)
        final = traces[:, -1]
        finite = jnp.isfinite(final) & jnp.all(jnp.isfinite(u), axis=1)
        best = jnp.argmin(jnp.where(finite, final, jnp.inf))
        failed = ~jnp.any(finite)
        s_best = sens[best]
        s_max = jnp.max(jnp.where(mask_vec & jnp.isfinite(s_best), s_best, 0.0))
        fitted = mask_vec & jnp.isfinite(s_best) & (s_best > 1e-9 * jnp.maximum(s_max, 1e-300))
        # At a physical bound the column is zero because the transform is saturated: such a
        # parameter stays at the bound (status at_bound), it is not held.
        fitted = (fitted & (s_best > 0)) | (mask_vec & (jnp.abs(u[best]) >= AT_BOUND_U))
        u_new = jnp.where(fitted, u[best], u_in)
        loss_b = final[best]
        tail = traces[best, -11:]
        dloss = jnp.max(tail) - jnp.min(tail)
        scale = 1.0 + jnp.abs(loss_b)
        gnorm = jnp.linalg.norm(grads[best])
        conv = (gnorm <= gtol * scale) & (dloss <= ftol * scale)
        at_bound = jnp.any(fitted & (jnp.abs(u_new) >= AT_BOUND_U))
        code = jnp.where(at_bound, CODES["at_bound"],
                         jnp.where(conv, CODES["ok"], CODES["not_converged"]))
        code = jnp.where(failed, CODES["failed"], code)
        code = jnp.where(skip, CODES["skipped"], code)
        keep_in = skip | failed
        u_out = jnp.where(keep_in, u_in, u_new)
        out = (code, jnp.where(keep_in, jnp.nan, loss_b), jnp.where(keep_in, -1, best),
               fitted & ~keep_in, jnp.where(keep_in, 0, n_it[best]))
        return u_out, out

    u_fin, (codes, losses, bests, fitted, n_it) = jax.lax.scan(
        stage, u_base, (problem.masks, problem.var_w, problem.ev_w, problem.starts))
    del n_params
    # Parameters never free keep their incoming values exactly (not through the transform).
    ever = jnp.any(problem.masks, axis=0)
    full = space.to_constrained(_unstack(space, u_fin))
    params = jax.tree_util.tree_map(lambda m, a, b: jnp.where(m, a, b),
                                    _unstack(space, ever), full, base)
    return FitResult(u_fin, params, codes, losses, bests, fitted, n_it)


def cell_weights(targets: Targets, dtype=jnp.float64) -> Float[Array, " cells"]:
    """All-ones per-cell weights for ``targets`` (the plain fit)."""
    n = next(iter(targets.masks.values())).shape[0]
    return jnp.ones((len(TARGET_VARIABLES) * n,), dtype)


def settings_of(cfg: CalibrationConfig) -> _Settings:
    return _Settings.of(dataclasses.replace(cfg))
