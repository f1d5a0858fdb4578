"""Staged, gradient-based calibration (the seed's "Fit ODEs with hierarchical approach").

Each :class:`Stage` names its free parameters and the observed variables it fits.  Stages run
in order; each warm-starts from the previous result and leaves the earlier stages' values
frozen.  Inside a stage, ``n_starts`` starts (the warm start plus draws from the prior) run
at once under ``vmap``: Adam, then L-BFGS (Optax), each a fixed number of iterations inside
``lax.scan`` (one trace, no Python loop over iterations).  The objective is MAP on the
unconstrained scale: masked, spread-weighted least squares plus the prior penalty of the
stage's free parameters.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..model._forcing import Forcing
from ..model._params import FreeSet, Params, ParamSpace
from ..solve._simulate import simulate
from ._objective import (
    SEED_EVENTS,
    TARGET_VARIABLES,
    EventConstraints,
    Targets,
    data_residuals,
    event_residuals,
)

__all__ = ["Stage", "SEED_STAGES", "CalibrationConfig", "CalibrationError", "StageResult",
           "STAGE_STATUS", "run_stage", "calibrate_stages", "load_config", "residual_fn"]


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
    method: str = "tsit5"
    rtol: float = 1e-6
    atol: float = 1e-6
    steps_per_year: int = 12
    holdout: tuple[int, int] | str | None = "auto"  # "auto": last ~20% of observed years
    seed: int = 0
    prior_weight: float = 1.0  # 0: plain weighted least squares (twin experiments)
    initial_state: str = "auto"  # V0, SOM0: first year's observation, else fitted, else prior
    events: EventConstraints = SEED_EVENTS


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
    "method": ("solver inside the fit: \"tsit5\" (adaptive, diffrax) or \"rk4\" (fixed "
               "steps)", _one_of("tsit5", "rk4")),
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
        err = CONFIG_KEYS[key][1](value)
        if err:
            raise CalibrationError(f"{path}: config key {key!r} {err}, got {value!r}")
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
    return dataclasses.replace(base, **kw)


# Per-stage status codes (StageResult.status).
STAGE_STATUS = {
    "ok": "converged",
    "not_converged": "stopped before the convergence test passed",
    "at_bound": "a parameter ended at its physical bound (no convergence claimed: the "
                "gradient of the saturated transform is zero there)",
    "skipped": "not run (no data for its variables, or too few constraints without a prior)",
    "failed": "every start diverged; parameters left at their incoming values",
}


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


def _mask_tree(space: ParamSpace, names) -> Params:
    # Arrays, not Python bools: the mask is data, so every stage shares one trace.
    return Params(**{s.name: jnp.asarray(s.name in names) for s in space.specs})


def _stack(space: ParamSpace, p: Params):
    return jnp.stack([jnp.asarray(getattr(p, s.name)) for s in space.specs], axis=-1)


def _unstack(space: ParamSpace, u) -> Params:
    return Params(**{s.name: u[..., i] for i, s in enumerate(space.specs)})


def params_from_vector(space: ParamSpace, u, base: Params, mask: Params) -> Params:
    """Parameters from the full unconstrained vector ``u``; where ``mask`` is False the
    value is ``base``'s, exactly and with no gradient."""
    full = space.to_constrained(_unstack(space, u))
    base = jax.lax.stop_gradient(base)
    return jax.tree_util.tree_map(lambda m, a, b: jnp.where(m, a, b), mask, full, base)


def _weights(stage: Stage, dtype):
    var_w = jnp.asarray([1.0 if v in stage.variables else 0.0 for v in TARGET_VARIABLES], dtype)
    return var_w, jnp.asarray(1.0 if stage.events else 0.0, dtype)


def _prior_residuals(space: ParamSpace, p: Params, mask: Params):
    return jnp.stack([jnp.where(getattr(mask, s.name), s.standardised(getattr(p, s.name)), 0.0)
                      for s in space.specs])


