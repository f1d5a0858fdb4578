"""Block bootstrap over years: resampling, batched staged refits, percentile and BCa intervals.

Resampling (``resample_counts``): a replicate is a count per training year (how often the
year enters the resample; counts sum to the number of training years).  Two schemes:

* ``moving`` (Kuensch 1989): ``ceil(n / L)`` blocks of ``L`` consecutive years, each start
  uniform on ``0 .. n - L``, concatenated and cut to ``n`` years;
* ``stationary`` (Politis & Romano 1994): blocks of geometric length (mean ``L``), wrapping
  circularly: year ``t`` starts a new block (uniform start) with probability ``1 / L``,
  else follows year ``t - 1``.

Block length ``L``: given, or ``auto`` (:func:`auto_block_length`): the Politis & White
(2004) automatic choice, with the correction of Patton, Politis & White (2009), on the
standardised residual series of each observed variable of the point fit (training years);
the longest over the variables (dependence in any variable is kept), at least 1 and at
most ``n / 2``; ``n^(1/3)`` when no variable has ``MIN_SERIES`` observed training years.

Each replicate's counts become per-cell weights (``cell_w`` of ``fit_staged``: the year's
count in every variable, 0 outside the training years) and a full staged refit
(``fit_staged``, one start: the point estimate) runs for every replicate, replicates
batched with ``jax.vmap`` in chunks through ``map_chunks`` (on-disk store, ``--resume``)
and sharded over ``jax.devices()`` when there are several.  Per replicate: every
calibrated parameter, the derived quantities (``DERIVED``) and the simulated series;
status (``REPLICATE_STATUS``) from the stage codes.  Replicates whose status is not ok are
counted and excluded from every interval, never averaged in.

Intervals (``percentile_interval``, ``bca_interval``): percentile (2.5/97.5 % quantiles,
linear interpolation as ``numpy.quantile``) and BCa (Efron 1987): bias correction ``z0``
from the share of replicates below the point estimate, acceleration ``a`` from a
delete-one-block jackknife (Kuensch 1989: the ``n - L + 1`` refits each without one block
of ``L`` consecutive training years; ``L = 1``: delete-one), batched like the replicates.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import ndtr, ndtri

from ..fit import (
    AT_BOUND_U,
    STAGE_CODES,
    TARGET_VARIABLES,
    CalibrationConfig,
    Targets,
    data_residuals,
    fit_staged,
    simulated,
    staged_problem,
)
from ..model import Forcing, Params, ParamSpace, soc_stock
from ..solve import AbstractSolver, simulate
from ..status import MESSAGES, code
from ._evaluate import ChunkStore, Evaluation, map_chunks, no_planting
from ._qoi import _masked_mean

__all__ = ["SCHEMES", "REPLICATE_STATUS", "DERIVED", "moving_block_indices",
           "stationary_indices", "resample_counts", "jackknife_counts", "year_weights",
           "politis_white", "auto_block_length", "percentile_interval", "bca_interval",
           "derived_fn", "refit_fn", "replicate_status", "BootstrapResult", "bootstrap_study",
           "bootstrap_intervals"]

SCHEMES = ("moving", "stationary")
# Per-replicate status (RESULTS codes): successful is used; every other code is counted and
# excluded.
REPLICATE_STATUS = {c: MESSAGES[c] for c in (code(n) for n in (
    "successful", "not_converged", "no_step", "newly_skipped", "failed", "nonfinite"))}
MIN_SERIES = 8  # observed training years a residual series needs for the automatic rule
LEVEL = 0.95


# --- resampling ------------------------------------------------------------------------------
def moving_block_indices(key, n: int, L: int):
    """Year indices of one moving-block resample: ``ceil(n / L)`` blocks of ``L``
    consecutive years (starts uniform on ``0 .. n - L``), cut to ``n``."""
    nb = -(-n // L)
    starts = jax.random.randint(key, (nb,), 0, n - L + 1)
    return (starts[:, None] + jnp.arange(L)[None, :]).reshape(-1)[:n]


def stationary_indices(key, n: int, L: float):
    """Year indices of one stationary-bootstrap resample (Politis & Romano 1994): a new
    block (uniform start) with probability ``1 / L`` at each year (always at the first),
    else the next year circularly; block lengths are geometric with mean ``L``."""
    k1, k2 = jax.random.split(key)
    starts = jax.random.randint(k1, (n,), 0, n)
    new = (jax.random.uniform(k2, (n,)) < 1.0 / L).at[0].set(True)
    t = jnp.arange(n)
    first = jax.lax.cummax(jnp.where(new, t, 0))  # position where the current block began
    return (starts[first] + t - first) % n


def resample_counts(key, n: int, B: int, L: int, scheme: str = "moving"):
    """``(B, n)`` int32 counts: how often each of ``n`` years enters each of ``B``
    resamples (rows sum to ``n``)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; use one of {SCHEMES}")
    if not 1 <= L <= n:
        raise ValueError(f"block length {L} must be between 1 and the {n} training years")
    draw = moving_block_indices if scheme == "moving" else stationary_indices
    idx = jax.vmap(lambda k: draw(k, n, L))(jax.random.split(key, B))
    return jax.vmap(lambda i: jnp.zeros(n, jnp.int32).at[i].add(1))(idx)


