"""Named sites: which region, data file and forcing settings a site uses (``data/sites.json``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from .._paths import data_dir, data_path
from ..model import Forcing, grain_for_green, make_forcing
from ._observations import DataError, Observations, load_site
from ._tables import load_sites_registry

__all__ = ["Site", "get_site", "site_forcing", "read_forcing_csv", "FORCING_RULE",
           "site_registry"]


@dataclasses.dataclass(frozen=True)
class Site:
    """A site's settings; ``observations`` is None when no data file is bundled or given."""

    name: str
    region: str
    MAP_mm: float
    intensity: float
    planting_start: int | None
    psi_eng: float
    area_km2: float | None
    data_file: Path | None
    observations: Observations | None


def site_registry() -> dict:
    """The bundled sites and the synthetic twins (``data/synthetic/sites_synthetic.json``)."""
    out = {}
    for path in (data_path("sites.json"), data_dir() / "synthetic" / "sites_synthetic.json"):
        if path.exists():
            for name, entry in load_sites_registry(path).items():
                out[name] = {**entry, "_folder": path.parent}
    return out


def get_site(name: str, data: str | Path | None = None, region: str | None = None) -> Site:
    """Settings and observations of site ``name``.

    Arguments:
        name: a site of ``data/sites.json`` (e.g. ``"Yanhe-basin"``), or a location of the
            CSV ``data`` when that is given (then ``region`` must be given too, unless the
            name is also in the registry).
        data: CSV in the seed's schema overriding the site's bundled file.
        region: prior region overriding the registry's.
    Raises:
        DataError naming the known sites (or the file's locations) when ``name`` is unknown.
    """
    registry = site_registry()
    entry = registry.get(name)
    if entry is None and data is None:
        raise DataError(f"unknown site {name!r}; known sites: {sorted(registry)} "
                        "(or pass a CSV with --data and a --region)")
    entry = dict(entry or {})
    if region is None:
        region = entry.get("region")
        if region is None:
            raise DataError(f"site {name!r} is not in the registry: give its region")
    path = Path(data) if data is not None else (
        entry["_folder"] / entry["data_file"] if entry.get("data_file") else None)
    obs = load_site(path, name) if path is not None else None
    MAP = entry.get("MAP_mm")
    if MAP is None:
        rain = obs.values["rainfall_mm"][obs.masks["rainfall_mm"]] if obs is not None else []
        if len(rain) == 0:
            raise DataError(f"site {name!r}: no MAP_mm in the registry and no rainfall_mm in "
                            f"{path}")
        MAP = float(np.mean(rain))
    return Site(
        name=name,
        region=region,
        MAP_mm=float(MAP),
        intensity=float(entry.get("storm_intensity_mm_min", 1.0)),
        planting_start=entry.get("planting_start"),
        psi_eng=float(entry.get("psi_eng", 0.0)),
        area_km2=None if entry.get("area_km2") is None else float(entry["area_km2"]),
        data_file=path,
        observations=obs,
    )


FORCING_RULE = (
    "per-year forcing columns (storm_intensity_mm_min, psi_eng, psi_plant; from the "
    "observations CSV or --forcing, --forcing winning): a year without a value takes the "
    "last earlier year's value; years before the first value take the site's constant "
    "(registry storm_intensity_mm_min, psi_eng; for psi_plant the Grain-for-Green "
    "schedule). Rainfall: observed where given, else the site's MAP.")