@dataclasses.dataclass(frozen=True)
class _Settings:
    """The part of a config that shapes the compiled optimiser (static); stages, holdout and
    the prior weight are data, so changing them does not recompile."""

    method: str
    rtol: float
    atol: float
    steps_per_year: int
    optimizer: str
    adam_steps: int
    adam_lr: float
    second_steps: int
    events: EventConstraints

    @classmethod
    def of(cls, cfg: CalibrationConfig) -> _Settings:
        if cfg.optimizer not in ("lm", "lbfgs"):
            raise CalibrationError(f"unknown optimizer {cfg.optimizer!r}; use 'lm' or 'lbfgs'")
        return cls(cfg.method, cfg.rtol, cfg.atol, cfg.steps_per_year, cfg.optimizer,
                   cfg.adam_steps, cfg.adam_lr,
                   cfg.lm_steps if cfg.optimizer == "lm" else cfg.lbfgs_steps, cfg.events)


def _residuals(u, base, mask, var_w, ev_w, prior_w, forcing, targets, space, cfg, adjoint,
               cell_w=None):
    """Stacked residuals: data (weighted by stage, and per cell by ``cell_w``, shape
    ``(len(TARGET_VARIABLES) * n_years,)``, when given), event constraints, prior (free
    only).

    0.5 * |r|^2 is the stage's negative log posterior up to a constant.
    """
    p = params_from_vector(space, u, base, mask)
    sim = simulate(p, forcing, method=cfg.method, rtol=cfg.rtol, atol=cfg.atol,
                   steps_per_year=cfg.steps_per_year, adjoint=adjoint)
    r_data = data_residuals(sim, targets, TARGET_VARIABLES)
    n = forcing.n_years
    r_data = r_data * jnp.repeat(jnp.sqrt(var_w), n)
    if cell_w is not None:
        r_data = r_data * jnp.sqrt(cell_w)
    r_ev = jnp.sqrt(ev_w) * event_residuals(p, cfg.events)
    r_prior = jnp.sqrt(prior_w) * _prior_residuals(space, p, mask)
    return jnp.concatenate([r_data, r_ev, r_prior])


def residual_fn(space: ParamSpace, stage: Stage, base: Params, forcing: Forcing,
                targets: Targets, cfg: CalibrationConfig) -> tuple[Callable, FreeSet]:
    """``(v -> residuals, free)`` over the stage's free parameters only (``v = free.pack``),
    with forward-mode-capable solves: its ``jax.jacfwd`` is the Gauss-Newton Jacobian."""
    free = space.select(*stage.free)
    mask = _mask_tree(space, stage.free)
    var_w, ev_w = _weights(stage, base.dtype)
    u_base = _stack(space, space.to_unconstrained(base))
    idx = jnp.asarray([[s.name for s in space.specs].index(n) for n in stage.free])
    adjoint = "checkpoint" if cfg.method == "rk4" else "forward"

    def fn(v):
        u = u_base.at[idx].set(v)
        return _residuals(u, base, mask, var_w, ev_w, jnp.asarray(cfg.prior_weight, u.dtype),
                          forcing, targets, space, cfg, adjoint)

    return fn, free


