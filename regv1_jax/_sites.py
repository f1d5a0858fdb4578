"""Named sites: which region, data file and forcing settings a site uses (``data/sites.json``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ._data import DataError, Observations, load_site, load_sites_registry
from ._forcing import Forcing, grain_for_green, make_forcing
from ._paths import data_dir, data_path

__all__ = ["Site", "get_site", "site_forcing"]


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


def _registry() -> dict:
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
    registry = _registry()
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
        area_km2=entry.get("area_km2"),
        data_file=path,
        observations=obs,
    )


def site_forcing(site: Site, start: int, end: int, planting: bool = True, dtype=None
                 ) -> Forcing:
    """Annual forcing of a site: observed rainfall where the data have it, else the MAP;
    the site's storm intensity; Grain for Green planting from the site's start year (when
    ``planting``); a constant engineering share."""
    rain = {}
    if site.observations is not None:
        o = site.observations
        m = o.masks["rainfall_mm"]
        rain = {int(y): float(v) for y, v in zip(o.years[m], o.values["rainfall_mm"][m])}
    return make_forcing(
        start, end,
        rainfall=rain,
        rainfall_fill=site.MAP_mm,
        intensity=site.intensity,
        psi_plant=grain_for_green(start, end, site.planting_start if planting else None),
        psi_eng=site.psi_eng,
        dtype=dtype,
    )
