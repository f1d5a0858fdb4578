"""The Loess Plateau against the Chihuahuan comparator: thresholds, bistable range,
recovery after a drought, the water cost of cover and the SOM response, side by side.

Each region is a parameter set at a MAP (:func:`default_region_sets`: the LoessPlateau
prior centre at 450 mm, the Yanhe MAP, and the documented ChihuahuanDesert set
``data/parameter_sets/jornada_drought_collapse.json`` at 250 mm, the Jornada MAP; or the
calibrated sites of a sites table).  :func:`region_metrics` computes, in the units of
``REGION_METRICS``:

* the thresholds of ``science.thresholds`` (V_crit, P_veg, P_bare_unstable, the bistable
  width, theta*, SOM*);
* ``V_eq``, ``SOM_eq``: the stable vegetated equilibrium at the MAP (the largest stable
  cover);
* ``recovery_years``: from that equilibrium, a three-year drought at 60 % of the MAP, then
  the MAP again: years after the drought until the cover is back within 90 % of its
  pre-drought value (NaN: not within 40 years, the drought tipped the site to bare soil);
* ``water_cost_mm_per_pct``: planting (effort 1) for 30 years from 5 % cover at the MAP:
  the least-squares slope of annual water yield on cover (mm of water yield per % cover;
  negative: cover costs water);
* ``som_gain_20yr``: the 0-20 cm SOM gain over those 30 years' first 20 (% SOM).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np

from ..model import Climate, Params, equilibria, load_param_space, make_forcing
from ..solve import simulate
from ._thresholds import thresholds

__all__ = ["REGION_METRICS", "region_metrics", "default_region_sets", "compare_regions"]

REGION_METRICS = {
    "MAP_mm": "mm/yr", "V_crit": "cover fraction", "P_veg": "mm/yr",
    "P_bare_unstable": "mm/yr", "bistable_width": "mm/yr", "theta_star": "m3/m3",
    "SOM_star": "%", "V_eq": "cover fraction", "SOM_eq": "%",
    "recovery_years": "yr", "water_cost_mm_per_pct": "mm/yr per % cover",
    "som_gain_20yr": "% SOM",
}


def default_region_sets(dtype=jnp.float64) -> dict[str, tuple[str, Params, float, str]]:
    """``{label: (region, params, MAP, source)}`` of the default comparison."""
    from .._paths import data_path

    lp = load_param_space("LoessPlateau")
    cd = load_param_space("ChihuahuanDesert")
    path = data_path("parameter_sets/jornada_drought_collapse.json")
    block = json.loads(path.read_text())["ChihuahuanDesert"]
    jornada = cd.prior_values(dtype).replace(
        **{k: float(v["value"]) for k, v in block.items()})
    return {"Loess Plateau": ("LoessPlateau", lp.prior_values(dtype), 450.0,
                              "LoessPlateau prior centre at the Yanhe MAP (450 mm)"),
            "Chihuahuan Desert": ("ChihuahuanDesert", jornada, 250.0,
                                  f"documented set {path.name} at the Jornada MAP (250 mm)")}


def region_metrics(p: Params, MAP: float, intensity: float = 1.0) -> dict[str, float]:
    """Every ``REGION_METRICS`` entry of one parameter set at ``MAP`` (module docstring)."""
    out = {"MAP_mm": float(MAP)}
    th = {k: float(v) for k, v in thresholds(p, MAP, intensity).items()}
    out.update({k: th[k] for k in ("V_crit", "P_veg", "P_bare_unstable", "bistable_width",
                                   "theta_star", "SOM_star")})
    eq = equilibria(p, Climate(jnp.asarray(MAP, p.dtype), jnp.asarray(intensity, p.dtype)))
    V, S, st = (np.asarray(a) for a in (eq.V, eq.SOM, eq.stable))
    veg = np.flatnonzero(st & np.isfinite(V) & (V > 1e-6))
    if veg.size:
        k = veg[np.argmax(V[veg])]
        out["V_eq"], out["SOM_eq"] = float(V[k]), float(S[k])
    else:
        out["V_eq"] = out["SOM_eq"] = float("nan")
    out["recovery_years"] = _recovery(p, MAP, intensity, out["V_eq"], out["SOM_eq"])
    wc, gain = _planting(p, MAP, intensity)
    out["water_cost_mm_per_pct"], out["som_gain_20yr"] = wc, gain
    return out


def _recovery(p, MAP, intensity, V_eq, SOM_eq, pre=10, dry=3, after=40) -> float:
    if not np.isfinite(V_eq):
        return float("nan")
    n = pre + dry + after
    rain = np.full(n, float(MAP))
    rain[pre:pre + dry] = 0.6 * MAP
    f = make_forcing(2000, 2000 + n - 1, rain, intensity, 0.0, 0.0, dtype=p.dtype)
    sim = simulate(p.replace(V0=V_eq, SOM0=SOM_eq), f, method="rk4")
    V = np.asarray(sim.V)
    ref = V[pre - 1]
    back = np.flatnonzero(V[pre + dry:] >= 0.9 * ref)
    return float(back[0] + 1) if back.size else float("nan")


def _planting(p, MAP, intensity, years=30) -> tuple[float, float]:
    f = make_forcing(2000, 2000 + years - 1, float(MAP), intensity, 1.0, 0.0, dtype=p.dtype)
    sim = simulate(p.replace(V0=0.05), f, method="rk4")
    V, wy, som = (np.asarray(a) for a in (sim.V, sim.water_yield, sim.SOM))
    x, y = 100.0 * V[3:], wy[3:]
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 1e-6 else float("nan")
    return slope, float(som[19] - som[0])


def compare_regions(sets: dict | None = None) -> list[dict]:
    """One row per region (``sets``: ``{label: (region, params, MAP, source)}``, default
    :func:`default_region_sets`): label, region, source and every ``REGION_METRICS``."""
    sets = default_region_sets() if sets is None else sets
    rows = []
    for label, (region, p, MAP, source) in sets.items():
        rows.append({"label": label, "region": region, "source": source,
                     **region_metrics(p, MAP)})
    return rows