def _optimise(loss, u0, mask_vec, cfg: CalibrationConfig):
    """Adam, then L-BFGS with a backtracking line search, from one start.

    One ``lax.scan`` over all iterations; the loss and gradient are computed once per
    iteration outside a ``lax.cond`` on the (unbatched) iteration index, so that the
    gradient of the solve is traced once.  Frozen coordinates get zero gradient and never
    move.
    """
    adam = optax.adam(cfg.adam_lr)
    lbfgs = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=15, store_grad=True))

    def vg(u):
        val, g = jax.value_and_grad(loss)(u)
        return val, jnp.where(mask_vec & jnp.isfinite(g), g, 0.0)

    def adam_branch(u, val, g, a_state, l_state):
        upd, a_state = adam.update(g, a_state, u)
        return optax.apply_updates(u, upd), a_state, l_state

    def lbfgs_branch(u, val, g, a_state, l_state):
        upd, new_state = lbfgs.update(g, l_state, u, value=val, grad=g, value_fn=loss)
        new_u = jnp.where(mask_vec, optax.apply_updates(u, upd), u)
        good = jnp.isfinite(val) & jnp.all(jnp.isfinite(new_u))
        u = jnp.where(good, new_u, u)
        l_state = jax.tree_util.tree_map(lambda a, b: jnp.where(good, a, b), new_state, l_state)
        return u, a_state, l_state

    def step(carry, i):
        u, a_state, l_state = carry
        val, g = vg(u)
        out = jax.lax.cond(i < cfg.adam_steps, adam_branch, lbfgs_branch,
                           u, val, g, a_state, l_state)
        return out, val

    n = cfg.adam_steps + cfg.second_steps
    (u, _, _), trace = jax.lax.scan(step, (u0, adam.init(u0), lbfgs.init(u0)), jnp.arange(n))
    val, g = vg(u)
    return u, jnp.concatenate([trace, val[None]]), g


LM_FTOL = 1e-10  # LM stops when an accepted step gains less than this share of the cost
MAX_FREE = 12  # columns of the LM Jacobian (the joint stage has 12); more free: use L-BFGS


def _adam(loss, u0, mask_vec, cfg):
    adam = optax.adam(cfg.adam_lr)

    def step(carry, _):
        u, state = carry
        val, g = jax.value_and_grad(loss)(u)
        g = jnp.where(mask_vec & jnp.isfinite(g), g, 0.0)
        upd, state = adam.update(g, state, u)
        new_u = optax.apply_updates(u, upd)
        ok = jnp.isfinite(val) & jnp.all(jnp.isfinite(new_u))
        return (jnp.where(ok, new_u, u), state), val

    (u, _), trace = jax.lax.scan(step, (u0, adam.init(u0)), None, length=cfg.adam_steps)
    return u, trace


def _spd_solve(M, b):
    """``M^{-1} b`` for a small symmetric positive-definite ``M`` (K x K): a Cholesky
    factorisation and two triangular solves in jnp, each a ``fori_loop`` over K (a small
    trace: the staged fit compiles once for every stage and start).

    Not ``jnp.linalg.solve``: under ``vmap`` on CPU that is a LAPACK custom call whose
    batch loop runs on XLA's intra-op thread pool, and with several host devices running
    batched fits at once that pool can wedge (a deadlock seen in ``bench_bootstrap``,
    every thread parked in ``ParallelBatchMap``).  Elementwise jnp has no such call and
    vectorises over the batch.  A non-positive pivot gives NaN (the caller rejects the
    step)."""
    K = M.shape[0]
    idx = jnp.arange(K)

    def column(j, L):  # columns >= j of L are still zero, so L @ L[j] sums k < j only
        s = M[:, j] - L @ L[j]
        piv = jnp.sqrt(jnp.where(s[j] > 0, s[j], jnp.nan))
        return L.at[:, j].set(jnp.where(idx >= j, s / piv, 0.0))

    L = jax.lax.fori_loop(0, K, column, jnp.zeros_like(M))
    diag = jnp.diagonal(L)
    y = jax.lax.fori_loop(0, K, lambda i, y: y.at[i].set((b[i] - L[i] @ y) / diag[i]),
                          jnp.zeros_like(b))
    return jax.lax.fori_loop(
        0, K, lambda k, x: x.at[K - 1 - k].set((y[K - 1 - k] - L[:, K - 1 - k] @ x)
                                               / diag[K - 1 - k]), jnp.zeros_like(b))


