"""The calibration config: the seed's stages, the settings of a fit and its JSON form.

A :class:`Stage` names its free parameters and the observed variables it fits; a
:class:`CalibrationConfig` holds the stages and the settings of the fit, every key of its
JSON form described and checked by one table (``CONFIG_KEYS``: ``load_config`` and
``regv1 calibrate --show-config`` both read it).  The config names its solver and optimiser
(``method``, ``optimizer``); :meth:`CalibrationConfig.fit_settings` turns them into the
objects the staged fit runs (``solve.Diffrax``/``solve.RK4``,
``fit.LevenbergMarquardt``/``fit.LBFGS``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import equinox as eqx

from ..model import PARAM_NAMES, ParamSpace
from ..solve import AbstractSolver, KernelRK4, solver_from
from ._objective import SEED_EVENTS, TARGET_VARIABLES, EventConstraints
from ._optimise import LBFGS, AbstractOptimiser, Adam, LevenbergMarquardt

__all__ = ["Stage", "SEED_STAGES", "SOM_VARS", "CalibrationConfig", "CalibrationError",
           "CONFIG_KEYS", "config_document", "load_config", "OPTIMIZERS", "FitSettings"]


class CalibrationError(ValueError):
    """A calibration cannot run as asked (bad stage, too few observations, no start)."""


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the staged fit: free parameters, fitted variables, event constraints."""

    name: str
    free: tuple[str, ...]
    variables: tuple[str, ...]
    events: bool = False
    description: str = ""
    # The stage's prior weight is max(config prior_weight, this): the basin stage keeps the
    # priors of the parameters it frees as soft penalties even in a plain least-squares fit.
    min_prior_weight: float = 0.0

    def check(self, space: ParamSpace) -> None:
        for p in self.free:
            if p not in {s.name for s in space.specs}:
                raise CalibrationError(f"stage {self.name!r} names unknown parameter {p!r}")
        for v in self.variables:
            if v not in TARGET_VARIABLES:
                raise CalibrationError(
                    f"stage {self.name!r} names unknown variable {v!r}; known: "
                    f"{TARGET_VARIABLES}")
        if not self.free:
            raise CalibrationError(f"stage {self.name!r} has no free parameters")
        if not self.variables and not self.events:
            raise CalibrationError(f"stage {self.name!r} fits no variable and no constraint")


SOM_VARS = ("SOM_%", "SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%")

SEED_STAGES: tuple[Stage, ...] = (
    Stage("a_vegetation", ("r_V", "K_V"), ("veg_cover_%",),
          description="(a) r_V, K_V on cover V(t); theta and SOM follow the current "
          "(prior) parameters and are not refitted"),
    Stage("b_soil_carbon", ("a1", "a2"), SOM_VARS,
          description="(b) a1, a2 on SOM (0-20 cm and the 0-10, 10-20, 20-40 cm layers)"),
    Stage("c_hydrology", ("lambda1", "lambda2", "eta1"),
          ("runoff_mm", "theta_m3/m3", "veg_cover_%", "SOM_%"),
          description="(c) lambda1, lambda2, eta1 on runoff and theta with V and SOM "
          "simulated jointly (their misfit kept in the objective)"),
    Stage("d_runoff_erosion", ("gamma", "b_V", "c_E", "omega_E", "k_E"),
          ("runoff_mm", "erosion_t/ha"), events=True,
          description="(d) g(theta) exponent and the erosion cover effect from the "
          "rainfall-simulation constraints (intensity-weighted) and erosion data"),
    Stage("e_joint", ("r_V", "K_V", "a1", "a2", "lambda1", "lambda2", "eta1", "gamma",
                      "b_V", "c_E", "omega_E", "k_E"),
          TARGET_VARIABLES, events=True,
          description="(e) joint polish, from the staged values, of every staged parameter "
          "that its own stage fitted (those an earlier stage skipped or held stay kept) "
          "(our addition: removes the bias of fitting (a) with (c)'s parameters at prior)"),
)


