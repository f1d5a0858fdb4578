"""Many sites in one call: a sites table and the staged fits of all its sites at once.

A **sites table** is a CSV with one row per site:

=====================  ===========================================================
column                 meaning
=====================  ===========================================================
``site``               the site's name (its ``location`` in the data file, unless a
                       ``location`` column gives another)
``region``             prior region (``LoessPlateau``, ``ChihuahuanDesert``)
``data_file``          observations CSV in the seed's schema (relative paths are
                       relative to the table's folder)
``MAP_mm``             mean annual rainfall, mm/yr (blank: the mean of the data's
                       ``rainfall_mm``)
``area_km2``           optional: catchment area (gauge columns, regional numbers)
``forcing_file``       optional: per-year forcing CSV (``--forcing``'s format)
``planting_start``     optional: first year of Grain for Green planting (blank: none)
``slope_deg``,         optional covariates of the scaling laws (the seed's list:
``initial_degradation``, slope, initial degradation, storm intensity)
``storm_intensity_mm_min``
=====================  ===========================================================

:func:`calibrate_many` calibrates every site with the site calibration's own steps
(``fit.site_problem``, ``fit.prepare_fit``, ``fit.finish_fit``, ``fit.finish_site``) but
one compiled call per region for all the sites' staged fits (``fit.fit_sites``: a
``vmap`` over the sites, each padded at its end to the longest record, the padding
masked; on CPU each evaluation is one kernel call with a forcing per member: the same
numbers as one site at a time, tests/test_science.py).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._traces import cached
from ..fit import (
    CalibrationConfig,
    SiteCalibration,
    Targets,
    finish_fit,
    finish_site,
    fit_sites,
    prepare_fit,
    site_problem,
)
from ..io import DataError, Site, convert_gauge, load_site, read_forcing_csv, site_forcing
from ..model import Forcing, ParameterError, load_param_space

__all__ = ["SiteSpec", "SITES_COLUMNS", "COVARIATES", "read_sites_table", "site_of",
           "calibrate_many", "pad_forcing", "pad_targets"]

SITES_COLUMNS = ("site", "region", "data_file")  # required
COVARIATES = ("slope_deg", "initial_degradation", "storm_intensity_mm_min")
OPTIONAL = ("location", "MAP_mm", "area_km2", "forcing_file", "planting_start") + COVARIATES


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """One row of a sites table (paths resolved)."""

    site: str
    region: str
    data_file: Path
    MAP_mm: float | None = None
    area_km2: float | None = None
    forcing_file: Path | None = None
    planting_start: int | None = None
    location: str | None = None
    covariates: dict = dataclasses.field(default_factory=dict)


def _number(path, line, col, text, *, integer=False, positive=False):
    try:
        v = int(text) if integer else float(text)
    except ValueError:
        raise DataError(f"{path}, line {line}: {col} = {text!r} is not a number") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise DataError(f"{path}, line {line}: {col} = {text!r} must be a finite "
                        + ("positive " if positive else "") + "number")
    return v


def read_sites_table(path: str | Path) -> list[SiteSpec]:
    """The sites of a sites table (see the module docstring).  Raises :class:`DataError`
    naming the file, the line and the column for a missing column, an unknown column, a
    duplicate site, a file that does not exist or a value that is not a number."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such sites table") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    missing = [c for c in SITES_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; a sites table needs "
                        f"{list(SITES_COLUMNS)} (optional: {list(OPTIONAL)})")
    unknown = [c for c in df.columns if c not in SITES_COLUMNS + OPTIONAL]
    if unknown:
        raise DataError(f"{path}: unknown column(s) {unknown}; known: "
                        f"{list(SITES_COLUMNS + OPTIONAL)}")
    if df.empty:
        raise DataError(f"{path}: no sites")
    out, seen = [], set()
    regions: set[str] = set()
    for i, row in df.iterrows():
        line = int(i) + 2
        name = row["site"].strip()
        if not name:
            raise DataError(f"{path}, line {line}: empty site name")
        if name in seen:
            raise DataError(f"{path}, line {line}: site {name!r} listed twice")
        seen.add(name)

        def file(col, row=row, line=line):
            text = row.get(col, "").strip()
            if not text:
                return None
            p = Path(text)
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                raise DataError(f"{path}, line {line}: {col} {text!r} not found ({p})")
            return p

        def num(col, row=row, line=line, **kw):
            text = row.get(col, "").strip()
            return None if not text else _number(path, line, col, text, **kw)

        region = row["region"].strip()
        if region not in regions:
            try:  # the priors name the region or say which exist
                load_param_space(region)
            except ParameterError as err:
                raise DataError(f"{path}, line {line}: site {name!r}: {err}") from None
            regions.add(region)
        data = file("data_file")
        if data is None:
            raise DataError(f"{path}, line {line}: site {name!r} has no data_file")
        cov = {c: num(c) for c in COVARIATES if num(c) is not None}
        start = num("planting_start", integer=True)
        out.append(SiteSpec(name, region, data, num("MAP_mm", positive=True),
                            num("area_km2", positive=True), file("forcing_file"),
                            None if start is None else int(start),
                            row.get("location", "").strip() or None, cov))
    return out


