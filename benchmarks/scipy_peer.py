"""The numpy/scipy peer of the library's staged fit: what a skilled scipy user writes.

The peer of ``regv1_jax.calibrate_stages`` for benchmarks (``bench_calibrate.py``, and any
other that times a staged fit against scipy):

* :class:`Transform`: the bounded-logit unconstrained transform of ``ParamSpace``
  (``vector_to_unconstrained`` / ``vector_to_constrained``) and the standardised prior
  (``vector_standardised``), re-implemented in numpy on the space's spec table.
* :class:`NumpyObjective`: the calibration objective of ``regv1_jax.fit.Objective`` in
  numpy, with the same row layout as ``Objective.residuals``: the data residuals of every
  ``TARGET_VARIABLES`` column (variable-major, ``(sim - obs) / sigma``, zero in masked cells,
  each variable weighted by the stage), the event constraints (weighted by the stage), and
  one prior row per parameter (the standardised prior of the free ones, zero for the
  frozen).  The model is the library's own right-hand side in numpy
  (``regv1_jax.model.vector_field_numpy``) integrated by ``scipy.integrate.solve_ivp``
  one calendar year at a time (the forcings jump at year boundaries), with ``t_eval`` at
  mid-year and year end; the annual outputs come from the library's observation operators
  (``regv1_jax.solve.observe_year``, ``regv1_jax.fit.simulated``) applied to numpy arrays.
* :func:`fit_stages`: the staged fit with ``scipy.optimize.least_squares(method="trf")``
  (default tolerances, 2-point finite-difference Jacobian), stage by stage over the same
  free parameters and the same warm-start chain as the library (each stage starts from the
  physical values the previous one left), optionally multi-start in the first stage.
* :func:`library_starts`: the prior draws from which ``calibrate_stages`` starts a stage
  (same key, same draws), to give :func:`fit_stages` the library's starts.
* :func:`check_objective`: asserts that the transform and the residuals equal the library's
  (``Objective.residuals`` at tight tolerances) before anything is timed, so that a changed
  model or objective stops the benchmark instead of timing different work.

What the peer does not copy: the library's holding of free parameters that no data row is
sensitive to, its skipping of stages without data, and its multi-start of every stage (the
peer multi-starts the first stage only).  On a problem where every stage has data (the
Yanhe twin) the first two do not arise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace

import numpy as np

from regv1_jax.fit import (
    SEED_EVENTS,
    SEED_STAGES,
    TARGET_VARIABLES,
    EventConstraints,
    Stage,
    Targets,
    simulated,
)
from regv1_jax.model import (
    N_LAG_DEFAULT,
    PARAM_NAMES,
    Forcing,
    Layout,
    Params,
    ParamSpace,
    infiltration_cover,
    initial_state,
    scale_bounds,
    vector_field_numpy,
    year_drivers,
)
from regv1_jax.solve import FIELDS, OBSERVED, observe_year

__all__ = ["Transform", "NumpyObjective", "PeerStage", "PeerFit", "fit_stages",
           "library_starts", "check_objective", "as_vector"]

N_PARAMS = len(PARAM_NAMES)


def as_vector(params) -> np.ndarray:
    """Physical values in ``PARAM_NAMES`` order (float64, last axis) from ``Params`` (any
    batch shape), a ``{name: value}`` mapping (every parameter) or an array."""
    if isinstance(params, Params):
        return np.stack([np.asarray(getattr(params, n), np.float64) for n in PARAM_NAMES],
                        axis=-1)
    if isinstance(params, Mapping):
        return np.array([float(params[n]) for n in PARAM_NAMES])
    x = np.asarray(params, np.float64)
    if x.shape[-1] != N_PARAMS:
        raise ValueError(f"expected {N_PARAMS} parameters on the last axis, got {x.shape}")
    return x


def _names_mask(names) -> np.ndarray:
    names = set(names)
    unknown = names - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
    return np.array([n in names for n in PARAM_NAMES])


def _variable_weights(variables) -> np.ndarray:
    return np.array([1.0 if v in variables else 0.0 for v in TARGET_VARIABLES])


# --------------------------------------------------------------------------------------------
# the unconstrained transform
# --------------------------------------------------------------------------------------------
class Transform:
    """numpy copy of ``ParamSpace``'s vector transforms (every parameter, ``PARAM_NAMES``
    order): the logit of the position inside the physical bounds, on the transform's scale
    (linear or log), and the prior standardised on the prior's scale."""

    def __init__(self, space: ParamSpace):
        specs = space.specs
        lo, hi = zip(*(scale_bounds(s) for s in specs))
        self.t_log = np.array([s.transform_scale == "log" for s in specs])
        self.t_lo, self.t_hi = np.array(lo), np.array(hi)
        self.b_lo = np.array([s.bound_lower for s in specs])
        self.b_hi = np.array([s.bound_upper for s in specs])
        self.p_log = np.array([s.scale == "log" for s in specs])
        self.p_mean = np.array([s.prior_mean for s in specs])
        self.p_sd = np.array([s.prior_sd for s in specs])

    def to_unconstrained(self, x) -> np.ndarray:
        """``ParamSpace.vector_to_unconstrained`` in numpy."""
        x = np.asarray(x, np.float64)
        s = np.where(self.t_log, np.log(np.where(self.t_log, x, 1.0)), x)
        eps = 10 * np.finfo(np.float64).eps
        frac = np.clip((s - self.t_lo) / (self.t_hi - self.t_lo), eps, 1 - eps)
        return np.log(frac) - np.log1p(-frac)

    def to_constrained(self, u) -> np.ndarray:
        """``ParamSpace.vector_to_constrained`` in numpy."""
        from scipy.special import expit

        y = self.t_lo + (self.t_hi - self.t_lo) * expit(np.asarray(u, np.float64))
        y = np.where(self.t_log, np.exp(np.where(self.t_log, y, 0.0)), y)
        return np.clip(y, self.b_lo, self.b_hi)

    def standardised(self, x) -> np.ndarray:
        """``ParamSpace.vector_standardised`` in numpy: the prior as residuals."""
        x = np.asarray(x, np.float64)
        s = np.where(self.p_log, np.log(np.where(self.p_log, x, 1.0)), x)
        return (s - self.p_mean) / self.p_sd


