"""The cross-site study of ``regv1 scaling``: calibrate a sites table, tabulate each site's
thresholds with bootstrap intervals, fit the seed's laws across the sites, and compare the
regions (library function first; the command is a thin layer)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ..fit import CalibrationConfig
from ._compare import default_region_sets, region_metrics
from ._laws import SEED_SIGNS, fit_linear, fit_power_law, interval_sd
from ._multisite import COVARIATES, SiteSpec, calibrate_many
from ._thresholds import thresholds_table

__all__ = ["ScalingStudy", "fit_laws", "scaling_study", "site_summaries"]

LINEAR_LAWS = ("V_crit", "theta_star", "SOM_star")


def _weights(rows, name):
    """Values and interval sds of ``name`` over the rows (NaN at sites where ``name`` is a
    parameter no stage calibrated: its value there is the prior's, not the data's)."""
    y = np.array([r[name] if r.get(f"{name}_calibrated", True) else np.nan for r in rows],
                 float)
    lo = np.array([r[f"{name}_lo"] for r in rows], float)
    hi = np.array([r[f"{name}_hi"] for r in rows], float)
    sd = np.asarray(interval_sd(lo, hi))
    weighted = bool(np.all(np.isfinite(sd[np.isfinite(y)]) & (sd[np.isfinite(y)] > 0)))
    if not weighted:  # no usable intervals: equal weights, said so
        sd = np.ones_like(y)
    return y, sd, weighted


def fit_laws(rows: list[dict], covariates: dict[str, Sequence[float]] | None = None
             ) -> dict[str, dict]:
    """The seed's laws over the threshold rows: ``V_crit``, ``theta_star``, ``SOM_star``
    linear in MAP (``V_crit`` also against ln MAP and, when given, with the covariates),
    ``eta1`` the power law; each site weighted by its interval (equal weights, and
    ``weighted: false``, when intervals are missing).  Laws that cannot be fitted (too few
    sites with finite values) carry an ``error``."""
    MAP = np.array([r["MAP_mm"] for r in rows], float)
    out: dict[str, dict] = {}

    def put(key, make, weighted):
        try:
            out[key] = make().as_dict() | {"weighted": weighted}
        except ValueError as err:
            out[key] = {"error": str(err), "coefficients": {}}

    def uncalibrated(name):
        if not any(f"{name}_calibrated" in r for r in rows):
            return False  # derived from every parameter (V_crit): no such flag
        n_cal = sum(bool(r.get(f"{name}_calibrated")) for r in rows)
        if n_cal < 3:
            out[name] = {"error": f"{name} was calibrated at {n_cal} of {len(rows)} site(s) "
                         "(where no stage fitted it, its value is the prior's, not the "
                         "data's); a law needs at least 3 calibrated sites",
                         "coefficients": {}}
            return True
        return False

    for name in LINEAR_LAWS:
        if uncalibrated(name):
            continue
        y, sd, w = _weights(rows, name)
        put(name, lambda y=y, sd=sd, name=name: fit_linear(
            name, MAP, y, sd, expected_sign=SEED_SIGNS.get(name)), w)
    y, sd, w = _weights(rows, "V_crit")
    put("V_crit (ln MAP)", lambda: fit_linear("V_crit", MAP, y, sd, log_map=True,
                                              expected_sign=-1), w)
    if covariates:
        put("V_crit (covariates)", lambda: fit_linear(
            "V_crit", MAP, y, sd, covariates=covariates, expected_sign=-1), w)
    if uncalibrated("eta1"):
        return out
    y, sd, w = _weights(rows, "eta1")
    put("eta1", lambda: fit_power_law(MAP, y, sd, law="eta1"), w)
    return out


@dataclasses.dataclass
class ScalingStudy:
    calibrations: list
    specs: list[SiteSpec]
    thresholds: list[dict]
    laws: dict[str, dict]
    regions: list[dict]
    sites: list[dict]


def site_summaries(cals, specs, MAPs) -> list[dict]:
    out = []
    for cal, spec, MAP in zip(cals, specs, MAPs):
        s = cal.screen or {}
        m = cal.metrics.get("veg_cover_%", {}).get("training", {})
        out.append({"site": cal.site, "region": cal.region, "MAP_mm": float(MAP),
                    "kept": s.get("kept", "seed stages (no search)"),
                    "R2_cover": m.get("R2_1to1") if m.get("n") else None,
                    "failures": list(cal.failures),
                    "stages": [{"name": r.name, "status": r.status, "fitted": list(r.fitted)}
                               for r in cal.stages],
                    "covariates": spec.covariates, "data_file": str(spec.data_file)})
    return out


def scaling_study(specs: Sequence[SiteSpec], cfg: CalibrationConfig = CalibrationConfig(),
                  *, B: int = 100, seed: int = 0, block_length: int | str = "auto",
                  progress: Callable[[str], None] | None = None) -> ScalingStudy:
    """Calibrate every site (``science.calibrate_many``), the thresholds table with ``B``
    bootstrap refits per site, the laws (:func:`fit_laws`; the covariates of the sites
    table when every site has them) and the regions compared (per region in the table,
    its calibrated site of median MAP; a region absent from the table by its default set,
    ``science.default_region_sets``)."""
    from ..io import DataError

    specs = list(specs)
    if len(specs) < 2:
        raise DataError(f"a scaling study needs at least 2 sites, got {len(specs)}")
    cals = calibrate_many(specs, cfg, progress=progress)
    from ._multisite import site_of

    sites = [site_of(s) for s in specs]
    MAPs = [s.MAP_mm for s in sites]
    if progress:
        progress(f"thresholds of {len(cals)} site(s), B = {B} bootstrap refits each")
    rows = thresholds_table(cals, MAPs, B=B, seed=seed, block_length=block_length,
                            intensities=[s.intensity for s in sites], progress=progress)
    cov: dict[str, Sequence[float]] = {
        c: [float(s.covariates[c]) for s in specs] for c in COVARIATES
        if all(c in s.covariates for s in specs)}
    laws = fit_laws(rows, cov or None)
    regions = []
    defaults = default_region_sets()
    for label, (region, p, MAP_d, source) in defaults.items():
        idx = [i for i, c in enumerate(cals) if c.region == region]
        if idx:
            k = sorted(idx, key=lambda i: MAPs[i])[len(idx) // 2]
            regions.append({"label": label, "region": region,
                            "source": f"calibrated site {cals[k].site} at its MAP",
                            **region_metrics(cals[k].params, MAPs[k], sites[k].intensity)})
        else:
            regions.append({"label": label, "region": region,
                            "source": f"{source} (no site of this region in the table)",
                            **region_metrics(p, MAP_d)})
    return ScalingStudy(cals, specs, rows, laws, regions, site_summaries(cals, specs, MAPs))