def site_of(spec: SiteSpec) -> Site:
    """The :class:`io.Site` of a sites-table row (observations loaded, gauge columns
    converted with its area)."""
    obs = load_site(spec.data_file, spec.location or spec.site)
    obs = convert_gauge(obs, spec.area_km2)
    MAP = spec.MAP_mm
    if MAP is None:
        rain = obs.values["rainfall_mm"][obs.masks["rainfall_mm"]]
        if rain.size == 0:
            raise DataError(f"site {spec.site!r}: no MAP_mm in the sites table and no "
                            f"rainfall_mm in {spec.data_file}")
        MAP = float(np.mean(rain))
    return Site(name=spec.site, region=spec.region, MAP_mm=float(MAP),
                intensity=float(spec.covariates.get("storm_intensity_mm_min", 1.0)),
                planting_start=spec.planting_start, psi_eng=0.0, area_km2=spec.area_km2,
                data_file=spec.data_file, observations=obs)


def pad_forcing(forcing: Forcing, n: int, start: int) -> Forcing:
    """``forcing`` extended to ``n`` years by repeating its last year, labelled from
    ``start`` (the fit does not read the calendar: a common label lets sites stack)."""
    k = n - forcing.n_years

    def ext(x):
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.repeat(x[-1:], k)]) if k else x

    return Forcing(ext(forcing.rainfall), ext(forcing.intensity), ext(forcing.psi_plant),
                   ext(forcing.psi_eng), start)


def pad_targets(targets: Targets, n: int) -> Targets:
    """``targets`` extended to ``n`` years with masked (unobserved) cells."""
    def ext(x, fill):
        k = n - x.shape[0]
        return jnp.concatenate([x, jnp.full((k,), fill, x.dtype)]) if k else x

    return Targets({v: ext(x, 0) for v, x in targets.values.items()},
                   {v: ext(m, False) for v, m in targets.masks.items()}, targets.sigma)


def calibrate_many(specs: Sequence[SiteSpec], cfg: CalibrationConfig = CalibrationConfig(),
                   dtype=jnp.float64, progress: Callable[[str], None] | None = None,
                   identifiability: bool = True) -> list[SiteCalibration]:
    """Calibrate every site (in the order given): per region, each site's host steps and
    one compiled call of all its sites' staged fits (``fit.fit_sites``)."""
    if not specs:
        raise DataError("no sites to calibrate")
    out: dict[str, SiteCalibration] = {}
    regions = list(dict.fromkeys(s.region for s in specs))
    for region in regions:
        group = [s for s in specs if s.region == region]
        space = load_param_space(region)
        prior = space.prior_values(dtype)
        probs, sites = [], []
        for spec in group:
            site = site_of(spec)
            obs = site.observations
            assert obs is not None  # site_of loads them
            ftable = read_forcing_csv(spec.forcing_file) if spec.forcing_file else None
            forcing = site_forcing(site, int(obs.years.min()), int(obs.years.max()),
                                   dtype=dtype, forcing_table=ftable)
            probs.append(site_problem(space, prior, forcing, obs, cfg))
            sites.append(site)
        n = max(p.forcing.n_years for p in probs)
        label = min(p.forcing.start for p in probs)
        key = jax.random.PRNGKey(cfg.seed)
        preps: list = []
        for spec, p in zip(group, probs):
            if progress:
                progress(f"{spec.site}: {p.forcing.start}-{p.forcing.end}, MAP "
                         f"{sites[len(preps)].MAP_mm:.0f} mm")
            preps.append(prepare_fit(space, p.cfg.stages, p.params,
                                     pad_forcing(p.forcing, n, label),
                                     pad_targets(p.train, n), p.cfg, key))
        t0 = time.perf_counter()
        if progress:
            progress(f"{region}: the staged fits of {len(group)} site(s) in one compiled "
                     "call")
        first = preps[0]

        def stack(*xs):
            return jnp.asarray(np.stack([np.asarray(x) for x in xs]))

        dyn = [(pr.args[0], pr.args[1], pr.args[2], pr.args[3], pr.args[4]) for pr in preps]
        stacked = jax.tree_util.tree_map(stack, *dyn)
        comparisons = (None if first.comparison is None else
                       jax.tree_util.tree_map(stack, *[pr.comparison for pr in preps]))
        fits = cached(fit_sites, "fit_sites", *stacked, first.args[5], space,
                      first.args[7], comparisons, kernels=first.kernels)
        fits, losses = (fits, None) if comparisons is None else fits
        if progress:
            progress(f"{region}: {len(group)} staged fit(s) in "
                     f"{time.perf_counter() - t0:.1f} s")
        for i, (spec, prob, prep, site) in enumerate(zip(group, probs, preps, sites)):
            fit_i = jax.tree_util.tree_map(lambda x, i=i: jnp.asarray(np.asarray(x)[i]),
                                           fits)
            fitted, stages = finish_fit(prep, fit_i, None if losses is None else
                                        np.asarray(losses)[i])
            out[spec.site] = finish_site(prob, fitted, stages, site.planting_start,
                                         identifiability=identifiability)
    return [out[s.site] for s in specs]