# --------------------------------------------------------------------------------------------
# the objective
# --------------------------------------------------------------------------------------------
class NumpyObjective:
    """The objective of ``regv1_jax.fit.Objective`` in numpy, the model solved by
    ``solve_ivp`` (``method``, ``rtol``, ``atol``) one calendar year at a time.

    ``residuals(u, base, mask, var_w, ev_w)`` has the rows of ``Objective.residuals``
    (``n_data`` data rows, ``events.size`` event rows, ``N_PARAMS`` prior rows).  A failed
    solve gives NaN data rows.  ``n_solves`` / ``n_failed`` count the solves; the last solve
    is cached (the same parameters twice cost one solve).
    """

    def __init__(self, space: ParamSpace, forcing: Forcing, targets: Targets, *,
                 events: EventConstraints = SEED_EVENTS, prior_weight: float = 1.0,
                 method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-6,
                 n_lag: int = N_LAG_DEFAULT):
        self.space = space
        self.transform = Transform(space)
        self.layout = Layout(n_lag)
        fn = forcing.numpy()
        # A plain namespace: vector_field_numpy only reads attributes, and attribute access
        # on an eqx.Module costs microseconds per right-hand-side call.
        self.forcing = SimpleNamespace(rainfall=fn.rainfall, intensity=fn.intensity,
                                       psi_plant=fn.psi_plant, psi_eng=fn.psi_eng,
                                       index=fn.index, n_years=fn.n_years)
        self.n_years = fn.n_years
        self.obs = np.stack([np.asarray(targets.values[v], np.float64)
                             for v in TARGET_VARIABLES])
        self.masks = np.stack([np.asarray(targets.masks[v], bool) for v in TARGET_VARIABLES])
        self.sigma = np.array([float(targets.sigma[v]) for v in TARGET_VARIABLES])
        self.events = events
        self.prior_weight = float(prior_weight)
        self.method, self.rtol, self.atol = method, rtol, atol
        self.n_data = len(TARGET_VARIABLES) * self.n_years
        self.n_rows = self.n_data + events.size + N_PARAMS
        self.n_solves = 0
        self.n_failed = 0
        self._cache: tuple[bytes, np.ndarray | None] | None = None

    # -- model ------------------------------------------------------------------------------
    def simulate(self, x) -> np.ndarray | None:
        """Model values of the ``TARGET_VARIABLES`` at physical ``x`` (``(n_vars, n_years)``,
        the columns' units); None when ``solve_ivp`` fails."""
        from scipy.integrate import solve_ivp

        x = as_vector(x)
        key = x.tobytes()
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        p = SimpleNamespace(**{n: float(v) for n, v in zip(PARAM_NAMES, x)})
        lay, f = self.layout, self.forcing
        self.n_solves += 1
        y = np.asarray(initial_state(p, year_drivers(p, f), lay, xp=np), dtype=np.float64)
        grid = np.empty((2 * self.n_years + 1, lay.size))
        grid[0] = y
        out = None
        for k in range(self.n_years):
            def rhs(_t, yy, tau=k + 0.5):  # the forcing of year k, also at its right end
                return vector_field_numpy(tau, yy, p, f, lay)

            sol = solve_ivp(rhs, (float(k), float(k + 1)), y, method=self.method,
                            rtol=self.rtol, atol=self.atol, t_eval=[k + 0.5, k + 1.0])
            if not sol.success or not np.all(np.isfinite(sol.y)):
                self.n_failed += 1
                break
            grid[2 * k + 1], grid[2 * k + 2] = sol.y[:, 0], sol.y[:, 1]
            y = sol.y[:, 1]
        else:
            starts, mids, ends = grid[0:-1:2].T, grid[1::2].T, grid[2::2].T
            obs = dict(zip(OBSERVED, observe_year(starts, mids, ends, p, lay)))
            sim = SimpleNamespace(**{name: obs[keys[0]] if len(keys) == 1 else
                                     np.stack([obs[k] for k in keys], axis=-1)
                                     for name, keys in FIELDS})
            out = np.stack([np.asarray(simulated(sim, v), np.float64)
                            for v in TARGET_VARIABLES])
        self._cache = (key, out)
        return out

    def data_residuals(self, sim: np.ndarray | None) -> np.ndarray:
        """``(sim - obs) / sigma`` of every variable, 0 in masked cells: ``(n_vars, n_years)``
        (NaN where the solve failed)."""
        if sim is None:
            return np.full(self.obs.shape, np.nan)
        obs = np.where(self.masks, self.obs, sim)
        return np.where(self.masks, (sim - obs) / self.sigma[:, None], 0.0)

    def event_residuals(self, x) -> np.ndarray:
        """``regv1_jax.fit.event_residuals`` in numpy."""
        p = SimpleNamespace(**{n: float(v) for n, v in zip(PARAM_NAMES, as_vector(x))})
        ev = self.events
        V = ev.plot_cover
        intensity = np.asarray(ev.intensity, np.float64)
        sed = np.exp(p.c_E * V * (p.i_ref / intensity) ** p.omega_E)
        Rc_bare = p.c_R * (max(ev.intensity) / p.i_ref) ** p.omega
        h = infiltration_cover(V, p.k_I)
        infil = (1.0 - Rc_bare * (1.0 - p.b_V * h)) / (1.0 - Rc_bare) - 1.0
        w = np.asarray(ev.weight, np.float64)
        r_sed = np.sqrt(w) * (np.log(sed) - np.log(np.asarray(ev.sediment_ratio))) \
            / ev.sigma_log
        r_inf = (infil - ev.infiltration_gain) / ev.sigma_infiltration
        return np.concatenate([r_sed, [r_inf]])

    def physical(self, u, base, mask) -> np.ndarray:
        """``Objective.params`` as a vector: ``to_constrained(u)`` where ``mask``, else
        ``base``."""
        return np.where(np.asarray(mask, bool), self.transform.to_constrained(u),
                        as_vector(base))

    def residuals(self, u, base, mask, var_w, ev_w) -> np.ndarray:
        """The rows of ``Objective(base, mask, var_w, ev_w, prior_weight, ...).residuals(u)``:
        ``u`` unconstrained (every parameter), ``base`` physical, ``mask`` the free
        parameters, ``var_w`` a weight per ``TARGET_VARIABLES`` column, ``ev_w`` the weight
        of the event constraints."""
        mask = np.asarray(mask, bool)
        return self.residuals_at(self.physical(u, base, mask), mask, var_w, ev_w)

    def residuals_at(self, x, mask, var_w, ev_w) -> np.ndarray:
        """:meth:`residuals` at the physical vector ``x`` (every parameter; ``mask`` then
        only selects the prior rows)."""
        x, mask = as_vector(x), np.asarray(mask, bool)
        r_data = self.data_residuals(self.simulate(x)) * np.sqrt(
            np.asarray(var_w, np.float64))[:, None]
        r_ev = np.sqrt(float(ev_w)) * self.event_residuals(x)
        r_prior = np.sqrt(self.prior_weight) * np.where(mask, self.transform.standardised(x),
                                                        0.0)
        return np.concatenate([r_data.ravel(), r_ev, r_prior])

    def stage_residuals(self, u, base, stage: Stage) -> np.ndarray:
        """:meth:`residuals` with the mask and weights of ``stage``."""
        return self.residuals(u, base, _names_mask(stage.free),
                              _variable_weights(stage.variables),
                              1.0 if stage.events else 0.0)

    def stage_loss(self, values, stage: Stage) -> float:
        """``0.5 |r|^2`` of ``stage`` at physical ``values`` (every parameter)."""
        r = self.residuals_at(values, _names_mask(stage.free),
                              _variable_weights(stage.variables), 1.0 if stage.events else 0.0)
        return float(0.5 * np.sum(r * r))

    def stage_function(self, stage: Stage, base) -> tuple[Callable, np.ndarray]:
        """``(fun, v0)``: the stage's residuals over its free unconstrained coordinates
        (``stage.free`` order) and their value at ``base`` (physical, every parameter)."""
        x0 = as_vector(base)
        idx = np.array([PARAM_NAMES.index(n) for n in stage.free])
        u0 = self.transform.to_unconstrained(x0)
        mask = _names_mask(stage.free)
        var_w = _variable_weights(stage.variables)
        ev_w = 1.0 if stage.events else 0.0

        def fun(v):
            u = u0.copy()
            u[idx] = v
            return self.residuals(u, x0, mask, var_w, ev_w)

        return fun, u0[idx]

    def stage_values(self, stage: Stage, base, v) -> dict[str, float]:
        """Physical values of ``stage.free`` at its unconstrained coordinates ``v``."""
        u = self.transform.to_unconstrained(as_vector(base))
        u[[PARAM_NAMES.index(n) for n in stage.free]] = v
        x = self.transform.to_constrained(u)
        return {n: float(x[PARAM_NAMES.index(n)]) for n in stage.free}


