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

from ..model import Forcing, Params, ParamSpace
from ..status import message
from ._config import SEED_STAGES, CalibrationConfig, Stage
from ._objective import Targets
from ._staged import STAGE_CODES, cell_weights, fit_staged, staged_problem

__all__ = ["STAGE_STATUS", "StageResult", "stage_results", "run_stage", "calibrate_stages",
           "describe"]


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


def _fit_stages(space: ParamSpace, stages: tuple[Stage, ...], params: Params,
                forcing: Forcing, targets: Targets, cfg: CalibrationConfig, key,
                progress=None) -> tuple[Params, list[StageResult]]:
    """Checks (raising :class:`CalibrationError` before any compute), one call of the pure
    jitted ``fit_staged``, and the report records."""
    settings = cfg.fit_settings()
    dtype = params.dtype
    # Padded to the seed's stage count with empty (skipped, free) stages: configs with
    # fewer stages share the compiled fit.
    problem = staged_problem(space, stages, cfg.n_starts, key, dtype=dtype,
                             optimiser=settings.optimiser, pad_to=len(SEED_STAGES))
    if progress:
        progress(f"staged fit: {len(stages)} stage(s) in one compiled call "
                 f"({', '.join(st.name for st in stages)})")
    fit = fit_staged(params, problem, forcing, targets, cell_weights(targets, dtype),
                     jnp.asarray(cfg.prior_weight, dtype), space, settings)
    results = stage_results(space, stages, params, fit, targets)
    if progress:
        for i, res in enumerate(results):
            progress(f"  stage {i + 1}/{len(stages)} " + describe(res))
    return fit.params, results


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
    """
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
