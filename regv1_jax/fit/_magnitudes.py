"""The seed's regional magnitudes of a calibrated parameter set: runoff and water-yield
decrease, SOC sequestration and its timing, hydrological stabilisation."""

from __future__ import annotations

import jax
import numpy as np

from ..model import (
    Forcing,
    Layout,
    Params,
    make_forcing,
    rates,
    soc_stock,
    year_drivers,
)
from ..solve import AbstractSolver, Simulation, simulate, solver_from

__all__ = ["REGION_AREAS_KM2", "regional_magnitudes"]

# Areas used to turn depths into regional volumes (stated assumptions, docs/methods.md).
REGION_AREAS_KM2: dict[str, dict[str, float | None]] = {
    # Loess Plateau extent commonly given as ~640,000 km2.
    "LoessPlateau": {"regional": 640_000.0,
                     # GTGP area implied by 0.712 Tg C/yr at ~0.35 t C/ha/yr (assumption)
                     "gtgp": 20_000.0},
    "ChihuahuanDesert": {"regional": 450_000.0, "gtgp": None},
}


def _annual_soc_change(sim: Simulation, params: Params) -> np.ndarray:
    """Change of the 0-40 cm SOC stock between mid-years, kg C m^-2 yr^-1."""
    return np.diff(soc_stock(np.asarray(sim.SOM_layers), float(params.rho_b), xp=np))


def regional_magnitudes(params: Params, forcing: Forcing, region: str,
                        planting_start: int | None, method: str = "tsit5",
                        solver: AbstractSolver | None = None) -> dict:
    """The seed's regional targets computed from the calibrated model.

    Definitions (docs/methods.md): runoff decrease = mean annual runoff before planting
    minus after (first year of planting + 3 onwards), times the regional area; vegetation-
    induced water-yield decrease = mean over the planting years of WY(no planting) -
    WY(planting); SOC sequestration = mean 0-40 cm SOC gain over the planting years times
    the GTGP area; SOC timing = years after planting start to reach half of the 100-year
    SOC gain; hydrological stabilisation = 3 e-folding times of the soil-water bucket.
    Solves with ``solver`` (default: the one of ``method``).
    """
    solver = solver or solver_from(method)
    areas = REGION_AREAS_KM2.get(region, {"regional": None, "gtgp": None})
    out: dict = {"areas_km2": areas}
    sim = simulate(params, forcing, solver=solver)
    years = np.asarray(sim.years)
    if planting_start is None or not (years[0] < planting_start <= years[-1]):
        out["note"] = "no planting start inside the simulated years: scenario targets skipped"
        return out
    off = simulate(params, make_forcing(forcing.start, forcing.end, forcing.rainfall,
                                        forcing.intensity, 0.0, forcing.psi_eng), solver=solver)
    before = years < planting_start
    after = years >= planting_start + 3
    dq_mm = float(np.mean(np.asarray(sim.runoff)[before]) - np.mean(np.asarray(sim.runoff)[after]))
    A = areas["regional"]
    out["runoff_decrease"] = {
        "mm_per_yr": dq_mm,
        "m3_per_yr": dq_mm * 1e-3 * A * 1e6 if A else None,
        "target_m3_per_yr": 3.9e8,
    }
    planting = years >= planting_start
    dwy = np.asarray(off.water_yield)[planting] - np.asarray(sim.water_yield)[planting]
    out["water_yield_decrease"] = {"mm_per_yr": float(np.mean(dwy)),
                                   "target_mm_per_yr": [1.0, 1.6]}
    dsoc = _annual_soc_change(sim, params)[planting[1:]]
    rate = float(np.mean(dsoc)) if dsoc.size else float("nan")
    G = areas.get("gtgp")
    out["soc_sequestration"] = {
        "kgC_per_m2_per_yr": rate,
        "tC_per_ha_per_yr": rate * 10.0,
        "TgC_per_yr": rate * G * 1e6 / 1e9 if G else None,
        "target_TgC_per_yr": 0.712,
    }
    # SOC timing: 100 years from the planting start with mean rainfall.
    f_long = make_forcing(planting_start, planting_start + 99,
                          float(np.mean(np.asarray(forcing.rainfall))),
                          float(np.mean(np.asarray(forcing.intensity))), 1.0,
                          float(np.mean(np.asarray(forcing.psi_eng))))
    i0 = int(np.searchsorted(years, planting_start))
    p_long = params.replace(V0=float(sim.V[i0]), SOM0=float(sim.SOM[i0]))
    long = simulate(p_long, f_long, solver=solver)
    soc = np.cumsum(np.concatenate([[0.0], _annual_soc_change(long, p_long)]))
    gain = soc[-1] - soc[0]
    t_half = float(np.argmax(soc - soc[0] >= 0.5 * gain)) if gain > 0 else float("nan")
    out["soc_timing"] = {"years_to_half_gain": t_half, "target_fast_phase_years": [10, 23],
                         "gain_first_20yr_share": float((soc[20] - soc[0]) / gain)
                         if gain > 0 else float("nan")}
    out["hydrology_stabilisation"] = _bucket_timescale(params, sim, forcing)
    return out


def _bucket_timescale(params: Params, sim: Simulation, forcing: Forcing) -> dict:
    """3 e-folding times of the soil-water bucket, linearised at the final year's state."""
    layout = Layout()
    # A state with the final year's V, theta and SOM; derivative of dtheta/dt in theta.
    y = np.zeros(layout.size)
    y[0] = float(sim.V[-1])
    y[4] = float(sim.theta[-1])
    som = float(sim.SOM[-1])
    y[layout.y] = som
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    d = year_drivers(p, forcing.numpy(), -1)

    def dth(th):  # numpy (the reference equations): eager JAX ops cost ~1 s here
        z = y.copy()
        z[4] = th
        return rates(z, p, d, layout, xp=np)[4]

    h = 1e-6 * max(abs(y[4]), 1e-3)
    k = -float((dth(y[4] + h) - dth(y[4] - h)) / (2 * h))  # central difference
    tau = 1.0 / k if k > 0 else float("inf")
    return {"efold_years": tau, "three_efold_years": 3 * tau, "target_years": 3.0}