# --------------------------------------------------------------------------------------------
# the staged fit
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class PeerStage:
    """One stage of :func:`fit_stages` (losses are ``0.5 |r|^2`` under the peer's solver)."""

    name: str
    free: tuple[str, ...]
    values: dict[str, float]          # the best start's free values after the stage
    start_values: dict[str, float]    # the incoming (warm-start) values of the free ones
    initial_loss: float               # at the warm start
    final_loss: float                 # the best start's
    best_start: int                   # 0: the warm start; k: extra start k - 1
    start_losses: list[float]         # every start's final loss (NaN: failed)
    nfev: int                         # least_squares' nfev, summed over starts
    njev: int                         # Jacobians (2-point FD), summed over starts
    n_evals: int                      # every residual evaluation, FD columns included
    solves: int                       # numpy solves (the last is cached)
    status: int                       # least_squares status of the best start
    message: str
    optimality: float
    wall_s: float
    # (seconds since the stage began, loss) of every evaluation, FD columns included.
    history: list[tuple[float, float]] = dataclasses.field(default_factory=list, repr=False)

    def as_dict(self, history: bool = False) -> dict:
        d = dataclasses.asdict(self)
        if not history:
            d.pop("history")
        return d


@dataclasses.dataclass
class PeerFit:
    """What :func:`fit_stages` returns."""

    params: Params                    # final physical parameters (scalar leaves, float64)
    stages: list[PeerStage]
    wall_s: float
    cpu_s: float
    method: str
    rtol: float
    atol: float
    solves: int
    failed_solves: int
    max_nfev: int | None

    @property
    def stage_losses(self) -> list[float]:
        return [s.final_loss for s in self.stages]

    @property
    def final_loss(self) -> float:
        return self.stages[-1].final_loss if self.stages else float("nan")

    @property
    def nfev(self) -> int:
        return sum(s.nfev for s in self.stages)

    @property
    def n_evals(self) -> int:
        return sum(s.n_evals for s in self.stages)

    def as_dict(self, history: bool = False) -> dict:
        return dict(method=self.method, rtol=self.rtol, atol=self.atol,
                    max_nfev=self.max_nfev, wall_s=self.wall_s, cpu_s=self.cpu_s,
                    nfev=self.nfev, n_evals=self.n_evals, solves=self.solves,
                    failed_solves=self.failed_solves, stage_losses=self.stage_losses,
                    final_loss=self.final_loss,
                    stages=[s.as_dict(history) for s in self.stages],
                    params={n: float(getattr(self.params, n)) for n in PARAM_NAMES})