def _levenberg_marquardt(res, u0, S, cfg):
    """Levenberg-Marquardt with Marquardt scaling on ``u = u0 + S v`` (S: the free columns).

    At most ``lm_steps`` iterations in a ``lax.while_loop`` that stops once a step gains
    less than ``LM_FTOL`` of the cost (under ``vmap``: once every start has); each evaluates
    the residuals and their forward-mode Jacobian (``jax.jacfwd``, K tangent solves in one
    pass) at the trial point
    and accepts it only if the cost falls (else the damping grows).  Returns the final u,
    the cost trace and the gradient J^T r in u's coordinates.
    """
    K = S.shape[1]

    def jr(v):
        def f(w):
            r = res(u0 + S @ w)
            return r, r

        J, r = jax.jacfwd(f, has_aux=True)(v)
        return J, r

    def cost_of(r):
        c = 0.5 * jnp.sum(r**2)
        return jnp.where(jnp.isfinite(c), c, jnp.inf)

    v0 = jnp.zeros((K,), u0.dtype)
    J0, r0 = jr(v0)
    A0 = J0.T @ J0
    lam0 = 1e-3 * jnp.max(jnp.diag(A0))

    n_max = cfg.second_steps

    def cond(carry):
        it, _, _, _, _, lam, done, _ = carry
        return (it < n_max) & ~done

    def body(carry):
        it, v, J, r, cost, lam, done, trace = carry
        g = J.T @ r
        A = J.T @ J
        d = jnp.diag(A)
        d = jnp.where(d > 0, d, 1.0)
        delta = _spd_solve(A + lam * jnp.diag(d), -g)
        v_new = v + delta
        J_new, r_new = jr(v_new)
        c_new = cost_of(r_new)
        ok = (c_new < cost) & jnp.all(jnp.isfinite(delta))
        # Stop (per start) once an accepted step gains less than ftol_lm of the cost, or
        # the damping has grown so large that no step is taken.
        done = (ok & (cost - c_new <= LM_FTOL * cost)) | (lam >= 1e10)
        v, J, r, cost = (jnp.where(ok, v_new, v), jnp.where(ok, J_new, J),
                         jnp.where(ok, r_new, r), jnp.where(ok, c_new, cost))
        lam = jnp.where(ok, jnp.maximum(lam / 3.0, 1e-12), jnp.minimum(lam * 4.0, 1e12))
        return it + 1, v, J, r, cost, lam, done, trace.at[it].set(cost)

    cost0 = cost_of(r0)
    carry = (jnp.asarray(0), v0, J0, r0, cost0,
             jnp.where(jnp.isfinite(lam0) & (lam0 > 0), lam0, 1.0), jnp.asarray(False),
             jnp.full((n_max,), cost0))
    it, v, J, r, cost, _, _, trace = jax.lax.while_loop(cond, body, carry)
    # Iterations not run (converged early) repeat the final cost.
    trace = jnp.where(jnp.arange(n_max) >= it, cost, trace)
    # Sensitivity of the data rows (all but the prior rows) to each free coordinate.
    n_prior = u0.shape[0]
    sens = S @ jnp.sqrt(jnp.sum(J[:-n_prior] ** 2, axis=0))
    return u0 + S @ v, trace, S @ (J.T @ r), it, sens


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
    from ._staged import CODES

    code_name = {v: k for k, v in CODES.items()}
    names = [sp.name for sp in space.specs]
    f = jax.tree_util.tree_map(np.asarray, fit)
    counts = targets.count()
    x_prev = np.asarray(_stack(space, base))
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
    from ._staged import cell_weights, fit_staged, staged_problem

    settings = _Settings.of(cfg)
    dtype = params.dtype
    # Padded to the seed's stage count with empty (skipped, free) stages: configs with
    # fewer stages share the compiled fit.
    problem = staged_problem(space, stages, cfg.n_starts, key, dtype=dtype,
                             optimizer=cfg.optimizer, pad_to=len(SEED_STAGES))
    if progress:
        progress(f"staged fit: {len(stages)} stage(s) in one compiled call "
                 f"({', '.join(st.name for st in stages)})")
    fit = fit_staged(params, problem, forcing, targets, cell_weights(targets, dtype),
                     jnp.asarray(cfg.prior_weight, dtype), space, settings, cfg.gtol,
                     cfg.ftol)
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
