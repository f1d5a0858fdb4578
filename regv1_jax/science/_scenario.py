"""Regional scenarios of a calibrated site, with bootstrap intervals, beside the seed's
targets and the published figures.

Counterfactual forcings over the site's years (``SCENARIOS``): no planting and no
engineering (the baseline), Grain for Green (the site's planting schedule), planting plus
engineering (a share ramping to ``ENGINEERING_SHARE`` over ten years from the planting
start) and Grain for Green under rainfall -20 % and +20 %.  Each scenario's change against
the baseline, over the years from the planting start, is scaled to a stated area (default
the Loess Plateau's 640,000 km2, or a basin's): runoff change (m3/yr), water-yield change
(mm/yr), SOC sequestration (0-40 cm; t C/ha/yr and Tg C/yr over the area), sediment change
(t/ha/yr, Mt/yr and %), and the mean cover at the end (%).  The intervals are the 2.5 and
97.5 percentiles over the used replicates of the site's block bootstrap
(``analysis.site_bootstrap``), every replicate run through every scenario in one batched
forward call (``solve.simulate_ensemble``).

``PUBLISHED`` lists the figures to compare with (and says where the seed's own targets
come from: the seed's 0.712 Tg C/yr and 3.9e8 m3/yr were not found in the literature
checked for issue 19).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from ..model import Forcing, Params, make_forcing, soc_stock
from ..solve import simulate_ensemble
from ._thresholds import replicate_params

__all__ = ["SCENARIOS", "ENGINEERING_SHARE", "LOESS_PLATEAU_KM2", "PUBLISHED",
           "WORLD_BANK_USD_PER_HA", "scenario_forcings", "scenario_effects",
           "ScenarioResult", "run_scenarios"]

LOESS_PLATEAU_KM2 = 640_000.0
ENGINEERING_SHARE = 0.3
WORLD_BANK_USD_PER_HA = 518e6 / 35_000e2  # US$518M over ~35,000 km2: ~US$148/ha
SCENARIOS = {
    "no_planting": "no planting, no engineering (the baseline)",
    "grain_for_green": "Grain for Green planting from the site's planting start",
    "planting_engineering": f"planting + engineering share ramping to {ENGINEERING_SHARE} "
                            "over 10 years from the planting start",
    "rain_minus_20": "Grain for Green with rainfall -20 %",
    "rain_plus_20": "Grain for Green with rainfall +20 %",
}
# Published figures beside which the scenarios are reported (issue 19).
PUBLISHED = {
    "soc_sequestration": {
        "value": "0.59 Tg C/yr at 0.29 Mg C/ha/yr",
        "source": "Deng et al. 2014, Sci. Rep. 4:7039 (Grain for Green, Loess Plateau)",
        "per_ha": 0.29},
    "sediment_change": {
        "value": "~90 % decline of the Yellow River's sediment load",
        "source": "Wang et al. 2016, Nat. Geosci. 9:38 (all causes: vegetation, check dams, "
                  "terraces, reservoirs)", "percent": -90.0},
    "cover": {
        "value": "perennial cover raised from 17 to 34 % over ~35,000 km2 at ~US$518M "
                 "(~US$150/ha)",
        "source": "World Bank, Loess Plateau Watershed Rehabilitation Project"},
    "seed_targets": {
        "value": "0.712 Tg C/yr SOC, 3.9e8 m3/yr runoff decrease, 1.0-1.6 mm/yr water yield",
        "source": "the seed document; the first two were not found in the literature "
                  "checked (issue 19)"},
}


def scenario_forcings(forcing: Forcing, planting_start: int) -> dict[str, Forcing]:
    """The forcing of every scenario over ``forcing``'s years."""
    years = forcing.years
    plant = (years >= planting_start).astype(float)
    ramp = np.clip((years - planting_start + 1) / 10.0, 0.0, 1.0) * ENGINEERING_SHARE
    rain = np.asarray(forcing.rainfall, np.float64)
    inten = np.asarray(forcing.intensity, np.float64)
    dt = forcing.rainfall.dtype

    def f(r, p, e):
        return make_forcing(forcing.start, forcing.end, r, inten, p, e, dtype=dt)

    return {"no_planting": f(rain, 0.0, 0.0), "grain_for_green": f(rain, plant, 0.0),
            "planting_engineering": f(rain, plant, ramp),
            "rain_minus_20": f(0.8 * rain, plant, 0.0), "rain_plus_20": f(1.2 * rain, plant, 0.0)}


def _soc_tC_ha(sim, rho_b):
    """0-40 cm SOC stock per year, t C/ha (``sim`` batched: ``(B, years)``)."""
    return 10.0 * soc_stock(np.asarray(sim.SOM_layers), rho_b, xp=np)  # kg C/m2 -> t C/ha