def library_starts(space: ParamSpace, n_starts: int, seed: int = 0, stage: int = 0
                   ) -> np.ndarray:
    """The ``n_starts - 1`` prior draws (physical, ``(n_starts - 1, N_PARAMS)``) from which
    ``calibrate_stages(..., CalibrationConfig(n_starts=n_starts, seed=seed))`` starts stage
    number ``stage`` (besides the warm start): the draws of ``fit.staged_problem``."""
    import jax

    from regv1_jax.fit import prior_starts

    if n_starts <= 1:
        return np.zeros((0, N_PARAMS))
    u = prior_starts(space, jax.random.PRNGKey(seed), stage + 1, n_starts - 1)[stage]
    return space.host_to_constrained(u)


def fit_stages(space: ParamSpace, params: Params, forcing: Forcing, targets: Targets,
               stages: Sequence[Stage] = SEED_STAGES, *, extra_starts=None,
               stage_starts: Mapping[int, np.ndarray] | None = None,
               events: EventConstraints = SEED_EVENTS, prior_weight: float = 1.0,
               method: str = "RK45", rtol: float = 1e-6, atol: float = 1e-6,
               max_nfev: int | None = None, objective: NumpyObjective | None = None,
               progress: Callable[[str], None] | None = None) -> PeerFit:
    """The staged fit with ``scipy.optimize.least_squares(method="trf", jac="2-point")``.

    **Arguments:**

    - ``space``, ``forcing``, ``targets``: as for ``calibrate_stages``;
    - ``params``: the starting parameters (``Params`` with scalar leaves: the prior values,
      or an earlier fit's);
    - ``stages``: run in order; each stage fits its free parameters (its other parameters
      frozen at the values the earlier stages left) from the previous stage's result;
    - ``extra_starts``: optional further starts of the first stage (multi-start: each is run,
      the best final loss is kept): physical vectors ``(k, N_PARAMS)`` in ``PARAM_NAMES``
      order, or ``Params`` with a leading batch axis, of which only the first stage's free
      coordinates are used (:func:`library_starts` gives the library's draws);
    - ``stage_starts``: further starts of any stage, ``{stage index: physical vectors}``
      (``extra_starts`` is ``{0: extra_starts}``); each stage's free coordinates are used;
    - ``events``, ``prior_weight``: as in the ``CalibrationConfig``;
    - ``method``, ``rtol``, ``atol``: ``solve_ivp``'s;
    - ``max_nfev``: ``least_squares``' cap per start (None: scipy's default, 100 n);
    - ``objective``: a :class:`NumpyObjective` to reuse (then ``events`` to ``atol`` are
      its own);
    - ``progress``: called with a line per stage.

    **Returns:** a :class:`PeerFit` (final ``params``, per-stage losses, nfev, wall time).
    """
    from scipy.optimize import least_squares

    obj = objective or NumpyObjective(space, forcing, targets, events=events,
                                      prior_weight=prior_weight, method=method, rtol=rtol,
                                      atol=atol)
    x = as_vector(params).copy()
    if x.ndim != 1:
        raise ValueError("fit_stages starts from one parameter set (scalar leaves)")
    more = {int(k): np.atleast_2d(as_vector(v)) for k, v in (stage_starts or {}).items()}
    if extra_starts is not None:
        more[0] = np.atleast_2d(as_vector(extra_starts))
    solves0, failed0 = obj.n_solves, obj.n_failed
    out = []
    t_all, c_all = time.perf_counter(), time.process_time()
    for i, st in enumerate(stages):
        idx = np.array([PARAM_NAMES.index(n) for n in st.free])
        fun, v_warm = obj.stage_function(st, x)
        starts = [v_warm]
        starts += [obj.transform.to_unconstrained(e)[idx] for e in more.get(i, ())]
        hist: list[tuple[float, float]] = []
        t0 = time.perf_counter()
        n_solves0 = obj.n_solves

        def traced(v, fun=fun, hist=hist, t0=t0):
            r = fun(v)
            hist.append((time.perf_counter() - t0, float(0.5 * np.sum(r * r))))
            return r

        best, results, losses = None, [], []
        for v0 in starts:
            try:
                res = least_squares(traced, v0, method="trf", jac="2-point",
                                    max_nfev=max_nfev)
            except ValueError:  # residuals not finite at the start: the start is dropped
                res = None
            results.append(res)
            loss = float(res.cost) if res is not None and np.isfinite(res.cost) else np.nan
            losses.append(loss)
            if np.isfinite(loss) and (best is None or loss < losses[best]):
                best = len(results) - 1
        wall = time.perf_counter() - t0
        start_values = {n: float(x[j]) for n, j in zip(st.free, idx)}
        if best is None:  # every start failed: the stage keeps its incoming values
            values, status, msg, opt = start_values, -99, "every start failed", np.nan
        else:
            r = results[best]
            values = obj.stage_values(st, x, r.x)
            status, msg, opt = int(r.status), str(r.message), float(r.optimality)
        ok = [r for r in results if r is not None]
        row = PeerStage(
            name=st.name, free=tuple(st.free), values=values, start_values=start_values,
            initial_loss=hist[0][1] if hist else np.nan,
            final_loss=losses[best] if best is not None else np.nan,
            best_start=-1 if best is None else best, start_losses=losses,
            nfev=sum(int(r.nfev) for r in ok),
            njev=sum(int(r.njev) for r in ok if r.njev is not None),
            n_evals=len(hist), solves=obj.n_solves - n_solves0, status=status, message=msg,
            optimality=opt, wall_s=wall, history=hist)
        out.append(row)
        for n, v in values.items():
            x[PARAM_NAMES.index(n)] = v
        if progress:
            progress(f"scipy {st.name:<17s} {wall:7.1f} s {row.n_evals:4d} evaluations "
                     f"({row.solves} solves, {len(starts)} start(s)) loss "
                     f"{row.initial_loss:.6g} -> {row.final_loss:.6g} status {status}")
    import jax.numpy as jnp

    final = Params(**{n: jnp.asarray(v, jnp.float64) for n, v in zip(PARAM_NAMES, x)})
    return PeerFit(params=final, stages=out, wall_s=time.perf_counter() - t_all,
                   cpu_s=time.process_time() - c_all, method=obj.method, rtol=obj.rtol,
                   atol=obj.atol, solves=obj.n_solves - solves0,
                   failed_solves=obj.n_failed - failed0, max_nfev=max_nfev)


