"""The staged calibration on the host: checks, one call of the jitted ``fit_staged``, and the
per-stage report records (:class:`StageResult`).

Each :class:`Stage` names its free parameters and the observed variables it fits.  Stages run
in order; each warm-starts from the previous result and leaves the earlier stages' values
frozen.  Inside a stage, ``n_starts`` starts (the warm start plus draws from the prior) run
at once under ``vmap`` (the optimiser of the config: Levenberg-Marquardt by default, or
Optax L-BFGS, optionally after Optax Adam).  The objective is MAP on the unconstrained
scale: masked, spread-weighted least squares plus the prior penalty of the stage's free
parameters (``fit.Objective``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._traces import cached
from ..model import Forcing, Params, ParamSpace
from ..solve import solver_kernels
from ..status import message
from ._config import SEED_STAGES, CalibrationConfig, Stage
from ._objective import TARGET_VARIABLES, Objective, Targets, variable_weights
from ._screen import (
    BASIN_CANDIDATES,
    BASIN_PARAMS,
    basin_free_set,
    basin_stage,
    screen,
    sensitivities,
)
from ._staged import (
    STAGE_CODES,
    Comparison,
    cell_weights,
    fit_compared,
    fit_staged,
    staged_problem,
)

__all__ = ["STAGE_STATUS", "StageResult", "BasinPlan", "PreparedFit", "stage_results",
           "plan_basin", "prepare_fit", "run_prepared", "finish_fit", "run_stage",
           "calibrate_stages", "describe"]


# Per-stage status words (StageResult.status) and their meaning (from ``RESULTS``; "ok"
# is the entry ``successful``: the stage converged).
STAGE_STATUS = {w: ("converged" if w == "ok" else message(c)) for w, c in STAGE_CODES.items()}


@dataclasses.dataclass
class StageResult:
    """What a stage did: its values and how the optimiser got there.

    ``fitted``: the free parameters the data moved; ``held``: free parameters held at
    their incoming values because no data row of the stage is sensitive to them;
    ``kept``: free parameters kept at their incoming values because an earlier stage that
    had them free did not fit them (skipped, failed or held there);
    ``status``: a key of ``STAGE_STATUS``; ``note``: what happened, in words."""

    name: str
    free: tuple[str, ...]
    values: dict[str, float]
    start_values: dict[str, float]
    n_obs: int
    skipped: str | None = None
    iterations: int = 0
    final_loss: float = float("nan")
    initial_loss: float = float("nan")
    grad_norm: float = float("nan")
    loss_change: float = float("nan")  # max - min of the loss over the last 10 iterations
    converged: bool = False
    best_start: int = -1
    n_starts: int = 0
    dropped_starts: tuple[int, ...] = ()
    start_losses: tuple[float, ...] = ()
    fitted: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    at_bound: tuple[str, ...] = ()
    status: str = "ok"
    note: str = ""
    n_constraints: int = 0
    kept: tuple[str, ...] = ()  # free here, kept: an earlier stage could not fit them
    # The basin stage only: the global start search, the data sensitivities and which start
    # won (0: the incoming vector, the prior centre; k >= 1: the screen's k-th best draw).
    screen: dict | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _skip_reason(stage: Stage, n_constraints: int) -> str:
    if n_constraints == 0:
        return (f"no observations for {', '.join(stage.variables)}: parameters left at "
                "their incoming (prior) values")
    return (f"{n_constraints} observations for {len(stage.free)} free parameters "
            f"({', '.join(stage.free)}) and no prior penalty (prior_weight 0): parameters "
            "left at their incoming values")


def stage_results(space: ParamSpace, stages: tuple[Stage, ...], base: Params, fit,
                  targets: Targets) -> list[StageResult]:
    """The report records of a ``fit_staged`` result (host numbers, no compute)."""
    code_name = {v: k for k, v in STAGE_CODES.items()}
    names = [sp.name for sp in space.specs]
    f = jax.tree_util.tree_map(np.asarray, fit)
    counts = targets.count()
    x_prev = np.asarray(space.stack(base))
    out = []
    for i, st in enumerate(stages):
        idx = [names.index(n) for n in st.free]
        start_values = {n: float(x_prev[j]) for n, j in zip(st.free, idx)}
        x_prev = f.values[i]
        values = {n: float(x_prev[j]) for n, j in zip(st.free, idx)}
        n_obs = sum(counts[v] for v in st.variables)
        n_con = int(f.n_constraints[i])
        status = code_name[int(f.status[i])]
        pick = (lambda row: tuple(n for n, j in zip(st.free, idx) if row[j]))  # noqa: E731
        kept = pick(f.kept[i])
        kept_note = (f"kept from earlier stages, which could not fit them: {', '.join(kept)}"
                     if kept else "")
        if status in ("skipped", "failed"):
            if status == "failed":
                why = ("every start diverged (failed solve or non-finite loss): parameters "
                       "left at their incoming values")
            elif len(kept) == len(st.free):
                why = f"no free parameter left ({kept_note})"
            else:
                why = _skip_reason(st, n_con)
            out.append(StageResult(st.name, st.free, start_values, start_values, n_obs,
                                   skipped=why, status=status, note=why,
                                   held=tuple(n for n in st.free if n not in kept),
                                   n_constraints=n_con, kept=kept))
            continue
        held, at_bound, fitted = pick(f.held[i]), pick(f.at_bound[i]), pick(f.fitted[i])
        notes = [kept_note] if kept else []
        if held:
            notes.append(f"held at incoming values (no data sensitivity): {', '.join(held)}")
        if n_con < len(st.free):
            notes.append(f"{n_con} constraints for {len(st.free)} free parameters: the prior "
                         "penalty determines what the data do not")
        if at_bound:
            notes.append(f"at the physical bound: {', '.join(at_bound)} (no convergence "
                         "claimed)")
        finite = f.finite_starts[i]
        out.append(StageResult(
            st.name, st.free, values, start_values, n_obs,
            iterations=int(f.n_iter[i]), final_loss=float(f.loss[i]),
            initial_loss=float(f.initial_loss[i]), grad_norm=float(f.grad_norm[i]),
            loss_change=float(f.loss_change[i]), converged=status == "ok",
            best_start=int(f.best_start[i]), n_starts=len(finite),
            dropped_starts=tuple(int(k) for k in np.flatnonzero(~finite)),
            start_losses=tuple(float(x) for x in f.start_losses[i]),
            fitted=fitted, held=held, at_bound=at_bound, status=status,
            note="; ".join(notes), n_constraints=n_con, kept=kept))
    return out


def _pinned(stages: tuple[Stage, ...], pin, progress) -> tuple[Stage, ...]:
    """The stages with the pinned parameters removed (a stage left with none is dropped)."""
    if not pin:
        return stages
    out = []
    for st in stages:
        free = tuple(n for n in st.free if n not in pin)
        if free:
            out.append(dataclasses.replace(st, free=free))
        elif progress:
            progress(f"stage {st.name}: every free parameter pinned ({', '.join(st.free)}): "
                     "not run")
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class BasinPlan:
    """What :func:`plan_basin` decided: ``stages`` (the basin stage, then the given stages),
    ``first_starts`` (``(n_starts - 1, n_params)`` unconstrained vectors starting the basin
    stage beside the incoming vector: the screen's best distinct draws, then the incoming
    vector repeated) and ``summary`` (the report's record of the search)."""

    stages: tuple[Stage, ...]
    first_starts: np.ndarray
    summary: dict


def plan_basin(space: ParamSpace, stages: tuple[Stage, ...], params: Params,
               forcing: Forcing, targets: Targets, cfg: CalibrationConfig,
               progress: Callable[[str], None] | None = None) -> BasinPlan:
    """The basin stage and its starts (``fit._screen``; docs/methods.md): the global start
    search over the basin set (``cfg.screen`` prior draws scored with the fit's objective),
    the data sensitivities at its best draw, and the free set they give (``cfg.free``
    added, ``cfg.pin`` removed).  ``stages``: the stages that follow (already pinned)."""
    settings = cfg.fit_settings()
    counts = targets.count()
    observed = tuple(v for v in TARGET_VARIABLES if counts[v] > 0)
    seed_names = {n for st in stages for n in st.free}
    screened = [n for n in BASIN_PARAMS if n not in ("V0", "SOM0") or n in seed_names]
    if "veg_cover_%" in observed:
        screened += ["r_V", "K_V"]
    screened += list(cfg.free)
    screened = list(dict.fromkeys(n for n in screened if n not in cfg.pin))
    events = any(st.events for st in stages)
    dtype = params.dtype
    obj = Objective(params, space.mask(screened), variable_weights(observed, dtype),
                    jnp.asarray(1.0 if events else 0.0, dtype),
                    jnp.asarray(max(cfg.prior_weight, 1.0), dtype), forcing, targets, space,
                    settings.solver, settings.events)
    u_in = space.host_to_unconstrained(np.asarray(space.stack(params)))
    n_more = max(cfg.n_starts - 1, 0)
    first = np.repeat(u_in[None], n_more, axis=0)
    summary: dict = {"screened": list(screened)}
    best = u_in
    if cfg.screen > 0:
        if progress:
            progress(f"global start search: {cfg.screen} prior draws of "
                     f"{', '.join(screened)} (one batched solve)")
        res = screen(obj, tuple(screened), cfg.screen, n_more, cfg.seed)
        first[:res.starts.shape[0]] = res.starts
        best = res.starts[0] if res.starts.shape[0] else u_in
        summary.update(res.summary())
        if progress:
            s = res.summary()
            progress(f"  {s['n_finite']} of {s['n_draws']} draws solved; loss best "
                     f"{s['best_loss']:.4g}, median {s['median_loss']:.4g}, prior centre "
                     f"{s['incoming_loss']:.4g}; {s['n_starts_from_screen']} distinct draws "
                     f"start the basin stage beside the prior centre ({res.seconds:.1f}s)")
    sens = sensitivities(obj, best, settings.events.size if events else 0)
    width = getattr(settings.optimiser, "width", len(screened) + 6)
    free, added = basin_free_set(sens, screened, seed_names, width, cfg.pin)
    summary.update(
        sensitivity={n: sens[n] for n in sorted(set(BASIN_CANDIDATES) | seed_names,
                                                key=lambda n: -sens[n])},
        sensitivity_definition="norm of the derivative of the data and event rows (in "
        "units of their spreads) per prior standard deviation of the parameter, at the best "
        "draw (forward mode through the solve)",
        added_by_sensitivity=list(added), free=list(free))
    if progress and added:
        progress(f"  data sensitivity adds {', '.join(added)} to the basin stage")
    return BasinPlan((basin_stage(free, observed, events, added),) + tuple(stages), first,
                     summary)


@dataclasses.dataclass(frozen=True)
class PreparedFit:
    """A staged fit ready to run (:func:`prepare_fit`): the arguments of ``fit_staged``
    (``args``; with ``plan``, ``args[1]`` holds two problems, the stages alone and the
    basin stage before them, for ``fit_compared`` with ``comparison``), the stages, the
    kernels the program calls, the config."""

    args: tuple
    stages: tuple[Stage, ...]
    kernels: tuple
    cfg: CalibrationConfig
    plan: BasinPlan | None = None
    comparison: Comparison | None = None


def prepare_fit(space: ParamSpace, stages: tuple[Stage, ...], params: Params,
                forcing: Forcing, targets: Targets, cfg: CalibrationConfig, key,
                progress: Callable[[str], None] | None = None) -> PreparedFit:
    """The checks (raising :class:`CalibrationError` before any compute), the pinning, the
    global start search and the basin plan (``cfg.basin``), and the arrays of the fit."""
    settings = cfg.fit_settings()
    dtype = params.dtype
    stages = _pinned(stages, cfg.pin, progress)
    for st in stages:
        st.check(space)
    # Padded with empty (skipped, free) stages to the seed's stage count (and the basin
    # stage): configs with fewer stages share the compiled fit.
    pad_to = max(len(SEED_STAGES), len(stages)) + (1 if cfg.basin else 0)
    problem = staged_problem(space, stages, cfg.n_starts, key, dtype=dtype,
                             optimiser=settings.optimiser, pad_to=pad_to)
    args = (params, problem, forcing, targets, cell_weights(targets, dtype),
            jnp.asarray(cfg.prior_weight, dtype), space, settings)
    kernels = solver_kernels(settings.solver, dtype)
    if not cfg.basin:
        return PreparedFit(args, stages, kernels, cfg)
    plan = plan_basin(space, stages, params, forcing, targets, cfg, progress)
    with_basin = staged_problem(space, plan.stages, cfg.n_starts, key, dtype=dtype,
                                optimiser=settings.optimiser, pad_to=pad_to,
                                first_starts=plan.first_starts if cfg.n_starts > 1 else None)
    problems = jax.tree_util.tree_map(lambda a, b: jnp.asarray(np.stack([a, b])), problem,
                                      with_basin)
    counts = targets.count()
    basin_only = set(plan.stages[0].free) - {n for st in stages for n in st.free}
    names = [sp.name for sp in space.specs]
    rows = np.sqrt([max(cfg.prior_weight, 1.0) if n in basin_only else cfg.prior_weight
                    for n in names])
    union = {n for st in plan.stages for n in st.free}
    comparison = Comparison(
        jnp.asarray([n in union for n in names]),
        variable_weights(tuple(v for v in TARGET_VARIABLES if counts[v] > 0), dtype),
        jnp.asarray(1.0 if any(st.events for st in plan.stages) else 0.0, dtype),
        jnp.asarray(rows, dtype))
    return PreparedFit((params, problems) + args[2:], stages, kernels, cfg, plan, comparison)


def run_prepared(prep: PreparedFit):
    """One call of ``fit_staged`` (or ``fit_compared``): ``(fit, None)`` or ``(fits,
    comparison losses)``."""
    if prep.plan is None:
        return cached(fit_staged, "fit_staged", *prep.args, kernels=prep.kernels), None
    return cached(fit_compared, "fit_compared", *prep.args, prep.comparison,
                  kernels=prep.kernels)


def finish_fit(prep: PreparedFit, fit, losses=None,
               progress: Callable[[str], None] | None = None
               ) -> tuple[Params, list[StageResult]]:
    """The report records of a run (:func:`run_prepared`); with the basin plan, the
    branch with the lower Akaike score (the comparison objective plus the number of
    parameters the branch fitted) is kept: the basin stage's parameters are freed only
    when the data pay for them."""
    params, targets, space = prep.args[0], prep.args[3], prep.args[6]
    stages = prep.stages
    if prep.plan is None:
        results = stage_results(space, stages, params, fit, targets)
        _log(results, progress)
        return fit.params, results
    losses = np.asarray(losses)
    n_fitted = np.asarray(fit.fitted).any(axis=1).sum(axis=1)
    score = losses + n_fitted
    pick = 1 if np.isfinite(score[1]) and not score[1] >= score[0] else 0
    # (host indexing, then one transfer per leaf: no compiled slice per leaf)
    fit = jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[pick]), fit)
    summary = dict(prep.plan.summary)
    summary.update(
        comparison_loss={"stages_alone": float(losses[0]), "with_basin_stage": float(losses[1])},
        n_fitted={"stages_alone": int(n_fitted[0]), "with_basin_stage": int(n_fitted[1])},
        comparison_score={"stages_alone": float(score[0]), "with_basin_stage": float(score[1])},
        comparison_definition="loss: 0.5 |r|^2 over every observed variable, the event "
        "constraints when a stage uses them and the priors of every parameter either branch "
        "frees (the basin-only ones at weight at least 1); score: loss + the number of "
        "parameters the branch fitted (Akaike's criterion / 2); the lower score is kept",
        kept="with_basin_stage" if pick else "stages_alone")
    if pick:
        stages = prep.plan.stages
        results = stage_results(space, stages, params, fit, targets)
        won, n_screen = results[0].best_start, summary.get("n_starts_from_screen", 0)
        summary["winning_start"] = won
        summary["winning_start_is"] = (
            "none (the stage did not run)" if won < 0 else
            f"the screen's draw {won} of {n_screen} (best first)" if 0 < won <= n_screen else
            "the prior centre (the incoming vector)")
    else:
        results = stage_results(space, stages, params, fit, targets)
        summary["winning_start"] = -1
        summary["winning_start_is"] = "none: the stages alone fitted better"
    if progress:
        progress(f"  comparison (loss + fitted parameters): stages alone {losses[0]:.4g} + "
                 f"{n_fitted[0]}, with the basin stage {losses[1]:.4g} + {n_fitted[1]}: kept "
                 + ("the basin stage" if pick else "the stages alone"))
    if results:
        results[0] = dataclasses.replace(results[0], screen=summary)
    _log(results, progress)
    return fit.params, results