def jackknife_counts(n: int, L: int) -> np.ndarray:
    """``(n - L + 1, n)`` delete-one-block jackknife: ones, with the block of ``L``
    consecutive years starting at row ``i`` set to 0."""
    t = np.arange(n)
    i = np.arange(n - L + 1)[:, None]
    return np.where((t >= i) & (t < i + L), 0, 1).astype(np.int32)


def year_weights(counts, train_idx, n_years: int, n_vars: int = len(TARGET_VARIABLES)):
    """Per-cell weights ``(..., n_vars * n_years)`` (variable-major, as ``data_residuals``)
    from per-training-year counts ``(..., n_train)``; 0 outside the training years."""
    counts = jnp.asarray(counts)
    w = jnp.zeros(counts.shape[:-1] + (n_years,), jnp.float64 if jax.config.read("jax_enable_x64")
                  else jnp.float32).at[..., jnp.asarray(train_idx)].set(counts)
    return jnp.tile(w, (1,) * (w.ndim - 1) + (n_vars,))


# --- block length ----------------------------------------------------------------------------
def politis_white(x) -> tuple[float, float]:
    """Optimal block lengths ``(stationary, circular/moving)`` of series ``x`` (Politis &
    White 2004 with the correction of Patton, Politis & White 2009): flat-top lag window
    with bandwidth ``2 m``, ``m`` the first lag after which ``K_n = max(5, log10 n)``
    autocorrelations are below ``2 sqrt(log10(n) / n)``; capped at ``min(3 sqrt n, n / 3)``.
    """
    x = np.asarray(x, float)
    n = x.size
    e = x - x.mean()
    b_max = math.ceil(min(3 * math.sqrt(n), n / 3))
    kn = max(5, int(math.log10(n)))
    m_max = min(math.ceil(math.sqrt(n)) + kn, n - 2)
    cv = 2 * math.sqrt(math.log10(n) / n)
    acv = np.zeros(m_max + 1)
    rho = np.zeros(m_max + 1)
    opt_m = None
    for i in range(m_max + 1):
        cross = float(e[i:] @ e[: n - i])
        acv[i] = cross / n
        v1, v2 = float(e[i:] @ e[i:]), float(e[: n - i] @ e[: n - i])
        rho[i] = abs(cross) / math.sqrt(v1 * v2) if v1 > 0 and v2 > 0 else 0.0
        if i >= kn and opt_m is None and np.all(rho[i - kn + 1: i + 1] < cv):
            opt_m = i - kn
    m = min(2 * max(opt_m, 1), m_max) if opt_m is not None else m_max
    g, lr = 0.0, acv[0]
    for k in range(1, m + 1):
        lam = 1.0 if k / m <= 0.5 else 2.0 * (1.0 - k / m)
        g += 2 * lam * k * acv[k]
        lr += 2 * lam * acv[k]
    if lr <= 0 or g == 0:
        return 1.0, 1.0
    b_sb = (2 * g**2 / (2 * lr**2)) ** (1 / 3) * n ** (1 / 3)
    b_cb = (2 * g**2 / (4 / 3 * lr**2)) ** (1 / 3) * n ** (1 / 3)
    return min(b_sb, b_max), min(b_cb, b_max)


