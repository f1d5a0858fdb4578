"""Global start search and the basin stage: free sets that follow the data.

A local fit from the prior centre cannot leave the basin it starts in: where the prior
centre holds no vegetated state (the ChihuahuanDesert priors below ~530 mm), the cover
misfit is flat in every staged parameter and Levenberg-Marquardt stays on bare soil.  Before
the seed's stages the calibration therefore (``docs/methods.md``, "Global start search"):

1. **screens** the prior (:func:`screen`): ``n`` Latin-hypercube draws of the *basin set*
   (``BASIN_PARAMS`` - the water-balance and stress parameters that decide whether cover
   can exist at a rainfall - plus the cover growth parameters ``r_V``, ``K_V`` when cover is
   observed, plus the config's ``free`` names; ``V0``/``SOM0`` where the initial-state rule
   fits them), each from its prior truncated at ``SCREEN_SD`` standard deviations on the
   prior's scale (inside the physical bounds), every other parameter at its incoming
   value; each draw scored by the fit's own objective (every observed variable, the event
   constraints, the prior penalty of the screened parameters) with one batched solve (the
   CPU kernel: one pass for all draws);
2. ranks the data's **sensitivity** to every candidate parameter at the best draw
   (:func:`sensitivities`: the norm of the data rows' derivative per prior standard
   deviation, by forward mode through the solve);
3. runs a **basin stage** first: free = the screened set plus the candidates outside the
   seed's stage sets whose sensitivity is at least ``SENSITIVITY_SHARE`` of the largest
   (:func:`basin_free_set`, at most the optimiser's width), fitted on every observed
   variable from the incoming vector (the prior centre) and the best *distinct* draws;
4. then the seed's stages, warm-started from there; the seed's stages alone run beside
   this branch in the same compiled call (``fit.fit_compared``), and the branch with the
   lower Akaike score (the comparison objective plus the number of fitted parameters) is
   kept (``fit._stages``): the basin stage's parameters are freed only when the data pay
   for them.

The basin stage always counts the priors of its free parameters (weight at least 1, also in
a plain least-squares fit).  ``screen = 0`` and no ``free`` names: none of this (the seed's
stages alone).  ``pin`` removes parameters from every free set and from the screen.
"""

from __future__ import annotations

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._traces import cached
from ..model import PARAM_NAMES, ParamSpace
from ..solve import solver_kernels
from ._config import Stage
from ._objective import TARGET_VARIABLES, Objective

__all__ = ["BASIN_PARAMS", "BASIN_CANDIDATES", "SCREEN_SD", "SENSITIVITY_SHARE",
           "ScreenResult", "screen_draws", "screen", "sensitivities", "basin_free_set",
           "basin_stage", "BASIN_STAGE"]

# The water-balance and stress parameters that decide whether cover can exist at a
# rainfall (the "at least" set): always free in the basin stage.
BASIN_PARAMS = ("ET_p", "e_s", "theta_star", "m_D", "V0", "SOM0")
# What a large data sensitivity can add to the basin stage: the rest of the water balance
# and the stress thresholds, and the cover feedbacks.
BASIN_CANDIDATES = BASIN_PARAMS + ("theta_fc", "theta_wp", "Z_r", "k_L", "c_L", "c_R",
                                   "gamma", "k_I", "s_plant", "SOM_star", "lambda1",
                                   "lambda2", "eta1", "r_V", "K_V")
SCREEN_SD = 3.0  # the screen draws from each prior truncated at this many sd
SENSITIVITY_SHARE = 0.1  # a candidate joins the basin stage at this share of the largest
MIN_DISTANCE = 0.25  # distinct starts: RMS distance in prior sd of the screened parameters
BASIN_STAGE = "basin"