def _log(results, progress):
    if progress:
        for i, res in enumerate(results):
            progress(f"  stage {i + 1}/{len(results)} " + describe(res))


def _fit_stages(space: ParamSpace, stages: tuple[Stage, ...], params: Params,
                forcing: Forcing, targets: Targets, cfg: CalibrationConfig, key,
                progress=None) -> tuple[Params, list[StageResult]]:
    """:func:`prepare_fit`, one call of the pure jitted ``fit_staged`` (``fit_compared``
    with the basin stage), :func:`finish_fit`."""
    prep = prepare_fit(space, stages, params, forcing, targets, cfg, key, progress)
    if progress:
        progress(f"staged fit: {len(prep.stages)} stage(s) "
                 + ("alone and after the basin stage, " if prep.plan else "")
                 + "in one compiled call")
    fit, losses = run_prepared(prep)
    return finish_fit(prep, fit, losses, progress)


def run_stage(space: ParamSpace, stage: Stage, base: Params, forcing: Forcing,
              targets: Targets, cfg: CalibrationConfig, key) -> tuple[Params, StageResult]:
    """Fit one stage from ``base`` (the warm start); other parameters stay frozen.

    ``fit_staged`` with this one stage (its starts drawn from ``key``).  Never raises for
    lack of data: a stage with no observed cell (and no event constraints) is skipped,
    leaving its parameters at their incoming values (the prior unless an earlier stage
    moved them); a stage with fewer constraints than free parameters runs as MAP (the prior
    penalty determines what the data do not) or, with ``prior_weight`` 0, is skipped.  Free
    parameters to which no data row of the stage is sensitive are held at their incoming
    values (``held``).  Starts whose loss is not finite are dropped and listed; if every
    start fails the stage is ``failed`` and its parameters keep their incoming values.
    No global start search and no basin stage (``cfg.screen`` and ``cfg.free`` ignored).
    """
    cfg = dataclasses.replace(cfg, screen=0, free=())
    p, (res,) = _fit_stages(space, (stage,), base, forcing, targets, cfg, key)
    return p, res