def auto_block_length(series: dict[str, np.ndarray], n: int, scheme: str) -> tuple[int, dict]:
    """The automatic block length over ``series`` (variable -> residual series of its
    observed training years); returns ``(L, details)``."""
    per = {}
    for var, x in series.items():
        x = np.asarray(x, float)
        if x.size >= MIN_SERIES and np.std(x) > 0:
            sb, cb = politis_white(x)
            per[var] = float(sb if scheme == "stationary" else cb)
    if per:
        raw = max(per.values())
        rule = ("Politis-White (2004, corrected 2009) on each observed variable's "
                "standardised residual series of the point fit; the longest")
    else:
        raw = n ** (1 / 3)
        rule = (f"n^(1/3) (no variable has {MIN_SERIES} observed training years for the "
                "Politis-White rule)")
    L = int(min(max(1, math.ceil(raw)), max(1, n // 2)))
    return L, {"rule": rule, "raw": float(raw), "per_variable": per,
               "clipped_to": [1, max(1, n // 2)]}


# --- intervals -------------------------------------------------------------------------------
def _masked_quantile(x, ok, q):
    return jnp.nanquantile(jnp.where(ok, x, jnp.nan), q)


def percentile_interval(reps, ok, level: float = LEVEL):
    """``(lo, hi)``: the ``(1 -+ level) / 2`` quantiles of the used replicates (``ok``)."""
    a = (1.0 - level) / 2
    return _masked_quantile(reps, ok, a), _masked_quantile(reps, ok, 1.0 - a)


def bca_interval(theta_hat, reps, ok, jack, jack_ok, level: float = LEVEL):
    """BCa interval (Efron 1987): ``(lo, hi, z0, a)``.

    ``z0 = Phi^-1(#{theta_b < theta_hat} + #{theta_b = theta_hat} / 2) / B)`` over the used
    replicates; ``a = sum d^3 / (6 (sum d^2)^(3/2))``, ``d = mean(jack) - jack`` over the
    used jackknife values; the interval is the replicates' quantiles at
    ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` for ``z = Phi^-1((1 -+ level) / 2)``.  NaN
    where z0 is infinite (every replicate on one side)."""
    okf = ok.astype(reps.dtype)
    nb = jnp.sum(okf)
    below = jnp.sum(jnp.where(ok, (reps < theta_hat) + 0.5 * (reps == theta_hat), 0.0))
    z0 = ndtri(below / nb)
    jw = jack_ok.astype(reps.dtype)
    jm = jnp.sum(jnp.where(jack_ok, jack, 0.0)) / jnp.sum(jw)
    d = jnp.where(jack_ok, jm - jack, 0.0)
    s2 = jnp.sum(d**2)
    a = jnp.where(s2 > 0, jnp.sum(d**3) / (6.0 * jnp.where(s2 > 0, s2, 1.0) ** 1.5), 0.0)
    za = ndtri(jnp.asarray([(1.0 - level) / 2, (1.0 + level) / 2], reps.dtype))
    alpha = ndtr(z0 + (z0 + za) / (1.0 - a * (z0 + za)))
    lo = _masked_quantile(reps, ok, alpha[0])
    hi = _masked_quantile(reps, ok, alpha[1])
    bad = ~jnp.isfinite(z0)
    return jnp.where(bad, jnp.nan, lo), jnp.where(bad, jnp.nan, hi), z0, a


# --- derived quantities and the batched refit ------------------------------------------------
def _soc_rate_0_40(sim, params, ps):
    """Mean annual 0-40 cm SOC gain over the planting years, t C/ha/yr (the definition of
    ``regional_magnitudes``: layer SOM x bulk density x depth / SOM_PER_C, mid-year to
    mid-year)."""
    C = soc_stock(sim.SOM_layers, params.rho_b)  # kg C m^-2
    return 10.0 * _masked_mean(jnp.diff(C), sim.years[1:] >= ps)


# name -> (units, description); computed when the planting start lies inside the run.
DERIVED = {
    "runoff_decrease": ("mm/yr", "mean runoff before planting minus from planting + 3 on "
                        "(regional_magnitudes; x the regional area for m3/yr)"),
    "water_yield_decrease": ("mm/yr", "mean WY(no planting) - WY(planting) over the "
                             "planting years"),
    "soc_sequestration": ("t C/ha/yr", "mean annual 0-40 cm SOC gain over the planting "
                          "years (regional_magnitudes; x the GTGP area for Tg C/yr)"),
}


def _uses_planting(forcing: Forcing, planting_start) -> bool:
    years = np.asarray(forcing.years)
    return planting_start is not None and years[0] < planting_start and \
        planting_start + 3 <= years[-1]


def derived_fn(forcing: Forcing, solver: AbstractSolver, planting_start: int | None):
    """``params -> (derived (k,), series (n_vars * n_years,))``: the quantities of
    ``DERIVED`` (none without a planting start inside the run) and every target
    variable's simulated series, from solves with ``solver`` (the fit's)."""
    use = _uses_planting(forcing, planting_start)

    def fn(p: Params):
        sim = simulate(p, forcing, solver=solver)
        series = jnp.concatenate([simulated(sim, v) for v in TARGET_VARIABLES])
        if not use:
            return jnp.zeros((0,), series.dtype), series
        s_off = simulate(p, no_planting(forcing), solver=solver)
        ps = planting_start
        assert ps is not None
        rd = _masked_mean(sim.runoff, sim.years < ps) - _masked_mean(sim.runoff,
                                                                       sim.years >= ps + 3)
        wy = _masked_mean(s_off.water_yield - sim.water_yield, sim.years >= ps)
        return jnp.stack([rd, wy, _soc_rate_0_40(sim, p, ps)]), series

    return fn, (list(DERIVED) if use else [])


@eqx.filter_jit
def _refit_batch(W, base, problem, forcing, targets, prior_w, space, settings, static):
    """The batched refits (one compiled function per shape and ``static``; a second study
    with the same settings reuses it)."""
    names, planting_start, devices = static
    der, _ = derived_fn(forcing, settings.solver, planting_start)

    def local(W, base, problem, forcing, targets, prior_w):
        u0 = space.vector_to_unconstrained(space.stack(base))
        ever = jnp.any(problem.masks, axis=0)

        def one(w):
            res = fit_staged(base, problem, forcing, targets, w, prior_w, space, settings)
            interior = ever & (jnp.abs(res.u) < AT_BOUND_U) & (jnp.abs(u0) < AT_BOUND_U)
            stuck = jnp.any(interior) & ~jnp.any(interior & (res.u != u0))
            vals = jnp.stack([getattr(res.params, n) for n in names])
            d, series = der(res.params)
            c = res.status
            finite = jnp.all(jnp.isfinite(vals)) & jnp.all(jnp.isfinite(d)) & \
                jnp.all(jnp.isfinite(series))
            st = jnp.where(
                jnp.any(c == STAGE_CODES["failed"]), code("failed"),
                jnp.where(~finite, code("nonfinite"), jnp.where(
                    jnp.any(c == STAGE_CODES["not_converged"]), code("not_converged"),
                    jnp.where(stuck, code("no_step"), code("successful")))))
            return (jnp.concatenate([vals, c.astype(vals.dtype), d, series]),
                    st.astype(jnp.int32))

        return jax.vmap(one)(W)

    if devices is not None:
        from jax.sharding import Mesh, PartitionSpec

        mesh = Mesh(np.asarray(devices), ("batch",))
        rep, bat = PartitionSpec(), PartitionSpec("batch")
        local = jax.shard_map(local, mesh=mesh, in_specs=(bat, rep, rep, rep, rep, rep),
                              out_specs=(bat, bat), check_vma=False)
    return local(W, base, problem, forcing, targets, prior_w)


def refit_fn(space: ParamSpace, base: Params, forcing: Forcing, targets: Targets,
             cfg: CalibrationConfig, names, planting_start=None, devices=None):
    """``cell_w (c, cells) -> (values (c, k), status (c,))``: a staged refit per row
    (``fit_staged`` from ``base``, one start), then ``names``' values, the stage codes, the
    derived quantities and the simulated series (column names returned second).  With
    several ``devices`` the rows are split over them (``shard_map``; ``c`` must be a
    multiple of their number).  Status here (``RESULTS``): failed, nonfinite,
    not_converged, no_step (stuck at the warm start) or successful; newly_skipped (a stage
    skipped that ran in the point fit) needs the point refit's codes and is set by
    :func:`replicate_status`."""
    problem = staged_problem(space, cfg.stages, 1, jax.random.PRNGKey(cfg.seed),
                             dtype=base.dtype)
    settings = cfg.fit_settings()
    prior_w = jnp.asarray(cfg.prior_weight, base.dtype)
    devices = tuple(devices or ())
    ps = planting_start if _uses_planting(forcing, planting_start) else None
    static = (tuple(names), ps, devices if len(devices) > 1 else None)
    der_names = list(DERIVED) if ps is not None else []
    columns = (list(names) + [f"status:{s.name}" for s in cfg.stages] + der_names
               + [f"series:{v}:{int(y)}" for v in TARGET_VARIABLES for y in forcing.years])

    def fn(W):
        return _refit_batch(W, base, problem, forcing, targets, prior_w, space, settings,
                            static)

    return fn, columns


# --- the study -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """A block-bootstrap study (numpy; intervals per quantity in ``intervals``)."""

    names: list[str]            # calibrated parameters
    derived: list[str]          # derived quantities (DERIVED keys) computed
    point: dict[str, float]     # point estimate of every parameter and derived quantity
    replicates: np.ndarray      # (B, k) every parameter and derived quantity
    status: np.ndarray          # (B,) REPLICATE_STATUS codes
    stage_codes: np.ndarray     # (B, stages)
    jackknife: np.ndarray       # (J, k)
    jackknife_status: np.ndarray
    series: np.ndarray          # (B, n_vars, n_years) simulated target variables
    point_series: np.ndarray    # (n_vars, n_years)
    years: np.ndarray
    intervals: dict[str, dict]  # name -> percentile / BCa
    B: int
    block_length: int
    block_rule: dict
    scheme: str
    seed: int
    counts: np.ndarray          # (B, n_train) year counts
    train_years: np.ndarray
    point_refit_codes: list[int]
    seconds: float
    chunks_resumed: int = 0
    exclude_not_converged: bool = True

    @property
    def used(self) -> np.ndarray:
        return self.status == 0

    @property
    def status_counts(self) -> dict[int, int]:
        return {int(s): int(c) for s, c in zip(*np.unique(self.status, return_counts=True))}

    def band(self, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` of each simulated series over the used replicates, (n_vars, n_years)."""
        a = (1.0 - level) / 2
        s = self.series[self.used]
        if s.shape[0] == 0:
            nan = np.full(self.point_series.shape, np.nan)
            return nan, nan
        return np.quantile(s, a, axis=0), np.quantile(s, 1.0 - a, axis=0)


@jax.jit
def _intervals_all(theta_hat, reps, ok, jack, jack_ok):
    """Percentile and BCa intervals of every column (vmapped over quantities)."""
    def one(th, r, j):
        lo, hi = percentile_interval(r, ok)
        blo, bhi, z0, a = bca_interval(th, r, ok, j, jack_ok)
        return lo, hi, blo, bhi, z0, a

    return jax.vmap(one, in_axes=(0, 1, 1))(theta_hat, reps, jack)


def bootstrap_intervals(point: np.ndarray, reps: np.ndarray, ok: np.ndarray,
                        jack: np.ndarray, jack_ok: np.ndarray, names) -> dict[str, dict]:
    """Per quantity: the percentile and BCa 95% intervals, ``z0``, ``a``, the replicate
    standard deviation, the number of replicates used and whether the point estimate lies
    inside the percentile interval (False: the replicates sit on one side of it - a
    warning sign, e.g. a refit that can only move one way from a bound)."""
    out = {}
    n_used = int(np.sum(ok))
    if n_used == 0:
        nan = float("nan")
        return {n: {"point_inside_percentile": False, "percentile": [nan, nan],
                    "BCa": [nan, nan], "z0": nan,
                    "acceleration": nan, "sd": nan, "n_used": 0} for n in names}
    res = [np.asarray(x) for x in _intervals_all(
        jnp.asarray(point), jnp.asarray(reps), jnp.asarray(ok), jnp.asarray(jack),
        jnp.asarray(jack_ok))]
    sd = np.std(reps[ok], axis=0, ddof=1) if n_used > 1 else np.full(len(names), np.nan)
    for i, n in enumerate(names):
        out[n] = {"point_inside_percentile": bool(res[0][i] <= point[i] <= res[1][i]),
                  "percentile": [float(res[0][i]), float(res[1][i])],
                  "BCa": [float(res[2][i]), float(res[3][i])], "z0": float(res[4][i]),
                  "acceleration": float(res[5][i]), "sd": float(sd[i]), "n_used": n_used}
    return out


def residual_series(space, params, forcing, targets: Targets, cfg, train_idx) -> dict:
    """Standardised residuals of the point fit per fitted variable (a variable of some
    stage; training years with an observation, in year order): the input of the automatic
    block length."""
    sim = simulate(params, forcing, solver=cfg.make_solver())
    r = np.asarray(data_residuals(sim, targets, TARGET_VARIABLES)).reshape(
        len(TARGET_VARIABLES), -1)
    out = {}
    fitted = {v for st in cfg.stages for v in st.variables}
    for i, v in enumerate(TARGET_VARIABLES):
        if v not in fitted:
            continue
        m = np.asarray(targets.masks[v])[train_idx]
        if m.any():
            out[v] = r[i][train_idx][m]
    return out


def replicate_status(status, codes, point_codes, exclude_not_converged: bool = True):
    """Final per-replicate status (``REPLICATE_STATUS``) from the refit's status and the
    stage codes: newly_skipped where a stage that ran in the point refit was skipped
    (unless failed or non-finite); with ``exclude_not_converged`` False, not-converged
    replicates count as used (successful)."""
    status = np.asarray(status, np.int32)
    codes = np.asarray(codes)
    newly = np.any((codes == STAGE_CODES["skipped"])
                   & (np.asarray(point_codes)[None, :] != STAGE_CODES["skipped"]), axis=1)
    kept = np.isin(status, [code("successful"), code("not_converged"), code("no_step")])
    st = np.where(newly & kept, code("newly_skipped"), status).astype(np.int32)
    if not exclude_not_converged:
        st = np.where(st == code("not_converged"), code("successful"), st).astype(np.int32)
    return st


def bootstrap_study(
    space: ParamSpace,
    params: Params,
    forcing: Forcing,
    targets: Targets,
    cfg: CalibrationConfig,
    names,
    *,
    train: np.ndarray | None = None,
    B: int = 1000,
    block_length: int | str = "auto",
    scheme: str = "moving",
    seed: int = 0,
    planting_start: int | None = None,
    chunk: int = 128,
    devices=None,
    store_dir=None,
    store_key: dict | None = None,
    resume: bool = False,
    progress: bool | Callable[[str], None] = False,
    exclude_not_converged: bool = True,
) -> BootstrapResult:
    """Block bootstrap of a staged fit over its training years.

    **Arguments:**

    - `params`: the point estimate (every replicate's refit starts there);
    - `targets`: the training targets (cells outside the training years masked);
    - `cfg`: the calibration config (stages, solver, optimiser settings);
    - `names`: the calibrated parameters to report;
    - `train`: boolean per forcing year (default: years with any observed cell);
    - `B`, `block_length` (int or ``"auto"``), `scheme` (``SCHEMES``), `seed`;
    - `planting_start`: for the derived quantities (``DERIVED``);
    - `chunk`: refits per batched call; `devices`: shard each chunk over these (default
      ``jax.devices()``); `store_dir`, `store_key`, `resume`, `progress`: ``map_chunks``;
    - `exclude_not_converged`: replicates with a non-converged stage are excluded (and
      counted); False keeps them.

    **Returns:** :class:`BootstrapResult`.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown bootstrap scheme {scheme!r}; use one of {SCHEMES}")
    if B < 2:
        raise ValueError(f"B = {B}: the bootstrap needs at least 2 replicates")
    years = np.asarray(forcing.years)
    ny = len(years)
    if train is None:
        train = np.zeros(ny, bool)
        for v in TARGET_VARIABLES:
            train |= np.asarray(targets.masks[v])
    train_idx = np.flatnonzero(np.asarray(train, bool))
    n = train_idx.size
    if n < 3:
        raise ValueError(f"{n} training years: the block bootstrap needs at least 3")
    if block_length == "auto":
        L, rule = auto_block_length(residual_series(space, params, forcing, targets, cfg,
                                                    train_idx), n, scheme)
    else:
        L = int(block_length)
        if not 1 <= L <= n:
            raise ValueError(f"block length {L} must be between 1 and the {n} training years")
        rule = {"rule": "given", "raw": float(L)}
    counts = np.asarray(resample_counts(jax.random.PRNGKey(seed), n, B, L, scheme))
    jack = jackknife_counts(n, L)
    all_counts = np.concatenate([np.ones((1, n), np.int32), counts, jack])
    W = np.asarray(year_weights(all_counts, train_idx, ny))
    devices = tuple(jax.devices() if devices is None else devices)
    nd = len(devices)
    # Rows padded to a multiple of 32 (of the devices): studies whose jackknife lengths
    # differ by a few rows (the automatic block length) share one compiled shape.
    rows = -(-W.shape[0] // 32) * 32
    chunk = max(nd, -(-min(chunk, rows) // nd) * nd)
    dt = params.dtype
    t0 = time.perf_counter()

    # Row 0: the point refit (all weights 1): its stage codes judge the replicates'.
    fn, _ = refit_fn(space, params, forcing, targets, cfg, names, planting_start, devices)
    nn, nstg = len(names), len(cfg.stages)
    der, der_names = derived_fn(forcing, cfg.make_solver(), planting_start)

    def make(lo, hi):
        w = W[lo:hi]
        if hi - lo < chunk:  # pad: every call has the compiled shape
            w = np.concatenate([w, np.repeat(w[:1], chunk - (hi - lo), axis=0)])
        return jnp.asarray(w, dt), hi - lo

    def run(inp):
        w, m = inp
        v, s = fn(w)
        return np.asarray(v)[:m], np.asarray(s)[:m]

    store = None
    if store_dir is not None:
        key = dict(store_key or {}, B=B, L=L, scheme=scheme, seed=seed, names=list(names),
                   stages=[s.name for s in cfg.stages])
        store = ChunkStore(store_dir, key, W.shape[0], chunk)
    ev: Evaluation = map_chunks(run, make, W.shape[0], chunk=chunk, store=store,
                                resume=resume, progress=progress)
    vals = ev.values
    codes = vals[:, nn:nn + nstg].astype(int)
    point_codes = codes[0]
    st = replicate_status(ev.status, codes, point_codes, exclude_not_converged)
    # (Row 0, the point refit, has the point's own weights: not moving is right there.)
    q = nn + nstg + len(der_names)
    quantities = list(names) + der_names
    d_point, s_point = der(params)
    point_vec = np.concatenate([[float(getattr(params, n)) for n in names],
                                np.asarray(d_point)])
    reps, rstat = np.concatenate([vals[1:1 + B, :nn], vals[1:1 + B, nn + nstg:q]], 1), \
        st[1:1 + B]
    jv = np.concatenate([vals[1 + B:, :nn], vals[1 + B:, nn + nstg:q]], 1)
    jst = st[1 + B:]
    intervals = bootstrap_intervals(point_vec, reps, rstat == 0, jv, jst == 0, quantities)
    series = vals[1:1 + B, q:].reshape(B, len(TARGET_VARIABLES), ny)
    return BootstrapResult(
        names=list(names), derived=der_names,
        point={k: float(v) for k, v in zip(quantities, point_vec)},
        replicates=reps, status=rstat, stage_codes=codes[1:1 + B], jackknife=jv,
        jackknife_status=jst, series=series,
        point_series=np.asarray(s_point).reshape(len(TARGET_VARIABLES), ny), years=years,
        intervals=intervals, B=B, block_length=L, block_rule=rule, scheme=scheme, seed=seed,
        counts=counts, train_years=years[train_idx],
        point_refit_codes=[int(c) for c in point_codes],
        seconds=time.perf_counter() - t0, chunks_resumed=ev.chunks_resumed,
        exclude_not_converged=exclude_not_converged)