@dataclasses.dataclass(frozen=True)
class ScreenResult:
    """A global start search: the draws' losses and the distinct best ones."""

    names: tuple[str, ...]  # the screened parameters
    losses: np.ndarray  # (n,) objective of every draw (NaN: the solve failed)
    starts: np.ndarray  # (m, n_params) unconstrained vectors of the chosen distinct draws
    start_losses: np.ndarray  # (m,)
    incoming_loss: float  # the objective at the incoming vector (the prior-centre start)
    seconds: float
    seed: int
    sampling: str = (f"Latin hypercube on each screened parameter's prior, truncated at "
                     f"{SCREEN_SD:g} sd on the prior's scale, inside the physical bounds")

    @property
    def n_draws(self) -> int:
        return int(self.losses.size)

    @property
    def n_finite(self) -> int:
        return int(np.sum(np.isfinite(self.losses)))

    def summary(self) -> dict:
        fin = self.losses[np.isfinite(self.losses)]
        return {"n_draws": self.n_draws, "n_finite": self.n_finite, "names": list(self.names),
                "sampling": self.sampling, "seed": self.seed,
                "best_loss": float(fin.min()) if fin.size else None,
                "median_loss": float(np.median(fin)) if fin.size else None,
                "incoming_loss": self.incoming_loss,
                "n_starts_from_screen": int(self.starts.shape[0]),
                "start_losses": [float(x) for x in self.start_losses],
                "seconds": round(self.seconds, 3)}


def screen_draws(space: ParamSpace, names, n: int, seed: int, base_x: np.ndarray,
                 k_sd: float = SCREEN_SD) -> tuple[np.ndarray, np.ndarray]:
    """``(u, z)``: ``n`` unconstrained full vectors (``(n, n_params)``; every parameter not in
    ``names`` at ``base_x``, physical) and the draws' prior-standardised coordinates
    ``z`` (``(n, len(names))``)."""
    from scipy.special import ndtr, ndtri  # (scipy.stats would cost ~0.7 s to import)

    k = len(names)
    rng = np.random.default_rng([int(seed), 21])
    # Latin hypercube: in every dimension one point per stratum of width 1/n, strata
    # shuffled independently, uniform inside the stratum.
    strata = np.stack([rng.permutation(n) for _ in range(k)], axis=1)
    unit = (strata + rng.random((n, k))) / n
    lo, hi = ndtr(-k_sd), ndtr(k_sd)
    z = ndtri(lo + unit * (hi - lo))
    x = np.repeat(np.asarray(base_x, float)[None], n, axis=0)
    mean, sd, _, log = space.prior_on_scale(names)
    for j, name in enumerate(names):
        sp = space.spec(name)
        s = mean[j] + sd[j] * z[:, j]
        v = np.exp(s) if log[j] else s
        edge = 1e-3 * (sp.bound_upper - sp.bound_lower)
        x[:, PARAM_NAMES.index(name)] = np.clip(v, sp.bound_lower + edge,
                                                sp.bound_upper - edge)
    return space.host_to_unconstrained(x), z


@eqx.filter_jit
def _losses(objective: Objective, U):
    return jax.vmap(objective.loss)(U)


def _distinct(order, z, m: int, min_distance: float = MIN_DISTANCE) -> list[int]:
    """Up to ``m`` indices in ``order`` (best first) whose RMS distance in ``z`` to every
    one already chosen is at least ``min_distance``."""
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= m:  # (m = 0, one start per stage: no draw is asked for)
            break
        if all(np.sqrt(np.mean((z[i] - z[j]) ** 2)) >= min_distance for j in chosen):
            chosen.append(int(i))
    return chosen


def screen(objective: Objective, names, n: int, m: int, seed: int,
           chunk: int = 16_384) -> ScreenResult:
    """Score ``n`` prior draws of ``names`` with ``objective`` (whose mask should hold
    ``names``) and keep the ``m`` best distinct ones (:func:`_distinct`).  The draws are
    scored in batches of ``min(n, chunk)`` (the last one padded: one compiled shape).

    ``objective``: a :class:`Objective`, or any module with its ``space``, ``base`` and
    ``loss(u)`` (a function of the unconstrained vector of every parameter)."""
    t0 = time.perf_counter()
    space = objective.space
    base_x = np.asarray(space.stack(objective.base))
    U, z = screen_draws(space, names, n, seed, base_x)
    dtype = base_x.dtype
    u_in = space.host_to_unconstrained(base_x)
    U = np.concatenate([u_in[None], U])  # row 0: the incoming vector (its loss, for free)
    n += 1
    size = min(n, chunk)
    parts = []
    kernels = solver_kernels(getattr(objective, "solver", None), dtype)
    for i in range(0, n, size):
        block = U[i:i + size]
        if block.shape[0] < size:
            block = np.concatenate([block, np.repeat(block[:1], size - block.shape[0], 0)])
        parts.append(np.asarray(cached(_losses, "screen_losses", objective,
                                       jnp.asarray(block, dtype), kernels=kernels)))
    losses = np.concatenate(parts)[:n]
    incoming, losses, U = float(losses[0]), losses[1:], U[1:]
    losses = np.where(np.isfinite(losses), losses, np.nan)
    order = np.argsort(np.where(np.isnan(losses), np.inf, losses))
    order = order[np.isfinite(losses[order])]
    pick = _distinct(order, z, m)
    return ScreenResult(tuple(names), losses, U[pick], losses[pick], incoming,
                        time.perf_counter() - t0, int(seed))