def calibrate_stages(space: ParamSpace, params: Params, forcing: Forcing, targets: Targets,
                     cfg: CalibrationConfig = CalibrationConfig(),
                     progress: Callable[[str], None] | None = None,
                     ) -> tuple[Params, list[StageResult]]:
    """Run ``cfg.stages`` in order from ``params`` (one call of ``fit_staged``: every stage
    in one compiled ``lax.scan``); returns the final parameters and the stage reports."""
    return _fit_stages(space, cfg.stages, params, forcing, targets, cfg,
                       jax.random.PRNGKey(cfg.seed), progress)


def describe(res: StageResult) -> str:
    if res.skipped:
        return f"{res.name}: {res.status} ({res.skipped})"
    vals = ", ".join(f"{k}={v:.4g}" for k, v in res.values.items())
    if res.converged:
        conv = "converged"
    elif res.status == "at_bound":
        conv = f"stopped at a physical bound ({', '.join(res.at_bound)}): no convergence claim"
    else:
        conv = f"NOT converged (loss moved {res.loss_change:.2e})"
    if res.note:
        vals += f" [{res.note}]"
    drop = f", dropped starts {list(res.dropped_starts)}" if res.dropped_starts else ""
    return (f"{res.name}: loss {res.initial_loss:.4g} -> {res.final_loss:.4g} in "
            f"{res.iterations} it, {conv} (|g|={res.grad_norm:.2e}), best start "
            f"{res.best_start}/{res.n_starts}{drop}; {vals}")
