"""The seed's validation-site table (ranges such as ``35–45``) and the site registry JSON."""

from __future__ import annotations

import json
import math
import re

import pandas as pd

from .._paths import data_path
from ._observations import (
    DataError,
    _fail,
    _is_blank_row,
    _parse_number,
    _read_raw,
    _resolve,
    _where,
)

__all__ = ["parse_range", "read_validation_sites", "load_sites_registry"]

_DASHES = "\u2013\u2014"  # en dash, em dash
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_RANGE_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:-\s*({_NUMBER})\s*)?$")


def _parse_range(text: str, where: str) -> tuple[float, float]:
    norm = text.strip()
    for dash in _DASHES:
        norm = norm.replace(dash, "-")
    match = _RANGE_RE.match(norm)
    if match is None:
        raise DataError(f"{where}: cannot parse {text!r} as a number or a range 'lo–hi'")
    lo = float(match.group(1))
    hi = float(match.group(2)) if match.group(2) is not None else lo
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"{where}: non-finite bound in {text!r}")
    if lo > hi:
        raise DataError(f"{where}: range {text!r} has lower bound {lo:g} > upper bound {hi:g}")
    return lo, hi


def parse_range(text: str) -> tuple[float, float]:
    """Parse a range such as ``"35–45"`` (en dash), ``"35-45"``, ``"0.16–0.18"`` or ``"400"``.

    Arguments
    ---------
    text : str
        Number or ``lo–hi`` range; an en dash, em dash or hyphen separates the bounds.

    Returns
    -------
    tuple[float, float]
        ``(lo, hi)``; a single number gives ``(x, x)``.

    Raises
    ------
    DataError
        If the text is not a number or range, or if ``lo > hi``.
    """
    return _parse_range(text, "range")


_VALIDATION_TEXT = ("site", "climate_zone")
_VALIDATION_NUMERIC = ("MAP_mm",)


def read_validation_sites(path) -> pd.DataFrame:
    """Read the validation-site table (``validation_sites.csv``).

    Arguments
    ---------
    path : str or pathlib.Path
        CSV with columns ``site``, ``MAP_mm`` (mm yr^-1), optionally ``climate_zone``, and any
        number of range columns (``years``, ``V_crit_est_%``, ``SOM_star_est_%``,
        ``theta_star_est``, ...). A bare file name is looked up in the bundled data folder.

    Returns
    -------
    pandas.DataFrame
        One row per site, in file order. Text columns are kept; ``MAP_mm`` is float; each range
        column ``X`` is replaced by floats ``X_low`` and ``X_high`` (``years`` gives int
        ``years_low`` and ``years_high``).

    Raises
    ------
    DataError
        On a missing ``site``/``MAP_mm`` column, an empty or duplicate site, a non-numeric
        ``MAP_mm``, an unparsable range, ``lo > hi`` or non-integer years; the message names
        the file, line and column.
    """
    path = _resolve(path)
    df = _read_raw(path)
    for col in ("site", "MAP_mm"):
        if col not in df.columns:
            raise _fail(path, 1, col, "missing required column")
    range_cols = [c for c in df.columns if c not in _VALIDATION_TEXT + _VALIDATION_NUMERIC]
    records = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(df.to_dict("records")):
        line = i + 2
        if _is_blank_row(raw):
            continue
        site = raw["site"]
        if site == "":
            raise _fail(path, line, "site", "empty site name")
        if site in seen:
            raise _fail(path, line, "site", f"duplicate site {site!r} (first on line {seen[site]})")
        seen[site] = line
        rec: dict = {c: raw[c] for c in df.columns if c in _VALIDATION_TEXT}
        map_mm = _parse_number(raw["MAP_mm"], path, line, "MAP_mm")
        if not math.isnan(map_mm) and map_mm < 0:
            raise _fail(path, line, "MAP_mm", f"negative value {map_mm:g}")
        rec["MAP_mm"] = map_mm
        for col in range_cols:
            lo, hi = _parse_range(raw[col], _where(path, line, col))
            if col == "years":
                if lo != int(lo) or hi != int(hi):
                    raise _fail(path, line, col, f"non-integer years {raw[col]!r}")
                lo, hi = int(lo), int(hi)
            rec[f"{col}_low"] = lo
            rec[f"{col}_high"] = hi
        records.append(rec)
    out = pd.DataFrame.from_records(records)
    if "years_low" in out.columns:
        out = out.astype({"years_low": "int64", "years_high": "int64"})
    return out


_SITE_REQUIRED = ("region", "MAP_mm")


def load_sites_registry(path=None) -> dict:
    """Load the registry of named sites (``data/sites.json``).

    Arguments
    ---------
    path : str or pathlib.Path, optional
        JSON file; defaults to the bundled ``sites.json``.

    Returns
    -------
    dict
        Site name -> dict of settings (``region``, ``validation_site``, ``data_file``,
        ``MAP_mm`` in mm yr^-1, ``storm_intensity_mm_min`` in mm min^-1, ``planting_start``,
        ``psi_eng`` in 0..1, ``area_km2``, and notes). Keys starting with "_" (metadata) are
        dropped.

    Raises
    ------
    DataError
        If the file is not valid JSON or a site lacks ``region`` or ``MAP_mm``.
    """
    path = data_path("sites.json") if path is None else _resolve(path)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}, line {err.lineno}: invalid JSON: {err.msg}") from err
    if not isinstance(raw, dict):
        raise DataError(f"{path}: top level must be a JSON object")
    sites = {}
    for name, entry in raw.items():
        if name.startswith("_"):
            continue
        if not isinstance(entry, dict):
            raise DataError(f"{path}: site {name!r} must be a JSON object")
        for key in _SITE_REQUIRED:
            if key not in entry:
                raise DataError(f"{path}: site {name!r} lacks the required key {key!r}")
        sites[name] = entry
    return sites