def scenario_effects(params: Params, forcing: Forcing, planting_start: int,
                     area_km2: float) -> dict[str, dict[str, np.ndarray]]:
    """Every scenario's effects for a batch of parameter sets (leading axis ``B``):
    ``{scenario: {quantity: (B,) values}}``, changes against ``no_planting`` over the
    years from ``planting_start``."""
    years = forcing.years
    after = years >= planting_start
    if not after.any() or after.all():
        raise ValueError(f"planting start {planting_start} must fall inside the simulated "
                         f"years {years[0]}-{years[-1]} (with a year before it)")
    sims = {k: simulate_ensemble(params, f)
            for k, f in scenario_forcings(forcing, planting_start).items()}
    base = sims["no_planting"]
    area_ha = area_km2 * 100.0
    rho = np.asarray(params.rho_b)
    soc0 = _soc_tC_ha(base, rho)
    n_after = max(int(after.sum()) - 1, 1)
    out = {}
    for k, s in sims.items():
        dq = np.mean(np.asarray(s.runoff)[:, after] - np.asarray(base.runoff)[:, after], 1)
        dwy = np.mean(np.asarray(s.water_yield)[:, after]
                      - np.asarray(base.water_yield)[:, after], 1)
        soc = _soc_tC_ha(s, rho)
        i0, i1 = int(np.argmax(after)), len(years) - 1
        # Sequestration: the gain over the baseline's change, per year since planting.
        rate = ((soc[:, i1] - soc[:, i0]) - (soc0[:, i1] - soc0[:, i0])) / n_after
        e_b = np.mean(np.asarray(base.erosion)[:, after], 1)
        de = np.mean(np.asarray(s.erosion)[:, after], 1) - e_b
        out[k] = {
            "runoff_change_mm_per_yr": dq,
            "runoff_change_m3_per_yr": dq * 1e-3 * area_km2 * 1e6,
            "water_yield_change_mm_per_yr": dwy,
            "soc_sequestration_tC_per_ha_per_yr": rate,
            "soc_sequestration_TgC_per_yr": rate * area_ha / 1e6,
            "sediment_change_t_per_ha_per_yr": de,
            "sediment_change_Mt_per_yr": de * area_ha / 1e6,
            "sediment_change_percent": 100.0 * de / np.where(e_b > 0, e_b, np.nan),
            "cover_end_percent": 100.0 * np.asarray(s.V)[:, -1],
            "failed_solves": (np.asarray(s.status) != 0).astype(float),
        }
    return out


@dataclasses.dataclass
class ScenarioResult:
    """Scenario effects at the estimate with bootstrap intervals (``rows``: one per
    scenario and quantity), the area, the planting start, the bootstrap size used."""

    site: str
    area_km2: float
    area_source: str
    planting_start: int
    years: tuple[int, int]
    rows: list[dict]
    B: int
    replicates_used: int
    cost_usd: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self) | {"scenarios": SCENARIOS, "published": PUBLISHED,
                                           "world_bank_usd_per_ha": WORLD_BANK_USD_PER_HA}


def run_scenarios(cal, *, area_km2: float | None = None, B: int = 200, seed: int = 0,
                  planting_start: int | None = None, block_length: int | str = "auto",
                  progress: Callable[[str], None] | None = None) -> ScenarioResult:
    """Every scenario of a :class:`fit.SiteCalibration` at its estimate and over its
    bootstrap replicates (``B``; 0: no intervals), scaled to ``area_km2`` (default the
    Loess Plateau's 640,000 km2)."""
    from ..analysis import percentile_interval, site_bootstrap

    years = cal.forcing.years
    if planting_start is None:
        on = np.flatnonzero(np.asarray(cal.forcing.psi_plant) > 0)
        planting_start = int(years[on[0]]) if on.size and on[0] > 0 else None
    if planting_start is None:
        raise ValueError(f"{cal.site}: no planting start inside {years[0]}-{years[-1]}: "
                         "give one (--planting-start)")
    area, src = (float(area_km2), "given") if area_km2 else (LOESS_PLATEAU_KM2,
                                                             "Loess Plateau (default)")
    point = replicate_params(cal.params, (), np.empty((1, 0)))  # the estimate, batch of one
    est = scenario_effects(point, cal.forcing, planting_start, area)
    reps, used = None, 0
    if B:
        if progress:
            progress(f"block bootstrap of {cal.site}: B = {B} staged refits")
        boot = site_bootstrap(cal, B=B, seed=seed, block_length=block_length)
        ok = np.asarray(boot.used, bool)
        vals = np.asarray(boot.replicates)[ok][:, :len(boot.names)]
        used = int(ok.sum())
        if used >= 2:
            if progress:
                progress(f"{used} replicates x {len(SCENARIOS)} scenarios (one batched "
                         "forward call each)")
            reps = scenario_effects(replicate_params(cal.params, boot.names, vals),
                                    cal.forcing, planting_start, area)
    rows = []
    for k in SCENARIOS:
        for q, v in est[k].items():
            if q == "failed_solves":
                continue
            row = {"scenario": k, "quantity": q, "estimate": float(v[0]),
                   "lo": float("nan"), "hi": float("nan")}
            if reps is not None:
                r = reps[k][q]
                good = (np.asarray(reps[k]["failed_solves"]) == 0) & np.isfinite(r)
                if good.sum() >= 2:
                    row["lo"], row["hi"] = (float(x) for x in np.asarray(
                        percentile_interval(jnp.asarray(r), jnp.asarray(good))))
            rows.append(row)
    cost = WORLD_BANK_USD_PER_HA * area * 100.0
    return ScenarioResult(cal.site, area, src, planting_start,
                          (int(years[0]), int(years[-1])), rows, B, used, cost)