# --------------------------------------------------------------------------------------------
# the check against the library
# --------------------------------------------------------------------------------------------
def check_objective(space: ParamSpace, params: Params, forcing: Forcing, targets: Targets,
                    stages: Sequence[Stage] = SEED_STAGES, *,
                    events: EventConstraints = SEED_EVENTS, prior_weight: float = 1.0,
                    seed: int = 5, tol: float = 1e-5) -> dict:
    """Assert that the peer computes the library's objective; returns the differences.

    The transform (numpy against ``space.vector_to_unconstrained`` /
    ``vector_to_constrained`` / ``vector_standardised`` on prior draws and on far-out
    unconstrained values) and, for every stage, the residual vector of
    :class:`NumpyObjective` (DOP853, rtol 1e-10, atol 1e-12) against
    ``regv1_jax.fit.Objective.residuals`` (Tsit5, rtol 1e-10, atol 1e-12), with ``params``
    as the base and the free parameters at a prior draw (key ``seed``).  The residuals must
    agree to ``tol`` relative (``max |r_jax - r_numpy| / max(1, max |r_jax|)``).
    Needs float64 JAX (``jax_enable_x64``).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from regv1_jax.fit import Objective, variable_weights
    from regv1_jax.solve import solver_from

    if not jax.config.jax_enable_x64:
        raise RuntimeError("check_objective needs float64 JAX (jax_enable_x64)")
    f64 = jnp.float64
    tr = Transform(space)
    key = jax.random.PRNGKey(seed)
    draws = np.asarray(space.stack(space.sample_prior(key, 16, dtype=f64)))
    u_far = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (16, N_PARAMS), f64)) * 8
    out = {}
    d_unc = np.abs(np.asarray(space.vector_to_unconstrained(draws)) - tr.to_unconstrained(draws))
    d_con = np.abs(np.asarray(space.vector_to_constrained(u_far)) - tr.to_constrained(u_far))
    d_std = np.abs(np.asarray(space.vector_standardised(draws)) - tr.standardised(draws))
    out["transform_max_abs_diff_unconstrained"] = float(d_unc.max())
    out["transform_max_rel_diff_constrained"] = float(
        np.max(d_con / np.abs(np.asarray(space.vector_to_constrained(u_far)))))
    out["prior_max_abs_diff_standardised"] = float(d_std.max())
    assert out["transform_max_abs_diff_unconstrained"] <= 1e-9, out
    assert out["transform_max_rel_diff_constrained"] <= 1e-12, out
    assert out["prior_max_abs_diff_standardised"] <= 1e-12, out

    base = as_vector(params)
    u = tr.to_unconstrained(draws[0])
    ref = NumpyObjective(space, forcing, targets, events=events, prior_weight=prior_weight,
                         method="DOP853", rtol=1e-10, atol=1e-12)
    solver = solver_from("tsit5", rtol=1e-10, atol=1e-12)
    base_p = space.unstack(jnp.asarray(base, f64))
    res_fn = eqx.filter_jit(lambda obj, u: obj.residuals(u))
    rows = []
    for st in stages:
        mask, var_w = space.mask(st.free), variable_weights(st.variables, f64)
        ev_w = 1.0 if st.events else 0.0
        obj = Objective(base_p, mask, var_w, jnp.asarray(ev_w, f64),
                        jnp.asarray(prior_weight, f64), forcing.astype(f64), targets, space,
                        solver, events)
        r_j = np.asarray(res_fn(obj, jnp.asarray(u, f64)))
        r_n = ref.residuals(u, base, np.asarray(mask), np.asarray(var_w), ev_w)
        assert r_j.shape == r_n.shape, (st.name, r_j.shape, r_n.shape)
        diff = float(np.max(np.abs(r_j - r_n)))
        rel = diff / max(1.0, float(np.max(np.abs(r_j))))
        rows.append(dict(stage=st.name, rows=int(r_j.size), loss_jax=float(0.5 * r_j @ r_j),
                         loss_numpy=float(0.5 * r_n @ r_n), max_abs_diff=diff,
                         max_rel_diff=rel))
        assert np.all(np.isfinite(r_j)) and np.all(np.isfinite(r_n)), rows[-1]
        assert rel <= tol, f"numpy objective differs from Objective.residuals: {rows[-1]}"
    out["residuals"] = rows
    out["max_rel_residual_diff"] = max(r["max_rel_diff"] for r in rows)
    out["tolerance"] = tol
    out["solvers"] = "numpy solve_ivp DOP853 vs diffrax Tsit5, rtol 1e-10, atol 1e-12"
    return out