@eqx.filter_jit
def _data_jacobian(objective: Objective, x0, sd, log, n_data: int):
    """Derivatives of the data rows with respect to each parameter's prior-standardised
    coordinate at ``x0`` (``(n_data, n_params)``)."""
    space = objective.space

    def rows(z):
        s = jnp.where(log, jnp.log(jnp.where(log, x0, 1.0)), x0) + sd * z
        x = jnp.where(log, jnp.exp(jnp.where(log, s, 0.0)), s)
        return objective.residuals(space.vector_to_unconstrained(x))[:n_data]

    return jax.jacfwd(rows)(jnp.zeros_like(x0))


def sensitivities(objective: Objective, u, events_size: int) -> dict[str, float]:
    """The data's sensitivity to every parameter at ``u``: the norm of the derivative of
    the data and event rows per prior standard deviation (on the prior's scale; the
    objective's mask is ignored: every parameter moves)."""
    space = objective.space
    obj = dataclasses.replace(objective, mask=jnp.ones((len(PARAM_NAMES),), bool),
                              solver=objective.solver.for_jacobian())
    dtype = space.stack(objective.base).dtype
    x0 = jnp.asarray(space.host_to_constrained(np.asarray(u)), dtype)
    sd = jnp.asarray(np.array([s.prior_sd for s in space.specs]), dtype)
    log = jnp.asarray(np.array([s.scale == "log" for s in space.specs]))
    n_data = len(TARGET_VARIABLES) * objective.forcing.n_years + events_size
    J = np.asarray(cached(_data_jacobian, "data_jacobian", obj, x0, sd, log, n_data,
                          kernels=solver_kernels(obj.solver, x0.dtype)))
    norms = np.sqrt(np.sum(np.where(np.isfinite(J), J, 0.0) ** 2, axis=0))
    return {n: float(v) for n, v in zip(PARAM_NAMES, norms)}


def basin_free_set(sens: dict[str, float], screened, seed_names, width: int,
                   pin=()) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The basin stage's free set and the names the sensitivity rule added: the screened
    parameters, then the candidates (``BASIN_CANDIDATES``, not pinned) outside the seed's
    stage sets with sensitivity at least ``SENSITIVITY_SHARE`` of the largest sensitivity
    of any candidate or staged parameter, largest first, up to ``width`` in all."""
    free = list(screened)
    ref = max([sens[n] for n in set(BASIN_CANDIDATES) | set(seed_names)] + [0.0])
    extra = sorted((n for n in BASIN_CANDIDATES
                    if n not in free and n not in seed_names and n not in pin
                    and sens[n] >= SENSITIVITY_SHARE * ref and sens[n] > 0),
                   key=lambda n: -sens[n])
    added = tuple(extra[:max(width - len(free), 0)])
    return tuple(free[:width]) + added, added


def basin_stage(free, variables, events: bool, added=()) -> Stage:
    """The stage that runs first: ``free`` on every observed variable."""
    why = (f"; added by data sensitivity: {', '.join(added)}" if added else "")
    return Stage(BASIN_STAGE, tuple(free), tuple(variables), events=events,
                 min_prior_weight=1.0,
                 description="(0) basin stage: the water-balance and stress parameters that "
                 "decide the basin, and the cover growth, on every observed variable, from "
                 "the prior centre and the best distinct draws of the global start search; "
                 "the priors of its free parameters always count (weight at least 1)"
                 + why)
