"""A whole site calibration: data split, stages, goodness of fit, local identifiability,
and the seed's regional magnitudes.  Returns plain numbers (numpy / dicts) for the report.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ..io import Observations
from ..model import Forcing, Params, ParamSpace
from ..solve import Simulation, simulate
from ._config import SOM_VARS, CalibrationConfig, CalibrationError, Stage
from ._local import local_identifiability
from ._magnitudes import regional_magnitudes
from ._metrics import fit_failures, seed_criteria, split_metrics
from ._objective import TARGET_VARIABLES, Targets, make_targets
from ._stages import StageResult, calibrate_stages

__all__ = ["SiteCalibration", "SiteProblem", "calibrate_site", "site_problem", "finish_site",
           "training_targets", "training_years", "fitted_names", "used_events",
           "calibration_stages",
           "resolve_holdout", "initial_state_from_data", "with_initial_state",
           "HOLDOUT_SHARE", "INITIAL_STATES"]


@dataclasses.dataclass
class SiteCalibration:
    """Everything a calibration produced (numbers only; the report renders it)."""

    site: str
    region: str
    params: Params
    prior: Params
    space: ParamSpace
    stages: list[StageResult]
    forcing: Forcing
    observations: Observations
    sim: Simulation
    train_years: tuple[int, int]
    holdout_years: tuple[int, int] | None
    metrics: dict
    criteria: dict
    identifiability: dict | None
    magnitudes: dict
    config: CalibrationConfig
    dtype: str
    prior_sim: Simulation | None = None
    holdout_rule: str = ""
    initial_state_note: str = ""
    failures: tuple[str, ...] = ()  # plain sentences: what the calibration failed to do

    @property
    def screen(self) -> dict | None:
        """The global start search of the basin stage (None: none ran)."""
        return next((r.screen for r in self.stages if r.screen is not None), None)


HOLDOUT_SHARE = 0.2


# Initial states: (parameter, variable whose first-year observation gives it, scale to the
# parameter's units, variables that identify it when fitted).
INITIAL_STATES = (("V0", "veg_cover_%", 0.01, ("veg_cover_%",)),
                  ("SOM0", "SOM_%", 1.0, SOM_VARS))


def initial_state_from_data(space: ParamSpace, params: Params, obs: Observations,
                            start: int, rule: str,
                            train_years=None) -> tuple[Params, str, tuple[str, ...]]:
    """V0 (cover / 100) and SOM0 (SOM_%, 0-20 cm): where they come from.

    ``rule`` (config ``initial_state``):

    - ``"data"``: from the observation of the first simulated year where observed (clipped
      to the physical bounds), else the prior;
    - ``"fit"``: fitted (see :func:`with_initial_state`) wherever the variables that
      identify it are observed in ``train_years`` (default: any year), else the prior;
    - ``"auto"`` (default): from the first year's observation where observed, else fitted
      as for ``"fit"``, else the prior (a record whose first year is not observed);
    - ``"prior"``: the prior values.

    Returns the parameters, a note in words and the names to fit."""
    if rule == "prior":
        return params, "V0, SOM0: prior values (config initial_state = prior)", ()
    i = np.flatnonzero(obs.years == start)
    keep = np.ones(len(obs.years), bool) if train_years is None else np.isin(
        obs.years, np.asarray(train_years))
    notes, new, fit = [], {}, []
    for name, var, scale, ident in INITIAL_STATES:
        sp = space.spec(name)
        first = bool(i.size and obs.masks[var][i[0]])
        if rule in ("data", "auto") and first:
            v = float(np.clip(obs.values[var][i[0]] * scale, sp.bound_lower, sp.bound_upper))
            new[name] = v
            notes.append(f"{name} = {v:.4g} from the {start} observation of {var}")
        elif rule in ("fit", "auto") and any(
                np.any(np.asarray(obs.masks[w], bool) & keep) for w in ident):
            fit.append(name)
            why = "" if rule == "fit" else f" ({var} not observed in {start})"
            notes.append(f"{name} fitted from {', '.join(w for w in ident if obs.masks[w].any())}"
                         f"{why}, starting from the prior value")
        else:
            why = f"{var} not observed in {start}" if rule == "data" else \
                f"no {'/'.join(ident)} observation in the training years"
            notes.append(f"{name}: prior value ({why})")
    return (params.replace(**new) if new else params), "; ".join(notes), tuple(fit)


def with_initial_state(stages: tuple[Stage, ...], names) -> tuple[Stage, ...]:
    """The stages with each initial state of ``names`` made free in the first stage that
    fits a variable identifying it: V0 where cover is fitted (stage a), SOM0 where an SOM
    column is fitted (stage b of the seed's stages: SOM0 is identified by SOM data, which
    stage (a) does not fit).  Later stages keep the fitted value.  Raises
    :class:`CalibrationError` when no stage fits such a variable."""
    out = list(stages)
    for name, _, _, ident in INITIAL_STATES:
        if name not in names:
            continue
        k = next((j for j, st in enumerate(out) if set(ident) & set(st.variables)), None)
        if k is None:
            raise CalibrationError(f"initial_state: no stage fits {'/'.join(ident)}, so "
                                   f"{name} cannot be fitted")
        st = out[k]
        if name not in st.free:
            out[k] = dataclasses.replace(
                st, free=st.free + (name,),
                description=(st.description + f"; {name} fitted here (initial_state)").strip(
                    "; "))
    return tuple(out)


def resolve_holdout(holdout, obs: Observations, years) -> tuple[tuple[int, int] | None, str]:
    """The holdout years and the rule that chose them.

    ``"auto"``: the last ``ceil(0.2 n)`` of the n years that hold any observation inside
    the simulated years (none when fewer than 5 such years); ``None``: no holdout; a pair:
    those years."""
    if holdout is None:
        return None, "no holdout (config holdout null)"
    if holdout != "auto":
        return (int(holdout[0]), int(holdout[1])), f"holdout {holdout[0]}-{holdout[1]} (given)"
    any_obs = np.zeros(len(obs.years), bool)
    for var in TARGET_VARIABLES:
        any_obs |= np.asarray(obs.masks[var], bool)
    yrs = np.asarray(obs.years)[any_obs]
    yrs = np.sort(yrs[(yrs >= years[0]) & (yrs <= years[-1])])
    if yrs.size < 5:
        return None, (f"no holdout: only {yrs.size} observed years (the default holds out "
                      "the last 20% of observed years when there are at least 5)")
    n = int(np.ceil(HOLDOUT_SHARE * yrs.size))
    first = int(yrs[-n])
    return (first, int(years[-1])), (
        f"default: the last {n} of {yrs.size} observed years ({first}-{int(yrs[-1])}, "
        f"~{HOLDOUT_SHARE:.0%}) held out")


def training_targets(obs: Observations, forcing: Forcing, holdout, dtype=None) -> Targets:
    """The targets a site calibration fits: spreads from the training cells only and every
    cell of the ``holdout`` years (a ``(first, last)`` pair or None) masked out, as in
    :func:`calibrate_site` (for analyses that refit a finished calibration)."""
    keep = training_years(forcing.years, holdout)
    targets = make_targets(obs, forcing, dtype=dtype, sigma_years=keep)
    return targets.with_mask(jnp.asarray(keep))


def calibration_stages(cal: SiteCalibration) -> tuple[Stage, ...]:
    """The stages a calibration ran, in order: the config's, after the basin stage when the
    calibration kept it (rebuilt from its record: its free set on every observed
    variable, the events when any stage uses them)."""
    from ._screen import BASIN_STAGE, basin_stage

    stages = tuple(cal.config.stages)
    first = cal.stages[0] if cal.stages else None
    if first is not None and first.name == BASIN_STAGE:
        counts = training_targets(cal.observations, cal.forcing, cal.holdout_years).count()
        observed = tuple(v for v in TARGET_VARIABLES if counts[v] > 0)
        stages = (basin_stage(first.free, observed, any(st.events for st in stages)),) \
            + stages
    return stages


def used_events(cfg: CalibrationConfig, results) -> bool:
    """Whether a stage that ran held the event constraints (the basin stage, not in
    ``cfg.stages``, holds them when any of the config's stages does)."""
    by_name = {st.name: st.events for st in cfg.stages}
    any_events = any(by_name.values())
    return any(by_name.get(res.name, any_events) for res in results if res.skipped is None)


def fitted_names(stages) -> list[str]:
    """The parameters the stages that ran fitted (the calibrated set), in stage order."""
    names = []
    for res in stages:
        if res.skipped is None:
            names += [n for n in res.fitted if n not in names]
    return names


def training_years(years, holdout) -> np.ndarray:
    """Boolean mask of ``years`` outside the ``holdout`` pair (all True for None)."""
    years = np.asarray(years)
    keep = np.ones(len(years), bool)
    if holdout is not None:
        keep &= ~((years >= holdout[0]) & (years <= holdout[1]))
    return keep


@dataclasses.dataclass(frozen=True)
class SiteProblem:
    """A site calibration before the fit (:func:`site_problem`): the starting parameters
    (initial state applied), the config (initial-state stages added), the training targets,
    the holdout and its rule."""

    space: ParamSpace
    params: Params
    forcing: Forcing
    obs: Observations
    cfg: CalibrationConfig
    train: Targets
    holdout: tuple[int, int] | None
    holdout_rule: str
    initial_state_note: str


def site_problem(space: ParamSpace, params: Params, forcing: Forcing, obs: Observations,
                 cfg: CalibrationConfig = CalibrationConfig()) -> SiteProblem:
    """The host part of :func:`calibrate_site` before the fit: the holdout, the initial
    state, the training targets (spreads from the training cells only: holdout values never
    enter the fit).  Raises :class:`CalibrationError` for a site without training data."""
    if obs.years.size == 0:
        raise CalibrationError(f"{obs.source_file}: no observations for {obs.location!r}")
    years = forcing.years
    hold, hold_rule = resolve_holdout(cfg.holdout, obs, years)
    keep = training_years(years, hold)
    params, init_note, init_fit = initial_state_from_data(
        space, params, obs, int(years[0]), cfg.initial_state, train_years=years[keep])
    if init_fit:
        cfg = dataclasses.replace(cfg, stages=with_initial_state(cfg.stages, init_fit))
    train = training_targets(obs, forcing, hold, params.dtype)
    if sum(train.count().values()) == 0:
        raise CalibrationError(
            f"{obs.source_file}: {obs.location!r} has no observations in the training years "
            f"{years[0]}-{years[-1]} outside the holdout {hold}")
    return SiteProblem(space, params, forcing, obs, cfg, train, hold, hold_rule, init_note)


def calibrate_site(space: ParamSpace, params: Params, forcing: Forcing, obs: Observations,
                   cfg: CalibrationConfig = CalibrationConfig(), planting_start=None,
                   progress=None, identifiability: bool = True) -> SiteCalibration:
    """Calibrate to a site's observations: stages on the training years, then metrics on
    training and holdout, the local correlation matrix and the regional magnitudes."""
    prob = site_problem(space, params, forcing, obs, cfg)
    fitted, stages = calibrate_stages(space, prob.params, forcing, prob.train, prob.cfg,
                                      progress=progress)
    return finish_site(prob, fitted, stages, planting_start, progress, identifiability)


def finish_site(prob: SiteProblem, fitted: Params, stages: list[StageResult],
                planting_start=None, progress=None,
                identifiability: bool = True) -> SiteCalibration:
    """The host part of :func:`calibrate_site` after the fit: the simulation, metrics on
    training and holdout, the local identifiability, the regional magnitudes, the failure
    sentences."""
    space, params, forcing, obs, cfg = prob.space, prob.params, prob.forcing, prob.obs, \
        prob.cfg
    train, hold = prob.train, prob.holdout
    years = forcing.years
    keep = training_years(years, hold)
    solver = cfg.make_solver()
    sim = simulate(fitted, forcing, solver=solver)
    metrics = split_metrics(obs, sim, hold)
    free_names = fitted_names(stages)
    events = used_events(cfg, stages)
    ident = None
    if identifiability and free_names:
        if progress:
            progress(f"local identifiability over {len(free_names)} parameters (jacfwd)")
        ident = local_identifiability(space, fitted, forcing, train, free_names, cfg,
                                      events=events)
    magnitudes = regional_magnitudes(fitted, forcing, space.region, planting_start,
                                     solver=solver)
    t_years = years[keep]
    return SiteCalibration(
        site=obs.location, region=space.region, params=fitted, prior=params, space=space,
        stages=stages, forcing=forcing, observations=obs, sim=sim,
        train_years=(int(t_years[0]), int(t_years[-1])),
        holdout_years=hold if hold is not None and np.any(~keep) else None,
        holdout_rule=prob.holdout_rule, initial_state_note=prob.initial_state_note,
        metrics=metrics, criteria=seed_criteria(metrics), identifiability=ident,
        failures=tuple(fit_failures(obs, sim, metrics, t_years)),
        magnitudes=magnitudes, config=cfg, dtype=str(params.dtype),
        prior_sim=simulate(params, forcing, solver=solver),
    )