def read_forcing_csv(path) -> dict[str, dict[int, float]]:
    """A forcing CSV: ``year`` plus any of ``rainfall_mm``, ``storm_intensity_mm_min``,
    ``psi_eng``, ``psi_plant`` (blank cells: missing).  Returns ``{column: {year: value}}``.
    Raises DataError naming the file, line and column."""
    import pandas as pd

    path = Path(path)
    allowed = ("rainfall_mm", "storm_intensity_mm_min", "psi_eng", "psi_plant")
    bounds = {"rainfall_mm": (0.0, None), "storm_intensity_mm_min": (0.0, None),
              "psi_eng": (0.0, 1.0), "psi_plant": (0.0, 1.0)}
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from err
    cols = [c.strip() for c in df.columns]
    if "year" not in cols:
        raise DataError(f"{path}, line 1: missing column 'year'")
    unknown = [c for c in cols if c != "year" and c not in allowed]
    if unknown:
        raise DataError(f"{path}, line 1, column {unknown[0]!r}: unknown column; allowed "
                        f"are year, {', '.join(allowed)}")
    df.columns = cols
    out: dict[str, dict[int, float]] = {c: {} for c in cols if c != "year"}
    for i, row in enumerate(df.to_dict("records")):
        line = i + 2
        try:
            year = int(str(row["year"]).strip())
        except ValueError:
            raise DataError(f"{path}, line {line}, column 'year': not an integer year "
                            f"({row['year']!r})") from None
        for c in out:
            text = str(row[c]).strip()
            if not text:
                continue
            try:
                v = float(text)
            except ValueError:
                raise DataError(f"{path}, line {line}, column {c!r}: not a number "
                                f"({text!r})") from None
            lo, hi = bounds[c]
            if not np.isfinite(v) or v < lo or (hi is not None and v > hi) or (
                    c == "storm_intensity_mm_min" and v <= 0):
                raise DataError(f"{path}, line {line}, column {c!r}: {v:g} outside "
                                f"[{lo}, {hi if hi is not None else 'inf'}]"
                                f"{' (must be > 0)' if c == 'storm_intensity_mm_min' else ''}")
            if year in out[c]:
                raise DataError(f"{path}, line {line}: year {year} appears twice")
            out[c][year] = v
    return out


def _fill(years, given: dict[int, float], before) -> np.ndarray:
    """``given`` on ``years``: missing years carry the last earlier value forward; years
    before the first given value take ``before`` (an array over ``years``)."""
    out = np.asarray(before, float).copy()
    last = None
    for i, y in enumerate(years):
        if int(y) in given:
            last = given[int(y)]
        if last is not None:
            out[i] = last
    return out


def site_forcing(site: Site, start: int, end: int, planting: bool = True, dtype=None,
                 forcing_table: dict[str, dict[int, float]] | None = None) -> Forcing:
    """Annual forcing of a site: observed rainfall where the data have it, else the MAP;
    the site's storm intensity, engineering share and Grain for Green planting (from the
    site's start year, when ``planting``), each replaced year by year by the per-year
    forcing columns of the observations or of ``forcing_table`` (``read_forcing_csv``),
    with the rule of ``FORCING_RULE`` for years without a value."""
    years = np.arange(start, end + 1)
    given: dict[str, dict[int, float]] = {}
    rain = {}
    if site.observations is not None:
        o = site.observations
        m = o.masks["rainfall_mm"]
        rain = {int(y): float(v) for y, v in zip(o.years[m], o.values["rainfall_mm"][m])}
        for col, arr in o.extra.items():
            if col in ("storm_intensity_mm_min", "psi_eng", "psi_plant"):
                ok = np.isfinite(arr)
                if ok.any():
                    given[col] = {int(y): float(v) for y, v in zip(o.years[ok], arr[ok])}
    for col, table in (forcing_table or {}).items():
        if col == "rainfall_mm":
            rain = {**rain, **table}
        elif table:
            given[col] = {**given.get(col, {}), **table}
    psi_plant = np.asarray(grain_for_green(start, end, site.planting_start if planting
                                           else None), float)
    intensity = np.full(len(years), site.intensity)
    psi_eng = np.full(len(years), site.psi_eng)
    if "storm_intensity_mm_min" in given:
        intensity = _fill(years, given["storm_intensity_mm_min"], intensity)
    if "psi_eng" in given:
        psi_eng = _fill(years, given["psi_eng"], psi_eng)
    if "psi_plant" in given and planting:
        psi_plant = _fill(years, given["psi_plant"], psi_plant)
    return make_forcing(
        start, end,
        rainfall=rain,
        rainfall_fill=site.MAP_mm,
        intensity=intensity,
        psi_plant=psi_plant,
        psi_eng=psi_eng,
        dtype=dtype,
    )
