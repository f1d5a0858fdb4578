"""Thresholds of calibrated sites, with bootstrap intervals, in one table.

Per site (the seed's thresholds and the model's regime boundaries):

* ``V_crit``: the cover of the unstable equilibrium that separates the bare and the
  vegetated basin at the site's MAP (natural dynamics: no planting; NaN where the site
  is not bistable at its MAP);
* ``theta_star``, ``SOM_star``, ``eta1``: the parameters (soil-moisture stress threshold,
  SOM lock-in, infiltration gain per % SOM);
* ``P_veg``: the rainfall limit to revegetation (the lowest MAP with a stable vegetated
  state), ``P_bare_unstable``: the MAP above which bare soil loses stability; between the
  two the system is bistable (``bistable_width`` = their difference; NaN when bare soil
  stays stable over the whole sweep).

:func:`thresholds` is one jitted, vmappable function of a parameter set;
:func:`thresholds_table` evaluates it at each site's estimate and at every used
replicate of the site's block bootstrap (``analysis.site_bootstrap``: staged refits, the
basin stage included when the calibration kept it) and reports percentile intervals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..analysis import percentile_interval, site_bootstrap
from ..fit import fitted_names
from ..model import PARAM_NAMES, Climate, Params, equilibria, rainfall_limits

__all__ = ["THRESHOLDS", "PARAMETER_THRESHOLDS", "RAIN_SWEEP", "LIMIT_GRID", "LIMIT_BISECT",
           "thresholds", "thresholds_table", "replicate_params"]

THRESHOLDS = {
    "V_crit": "cover fraction (0-1)",
    "theta_star": "m3/m3",
    "SOM_star": "% (0-20 cm)",
    "eta1": "mm per % SOM",
    "P_veg": "mm/yr",
    "P_bare_unstable": "mm/yr",
    "bistable_width": "mm/yr",
}
# The MAP sweep (mm/yr) that brackets the rainfall limits, the cover grid and the bisections
# that locate them: P_veg within ~2 mm and P_bare_unstable within ~0.2 mm of the fine
# settings of ``model.bifurcation`` (256 covers, 24 bisections; tests/test_science.py) at a
# fifth of the cost (the limits of every bootstrap replicate are computed).
RAIN_SWEEP = (100.0, 1500.0, 29)
# The thresholds that are model parameters (the others are derived from all of them).
PARAMETER_THRESHOLDS = ("theta_star", "SOM_star", "eta1")
LIMIT_GRID, LIMIT_BISECT = 96, 12


@eqx.filter_jit
def thresholds(p: Params, MAP, intensity=1.0, sweep=RAIN_SWEEP,
               batched: bool = False) -> dict[str, jax.Array]:
    """Every entry of ``THRESHOLDS`` for one parameter set (scalar leaves) at mean annual
    rainfall ``MAP`` (mm/yr) and storm ``intensity``; ``batched``: ``p``'s leaves have a
    leading axis (one compiled call for all of them; ``vmap`` works too)."""
    if batched:
        return jax.vmap(lambda q: thresholds(q, MAP, intensity, sweep))(p)
    eq = equilibria(p, Climate(jnp.asarray(MAP, p.dtype), jnp.asarray(intensity, p.dtype)))
    rain = jnp.linspace(sweep[0], sweep[1], sweep[2], dtype=p.dtype)
    P_veg, P_bare = rainfall_limits(p, rain, intensity=intensity, n_grid=LIMIT_GRID,
                                    n_bisect=LIMIT_BISECT)
    return {"V_crit": eq.V_crit, "theta_star": p.theta_star, "SOM_star": p.SOM_star,
            "eta1": p.eta1, "P_veg": P_veg, "P_bare_unstable": P_bare,
            "bistable_width": P_bare - P_veg}


def replicate_params(point: Params, names: Sequence[str], values: np.ndarray) -> Params:
    """Parameter sets with a leading replicate axis: ``point`` with ``names`` replaced by
    the columns of ``values`` (``(B, len(names))``)."""
    B = values.shape[0]
    d = {n: jnp.full((B,), float(getattr(point, n)), point.dtype) for n in PARAM_NAMES}
    for j, n in enumerate(names):
        d[n] = jnp.asarray(values[:, j], point.dtype)
    return Params(**d)


def thresholds_table(cals, MAPs: Sequence[float], *, B: int = 200, seed: int = 0,
                     block_length: int | str = "auto", intensities=None,
                     progress: Callable[[str], None] | None = None) -> list[dict]:
    """One row per calibration: site, region, MAP and, per threshold, the estimate and its
    95% bootstrap percentile interval (``B`` staged refits per site; ``B = 0``: no
    intervals) with the number of replicates used.  Units: ``THRESHOLDS``."""
    rows = []
    for k, (cal, MAP_mm) in enumerate(zip(cals, MAPs)):
        # as arrays: the jitted thresholds are traced once for every site (a Python float
        # would be a static argument, one compile per MAP)
        dt = cal.params.dtype
        inten = jnp.asarray(1.0 if intensities is None else float(intensities[k]), dt)
        MAP = jnp.asarray(float(MAP_mm), dt)
        t0 = time.perf_counter()
        point = {n: float(v) for n, v in thresholds(cal.params, MAP, inten).items()}
        row: dict = {"site": cal.site, "region": cal.region, "MAP_mm": float(MAP_mm),
                     "B": int(B), "interval": "bootstrap percentile, 95%" if B else "none"}
        reps = None
        if B:
            try:
                boot = site_bootstrap(cal, B=B, seed=seed, block_length=block_length)
            except ValueError as err:  # too few training years, nothing fitted
                row["interval"] = f"none ({err})"
                boot = None
            if boot is not None:
                ok = np.asarray(boot.used, bool)
                vals = np.asarray(boot.replicates)[:, :len(boot.names)]
                P = replicate_params(cal.params, boot.names, vals)
                batch = thresholds(P, MAP, inten, batched=True)
                reps = {n: np.asarray(v) for n, v in batch.items()}
                row["replicates_used"] = int(ok.sum())
                row["block_length"] = int(boot.block_length)
        fitted = set(fitted_names(cal.stages))
        for name in PARAMETER_THRESHOLDS:  # a parameter no stage fitted is the prior's
            row[f"{name}_calibrated"] = name in fitted
        for name in THRESHOLDS:
            row[name] = point[name]
            lo = hi = float("nan")
            if reps is not None:
                r = reps[name]
                good = ok & np.isfinite(r)
                if good.sum() >= 2:
                    lo, hi = (float(x) for x in np.asarray(
                        percentile_interval(jnp.asarray(r), jnp.asarray(good))))
                row[f"{name}_n"] = int(good.sum())
            row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
        if progress:
            progress(f"  {cal.site}: V_crit {point['V_crit']:.3g}, P_veg "
                     f"{point['P_veg']:.0f} mm, eta1 {point['eta1']:.3g} "
                     f"({time.perf_counter() - t0:.1f} s)")
        rows.append(row)
    return rows
