"""Plausibility checks of user inputs that are valid but probably not what was meant.

Pure functions: inputs in, a list of one-line warnings out (the CLI prints them, prefixed
by ``warning:``).  Hard errors stay with the loaders (``DataError``, ``ParameterError``,
``CalibrationError``); these checks never stop a run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["observation_warnings", "year_range_warnings", "params_file_warnings"]

# Years more than this beyond the first or last data year trigger a warning.
FAR_YEARS = 10


def observation_warnings(obs, path: str | Path | None) -> list[str]:
    """Warnings about a site's observations (``Observations``) read from ``path``.

    - every cover value <= 1 %: probably fractions (0.28) given where percent (28) is meant;
    - runoff above the same year's rainfall.
    """
    out = []
    name = Path(path).name if path is not None else "the data"
    m = obs.masks["veg_cover_%"]
    cover = obs.values["veg_cover_%"][m]
    if cover.size and np.all(cover <= 1.0):
        shown = ", ".join(f"{c:g}" for c in cover[:4]) + (", ..." if cover.size > 4 else "")
        out.append(f"{name}: every veg_cover_% value is <= 1 ({shown}); cover is in "
                   "percent (0-100): "
                   "were fractions given? (0.28 means 0.28 %, not 28 %)")
    both = obs.masks["runoff_mm"] & obs.masks["rainfall_mm"]
    bad = both & (obs.values["runoff_mm"] > obs.values["rainfall_mm"])
    if bad.any():
        years = ", ".join(str(int(y)) for y in obs.years[bad][:6])
        out.append(f"{name}: runoff_mm exceeds rainfall_mm in {int(bad.sum())} year(s) "
                   f"({years}); check the columns and units (both mm/yr)")
    return out


def year_range_warnings(start: int, end: int, data_years, path: str | Path | None) -> list[str]:
    """Warn when the simulated years lie far from (or outside) every data year: the forcing
    there is the site's mean rainfall and the initial state is the prior's, whatever the
    year."""
    if data_years is None or len(data_years) == 0:
        return [f"years {start}-{end}: the site has no data rows; the forcing is the site's "
                "mean annual rainfall and the initial state the prior's"]
    y0, y1 = int(np.min(data_years)), int(np.max(data_years))
    name = Path(path).name if path is not None else "the data"
    if end < y0 or start > y1:
        return [f"years {start}-{end} lie outside the data of {name} ({y0}-{y1}): no observed "
                "rainfall is used, and the run starts in "
                f"{start} from the prior's initial state (set for the data period)"]
    if start < y0 - FAR_YEARS or end > y1 + FAR_YEARS:
        return [f"years {start}-{end} reach well beyond the data of {name} ({y0}-{y1}): "
                "outside it the rainfall is the site's mean"]
    return []


def params_file_warnings(path: str | Path, region: str) -> list[str]:
    """Warnings about a ``--params`` JSON that the loader would accept: no parameter set at
    all (``{}``), or values given as text or true/false that would be coerced to numbers.
    A file that is not valid JSON gives no warning here (the loader reports it)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(doc, Mapping):
        return []
    block = doc.get(region, doc)
    if not isinstance(block, Mapping):
        return []
    names = [k for k in block if not str(k).startswith("_") and k != region]
    if not names:
        return [f"{path.name}: sets no parameter value; the prior values of {region} are used"]
    out = []
    for name in names:
        entry = block[name]
        raw = entry.get("value") if isinstance(entry, Mapping) else entry
        if isinstance(raw, bool) or isinstance(raw, str):
            out.append(f"{path.name}: parameter {name!r} has value {raw!r} ({type(raw).__name__}"
                       "), read as a number; write it as a JSON number")
    return out