class FitSettings(eqx.Module):
    """What shapes the compiled staged fit (static: changing it recompiles): the solver,
    the optimiser, the event constraints and the convergence test (converged: |grad| <=
    ``gtol`` (1 + |loss|) and the loss moved by at most ``ftol`` (1 + |loss|) over the last
    10 iterations)."""

    solver: AbstractSolver
    optimiser: AbstractOptimiser
    events: EventConstraints = SEED_EVENTS
    gtol: float = 1e-3
    ftol: float = 1e-6


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Settings of a calibration (all have defaults; ``load_config`` reads them from JSON)."""

    stages: tuple[Stage, ...] = SEED_STAGES
    n_starts: int = 8
    optimizer: str = "lm"     # second phase: "lm" (Levenberg-Marquardt) or "lbfgs" (Optax)
    adam_steps: int = 0       # optional Optax Adam warm-up from every start (0: LM only)
    adam_lr: float = 0.1
    lm_steps: int = 40        # most Levenberg-Marquardt iterations (forward-mode Jacobian)
    lbfgs_steps: int = 60     # Optax L-BFGS iterations (when optimizer == "lbfgs")
    gtol: float = 1e-3   # converged: |grad| <= gtol (1 + |loss|) and the loss moved by
    ftol: float = 1e-6   # at most ftol (1 + |loss|) over the last 10 iterations
    method: str = "rk4"
    rtol: float = 1e-6
    atol: float = 1e-6
    steps_per_year: int = 12
    holdout: tuple[int, int] | str | None = "auto"  # "auto": last ~20% of observed years
    seed: int = 0
    prior_weight: float = 1.0  # 0: plain weighted least squares (twin experiments)
    initial_state: str = "auto"  # V0, SOM0: first year's observation, else fitted, else prior
    screen: int = 10_000  # prior draws of the global start search (0: none, no basin stage)
    free: tuple[str, ...] = ()  # added to the basin stage (screened and fitted there)
    pin: tuple[str, ...] = ()  # never free, never screened
    events: EventConstraints = SEED_EVENTS

    def __post_init__(self):
        for key in ("free", "pin"):
            names = tuple(getattr(self, key))
            object.__setattr__(self, key, names)
            bad = [n for n in names if n not in PARAM_NAMES]
            if bad:
                raise CalibrationError(f"config {key}: unknown parameter(s) {bad}; known: "
                                       f"{list(PARAM_NAMES)}")
        both = set(self.free) & set(self.pin)
        if both:
            raise CalibrationError(f"config: {sorted(both)} both free and pinned")

    @property
    def basin(self) -> bool:
        """Whether a basin stage runs first (a global start search, or ``free`` names)."""
        return self.screen > 0 or bool(self.free)

    def make_solver(self) -> AbstractSolver:
        """The solver object of ``method`` (and ``rtol``, ``atol``, ``steps_per_year``):
        ``"rk4"`` is ``solve.KernelRK4`` (the CPU kernels, forward values and forward-mode
        Jacobians; the XLA RK4 path where they are not available: the same numbers)."""
        if self.method == "rk4":
            return KernelRK4(self.steps_per_year)
        return solver_from(self.method, rtol=self.rtol, atol=self.atol,
                           steps_per_year=self.steps_per_year)

    def make_optimiser(self) -> AbstractOptimiser:
        """The optimiser object of ``optimizer`` (``OPTIMIZERS``) with its steps and the
        Adam warm-up."""
        if self.optimizer not in OPTIMIZERS:
            raise CalibrationError(f"unknown optimizer {self.optimizer!r}; use one of "
                                   f"{sorted(OPTIMIZERS)}")
        return OPTIMIZERS[self.optimizer](self)

    def fit_settings(self) -> FitSettings:
        """The :class:`FitSettings` of the compiled staged fit (solver, optimiser, events,
        convergence test)."""
        return FitSettings(self.make_solver(), self.make_optimiser(), self.events,
                           self.gtol, self.ftol)


# Every key of a --config JSON: (description, check).  The check returns an error text or
# None; `load_config` and `regv1 calibrate --show-config` both read this table.
def _int_at_least(lo):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            return f"must be an integer >= {lo}"
        return None
    return check


def _number(lo, strict=True):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v \
                or (v <= lo if strict else v < lo):
            return f"must be a number {'>' if strict else '>='} {lo}"
        return None
    return check


def _one_of(*choices):
    return lambda v: None if v in choices else f"must be one of {list(choices)}"


def _check_holdout(v):
    if v is None or v == "auto":
        return None
    if (not isinstance(v, (list, tuple)) or len(v) != 2
            or any(isinstance(y, bool) or not isinstance(y, int) for y in v) or v[0] > v[1]):
        return ("must be \"auto\", null or [first_year, last_year] (integers, "
                "first <= last)")
    return None


def _check_steps_per_year(v):
    err = _int_at_least(2)(v)
    return err or (None if v % 2 == 0 else "must be an even integer >= 2")


def _names(v):
    if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
        return "must be a list of parameter names"
    bad = [n for n in v if n not in PARAM_NAMES]
    return f"names unknown parameter(s) {bad}" if bad else None


def _check_stages(v):
    if not isinstance(v, list) or not v:
        return "must be a non-empty list of {name, free, variables, events} objects"
    return None


CONFIG_KEYS: dict[str, tuple[str, Callable]] = {
    "stages": ("list of stages, each {\"name\": str, \"free\": [parameter, ...], "
               "\"variables\": [CSV column, ...], \"events\": bool, \"description\": str}; "
               "run in order, each "
               "warm-starting from the last (default: the seed's five stages)", _check_stages),
    "n_starts": ("starts per stage, run at once under vmap: the warm start plus prior draws "
                 "(integer >= 1)", _int_at_least(1)),
    "optimizer": ("\"lm\" (Levenberg-Marquardt, forward-mode Jacobian) or \"lbfgs\" "
                  "(Optax L-BFGS)", _one_of("lm", "lbfgs")),
    "adam_steps": ("Optax Adam warm-up steps before the optimizer (integer >= 0; 0: none)",
                   _int_at_least(0)),
    "adam_lr": ("Adam learning rate on the unconstrained scale (number > 0)", _number(0)),
    "lm_steps": ("most Levenberg-Marquardt iterations per start (integer >= 1)",
                 _int_at_least(1)),
    "lbfgs_steps": ("L-BFGS iterations per start when optimizer is lbfgs (integer >= 1)",
                    _int_at_least(1)),
    "gtol": ("converged when |gradient| <= gtol (1 + |loss|) (number > 0)", _number(0)),
    "ftol": ("... and the loss moved by at most ftol (1 + |loss|) over the last 10 "
             "iterations (number > 0)", _number(0)),
    "method": ("solver inside the fit: \"rk4\" (default: steps_per_year fixed steps, run by "
               "the generated CPU kernels with forward-mode Jacobians from the tangent "
               "kernel; the XLA RK4 path on other devices) or \"tsit5\" (adaptive, diffrax "
               "forward-mode adjoint)", _one_of("tsit5", "rk4")),
    "rtol": ("relative tolerance of tsit5 (number > 0)", _number(0)),
    "atol": ("absolute tolerance of tsit5 (number > 0)", _number(0)),
    "steps_per_year": ("rk4 steps per year (even integer >= 2)", _check_steps_per_year),
    "holdout": ("[first_year, last_year] kept out of the fit and scored separately, null (none) "
                "or \"auto\" (default: the last ~20% of the years with observations, at "
                "least 5 observed years)", _check_holdout),
    "seed": ("random seed of the prior draws that start the fit (integer >= 0)",
             _int_at_least(0)),
    "prior_weight": ("weight of the prior penalty (number >= 0; 0: plain weighted least "
                     "squares)", _number(0, strict=False)),
    "initial_state": ("V0 and SOM0: \"auto\" (default: from the cover and SOM observed in "
                      "the first simulated year; where not observed there, fitted - V0 in "
                      "the first stage fitting cover, SOM0 in the first fitting SOM - when "
                      "observed in other training years; else the prior), \"data\" (first "
                      "year's observation, else the prior), \"fit\" (always fitted where "
                      "observed) or \"prior\"", _one_of("auto", "data", "fit", "prior")),
    "screen": ("prior draws of the global start search before the stages (integer >= 0; "
               "0: none, and no basin stage unless 'free' names some; docs/methods.md)",
               _int_at_least(0)),
    "free": ("parameters added to the basin stage: screened and fitted there, with their "
             "priors as soft penalties (list of names)", _names),
    "pin": ("parameters never freed by any stage nor screened: they keep their incoming "
            "value (list of names)", _names),
}


def config_document(cfg: CalibrationConfig | None = None) -> dict:
    """A config as the JSON that ``load_config`` reads (every key, ``stages`` spelled out)."""
    cfg = cfg or CalibrationConfig()
    doc = {}
    for key in CONFIG_KEYS:
        v = getattr(cfg, key)
        if key == "stages":
            v = [{"name": s.name, "free": list(s.free), "variables": list(s.variables),
                  "events": s.events, "description": s.description} for s in v]
        elif isinstance(v, tuple):
            v = list(v)
        doc[key] = v
    return doc


def load_config(path: str | Path, base: CalibrationConfig | None = None) -> CalibrationConfig:
    """Read a calibration config from JSON (keys and meanings: ``CONFIG_KEYS``).

    ``{"stages": [{"name": "...", "free": [...], "variables": [...], "events": false}],
    "n_starts": 8, "optimizer": "lm", "adam_steps": 0, "lm_steps": 40, "method": "tsit5",
    "holdout": [2011, 2015], "seed": 0}``; absent keys keep their defaults.  Every value is
    checked (type and range); an error names the file and the key.
    """
    base = base or CalibrationConfig()
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path}: not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise CalibrationError(f"{path}: not UTF-8 text ({err})") from err
    if not isinstance(doc, dict):
        raise CalibrationError(f"{path}: expected a JSON object of config keys, got "
                               f"{type(doc).__name__}")
    unknown = set(doc) - set(CONFIG_KEYS)
    if unknown:
        raise CalibrationError(f"{path}: unknown config key(s) {sorted(unknown)}; known: "
                               f"{list(CONFIG_KEYS)}")
    for key, value in doc.items():
        problem = CONFIG_KEYS[key][1](value)
        if problem:
            raise CalibrationError(f"{path}: config key {key!r} {problem}, got {value!r}")
    kw = dict(doc)
    if "stages" in kw:
        stages = []
        for i, s in enumerate(kw["stages"]):
            try:
                if not isinstance(s, dict) or not isinstance(s["name"], str) \
                        or isinstance(s["free"], str) \
                        or isinstance(s.get("variables", ()), str):
                    raise TypeError("name must be a string, free and variables lists")
                stages.append(Stage(name=s["name"], free=tuple(s["free"]),
                                    variables=tuple(s.get("variables", ())),
                                    events=bool(s.get("events", False)),
                                    description=s.get("description", "")))
            except (KeyError, TypeError) as err:
                raise CalibrationError(f"{path}: stage {i} needs a name and a list of free "
                                       f"parameters ({err})") from err
        kw["stages"] = tuple(stages)
    if "holdout" in kw and kw["holdout"] not in (None, "auto"):
        kw["holdout"] = tuple(kw["holdout"])
    for key in ("free", "pin"):
        if key in kw:
            kw[key] = tuple(kw[key])
    return dataclasses.replace(base, **kw)


# Optimiser objects by the config's ``optimizer`` name.
OPTIMIZERS: dict[str, Callable[[CalibrationConfig], AbstractOptimiser]] = {
    "lm": lambda c: LevenbergMarquardt(max_steps=c.lm_steps,
                                       warmup=Adam(c.adam_steps, c.adam_lr)),
    "lbfgs": lambda c: LBFGS(steps=c.lbfgs_steps, warmup=Adam(c.adam_steps, c.adam_lr)),
}
