"""Read and validate the observation CSVs of the seed's schema: one location's rows ->
:class:`Observations`.

pandas reads every cell as a raw string; this module checks each one and turns a location's
rows into an :class:`Observations` pytree of NumPy arrays with explicit masks. Missing cells
are NaN with mask False, never zeros. Every problem raises :class:`DataError` naming the file,
the line (as a person counts lines in the file, header = line 1) and the column.

CSV schema (one row per year and location, optionally one row per depth)::

    year          int     calendar year (required, non-decreasing within a location)
    location      str     site name, e.g. "Yanhe-basin" (required, non-empty)
    veg_cover_%   float   fractional vegetation cover, percent, 0..100
    SOM_%         float   soil organic matter, percent of soil mass, 0..100
                          (0-20 cm mean when depth_cm is blank; the layer's value otherwise)
    rainfall_mm   float   annual rainfall, mm yr^-1, >= 0 (forcing, not a target)
    runoff_mm     float   annual surface runoff, mm yr^-1, >= 0
    erosion_t/ha  float   annual sediment yield, t ha^-1 yr^-1, >= 0
    depth_cm      str     optional: blank, "0-10", "10-20" or "20-40" (en dash accepted)
    theta_m3/m3   float   optional: root-zone volumetric soil moisture, m^3 m^-3, 0..1
    source        str     optional: free-text provenance of the row
    storm_intensity_mm_min  float  optional forcing: storm intensity, mm min^-1, > 0
    psi_eng       float   optional forcing: engineering share (check dams, terraces), 0..1
    psi_plant     float   optional forcing: planting effort, 0..1
    runoff_m3     float   optional: gauged annual runoff volume, m^3 yr^-1, >= 0
                          (converted to runoff_mm with the catchment area)
    sediment_t    float   optional: gauged annual sediment load, t yr^-1, >= 0
                          (converted to erosion_t/ha with the catchment area)
    quality       str     optional: free-text quality flag of the row (kept, not used)

A gauge file (one with ``runoff_m3`` or ``sediment_t``) may leave out the observation
columns ``veg_cover_%``, ``SOM_%``, ``rainfall_mm``, ``runoff_mm``, ``erosion_t/ha``
(read as blank), so that a station record can be used as published.

The forcing and gauge columns are kept in ``Observations.extra`` (NaN where blank);
:func:`convert_gauge` turns the gauge columns into the model's units and
``regv1_jax._sites.site_forcing`` uses the forcing columns (rule for missing years there).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path

import equinox as eqx
import numpy as np
import pandas as pd

from .._paths import data_dir

__all__ = [
    "DEPTHS",
    "OBSERVED",
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "DataError",
    "EXTRA_COLUMNS",
    "FORCING_COLUMNS",
    "GAUGE_COLUMNS",
    "convert_gauge",
    "Observations",
    "load_site",
    "read_observations",
]

REQUIRED_COLUMNS = (
    "year",
    "location",
    "veg_cover_%",
    "SOM_%",
    "rainfall_mm",
    "runoff_mm",
    "erosion_t/ha",
)
FORCING_COLUMNS = ("storm_intensity_mm_min", "psi_eng", "psi_plant")
GAUGE_COLUMNS = ("runoff_m3", "sediment_t")
EXTRA_COLUMNS = FORCING_COLUMNS + GAUGE_COLUMNS
OPTIONAL_COLUMNS = ("depth_cm", "theta_m3/m3", "source", "quality") + EXTRA_COLUMNS
DEPTHS = ("0-10", "10-20", "20-40")
OBSERVED = (
    "veg_cover_%",
    "SOM_%",
    "SOM_0-10_%",
    "SOM_10-20_%",
    "SOM_20-40_%",
    "runoff_mm",
    "erosion_t/ha",
    "theta_m3/m3",
    "rainfall_mm",
)

# numeric columns other than year, with inclusive (lower, upper) bounds; None = unbounded
_NUMERIC_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "veg_cover_%": (0.0, 100.0),
    "SOM_%": (0.0, 100.0),
    "rainfall_mm": (0.0, None),
    "runoff_mm": (0.0, None),
    "erosion_t/ha": (0.0, None),
    "theta_m3/m3": (0.0, 1.0),
    "storm_intensity_mm_min": (0.0, None),
    "psi_eng": (0.0, 1.0),
    "psi_plant": (0.0, 1.0),
    "runoff_m3": (0.0, None),
    "sediment_t": (0.0, None),
}
# columns that belong to the year, not the depth: equal on every row of a year where given
_YEAR_COLUMNS = ("veg_cover_%", "rainfall_mm", "runoff_mm", "erosion_t/ha",
                 "theta_m3/m3") + EXTRA_COLUMNS


class DataError(ValueError):
    """A data file is malformed; the message names the file, line and column."""


def _where(path, line: int | None = None, column: str | None = None) -> str:
    """Format the location prefix of an error message."""
    text = str(path)
    if line is not None:
        text += f", line {line}"
    if column is not None:
        text += f", column {column!r}"
    return text


def _fail(path, line, column, message: str) -> DataError:
    return DataError(f"{_where(path, line, column)}: {message}")


def _resolve(path) -> Path:
    """Return ``path`` as a Path; a bare file name that does not exist is looked up in the
    bundled data folder."""
    p = Path(path)
    if not p.exists() and p.name == str(path) and (data_dir() / p.name).is_file():
        return data_dir() / p.name
    if not p.is_file():
        raise FileNotFoundError(f"data file not found: {p}")
    return p


def _read_raw(path: Path) -> pd.DataFrame:
    """Read a CSV as raw, stripped strings with blank lines kept (so row i is line i + 2)."""
    try:
        df = pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError as err:
        raise _fail(path, 1, None, "file is empty (no header line)") from err
    except pd.errors.ParserError as err:
        raise _fail(path, None, None, f"CSV parse error: {err}") from err
    except UnicodeDecodeError as err:
        raise _fail(path, None, None, f"not UTF-8 text: {err}") from err
    df.columns = [str(c).strip() for c in df.columns]
    return df.map(lambda v: v.strip() if isinstance(v, str) else "")


def _is_blank_row(row: Mapping[str, str]) -> bool:
    return all(v == "" for v in row.values())


def _parse_number(text: str, path, line: int, column: str) -> float:
    """Parse one numeric cell; blank -> NaN, garbage or nan/inf literals -> DataError."""
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, column, f"non-numeric value {text!r}") from None
    if not math.isfinite(value):
        raise _fail(
            path, line, column,
            f"non-finite literal {text!r}; leave the cell empty for a missing value",
        )
    return value


def _parse_int(text: str, path, line: int, column: str) -> int:
    """Parse an integer cell (e.g. a year); blank, non-numeric or fractional -> DataError."""
    if text == "":
        raise _fail(path, line, column, "empty value; an integer is required")
    value = _parse_number(text, path, line, column)
    if value != int(value):
        raise _fail(path, line, column, f"non-integer value {text!r}")
    return int(value)


def _check_bounds(value: float, path, line: int, column: str) -> None:
    lo, hi = _NUMERIC_BOUNDS[column]
    if math.isnan(value):
        return
    if lo is not None and value < lo:
        raise _fail(path, line, column, f"value {value:g} is below the allowed minimum {lo:g}")
    if hi is not None and value > hi:
        raise _fail(path, line, column, f"value {value:g} is above the allowed maximum {hi:g}")


def _normalise_depth(text: str, path, line: int) -> str:
    """Return "" (0-20 cm mean) or one of DEPTHS."""
    if text == "":
        return ""
    norm = re.sub(r"\s*[\u2013\u2014-]\s*", "-", text)
    if norm not in DEPTHS:
        raise _fail(
            path, line, "depth_cm",
            f"unknown depth {text!r}; use blank (0-20 cm mean) or one of {', '.join(DEPTHS)}",
        )
    return norm


class Observations(eqx.Module):
    """Annual observations of one location, as a pytree of NumPy arrays.

    Attributes
    ----------
    years : numpy.ndarray
        (n,) int64, strictly increasing calendar years that have at least one row.
    values : dict[str, numpy.ndarray]
        For every key of :data:`OBSERVED`, (n,) float64 in the CSV's units (percent for
        ``veg_cover_%`` and ``SOM*_%``, mm yr^-1 for ``runoff_mm``/``rainfall_mm``,
        t ha^-1 yr^-1 for ``erosion_t/ha``, m^3 m^-3 for ``theta_m3/m3``); NaN where missing.
    masks : dict[str, numpy.ndarray]
        For every key of :data:`OBSERVED`, (n,) bool, True where observed.
    location : str
        The CSV ``location`` value (static).
    source_file : str
        Path of the CSV the rows came from (static).
    sources : tuple[str, ...]
        Per year, the ``source`` column ("" when absent; several distinct sources of one
        year are joined by "; ") (static).
    extra : dict[str, numpy.ndarray]
        The forcing and gauge columns (:data:`EXTRA_COLUMNS`) present in the file, (n,)
        float64 in their units, NaN where blank.
    """

    years: np.ndarray
    values: dict
    masks: dict
    location: str = eqx.field(static=True)
    source_file: str = eqx.field(static=True)
    sources: tuple = eqx.field(static=True)
    extra: dict = eqx.field(default_factory=dict)

    def __check_init__(self):
        n = self.years.shape[0]
        if self.years.ndim != 1 or (n > 1 and not np.all(np.diff(self.years) > 0)):
            raise ValueError("Observations.years must be 1-D and strictly increasing")
        for name in ("values", "masks"):
            table = getattr(self, name)
            if set(table) != set(OBSERVED):
                raise ValueError(f"Observations.{name} must have exactly the keys {OBSERVED}")
            for key, arr in table.items():
                if np.shape(arr) != (n,):
                    raise ValueError(f"Observations.{name}[{key!r}] must have shape ({n},)")
        if len(self.sources) != n:
            raise ValueError(f"Observations.sources must have {n} entries")

    def count(self) -> dict[str, int]:
        """Return the number of observed cells per variable.

        Returns
        -------
        dict[str, int]
            Key of :data:`OBSERVED` -> number of years with a value.
        """
        return {key: int(np.count_nonzero(self.masks[key])) for key in OBSERVED}

    def restrict(self, start: int, end: int) -> Observations:
        """Return the observations of the years in ``[start, end]`` (both inclusive).

        Arguments
        ---------
        start, end : int
            First and last calendar year to keep.

        Returns
        -------
        Observations
            A new object; it may hold zero years.
        """
        keep = (self.years >= start) & (self.years <= end)
        idx = np.flatnonzero(keep)
        return Observations(
            years=self.years[idx].copy(),
            values={k: v[idx].copy() for k, v in self.values.items()},
            masks={k: m[idx].copy() for k, m in self.masks.items()},
            location=self.location,
            source_file=self.source_file,
            sources=tuple(self.sources[i] for i in idx),
            extra={k: v[idx].copy() for k, v in self.extra.items()},
        )


def _build(location: str, rows: list[dict], path: Path, present=()) -> Observations:
    """Merge one location's checked rows (in file order) into an Observations object."""
    years = sorted({r["year"] for r in rows})
    index = {y: i for i, y in enumerate(years)}
    n = len(years)
    values = {k: np.full(n, np.nan, dtype=np.float64) for k in OBSERVED + EXTRA_COLUMNS}
    origin: dict[tuple[str, int], int] = {}  # (key, year) -> line that set it
    sources: list[list[str]] = [[] for _ in range(n)]
    for r in rows:
        i, line = index[r["year"]], r["line"]
        som_key = "SOM_%" if r["depth"] == "" else f"SOM_{r['depth']}_%"
        cells = {som_key: ("SOM_%", r["SOM_%"])}
        for col in _YEAR_COLUMNS:
            cells[col] = (col, r[col])
        for key, (col, value) in cells.items():
            if math.isnan(value):
                continue
            prev = values[key][i]
            if not math.isnan(prev) and prev != value:
                raise _fail(
                    path, line, col,
                    f"value {value:g} for year {r['year']} conflicts with {prev:g} on line "
                    f"{origin[(key, r['year'])]}; rows of one year (one per depth) must repeat "
                    "the same value or leave the cell blank",
                )
            values[key][i] = value
            origin[(key, r["year"])] = line
        if r["source"] and r["source"] not in sources[i]:
            sources[i].append(r["source"])
    extra = {k: values.pop(k) for k in EXTRA_COLUMNS if k in present}
    for k in EXTRA_COLUMNS:
        values.pop(k, None)
    masks = {k: ~np.isnan(v) for k, v in values.items()}
    return Observations(
        years=np.asarray(years, dtype=np.int64),
        values=values,
        masks=masks,
        location=location,
        source_file=str(path),
        sources=tuple("; ".join(s) for s in sources),
        extra=extra,
    )


def convert_gauge(obs: Observations, area_km2: float | None) -> Observations:
    """Gauge columns in the model's units: ``runoff_mm = runoff_m3 / (area_km2 * 1e3)``
    (m^3 over km^2 -> mm) and ``erosion_t/ha = sediment_t / (area_km2 * 100)``.

    A year with both ``runoff_m3`` and ``runoff_mm`` (or ``sediment_t`` and
    ``erosion_t/ha``) must agree within 1%.  Raises DataError when the file has gauge
    values but no area is known (``--area-km2`` or the registry's ``area_km2``).
    """
    has = {k: np.isfinite(obs.extra[k]) for k in GAUGE_COLUMNS if k in obs.extra}
    if not any(m.any() for m in has.values()):
        return obs
    if area_km2 is None or not (area_km2 > 0):
        raise DataError(f"{obs.source_file}: location {obs.location!r} has runoff_m3/"
                        "sediment_t values but no catchment area: pass --area-km2 (or give "
                        "area_km2 in the site registry)")
    values = {k: v.copy() for k, v in obs.values.items()}
    masks = {k: m.copy() for k, m in obs.masks.items()}
    for col, target, factor in (("runoff_m3", "runoff_mm", area_km2 * 1e3),
                                ("sediment_t", "erosion_t/ha", area_km2 * 100.0)):
        if col not in has:
            continue
        m = has[col]
        conv = obs.extra[col] / factor
        both = m & masks[target]
        bad = both & (np.abs(values[target] - conv) > 0.01 * np.maximum(np.abs(conv), 1e-12))
        if bad.any():
            y = int(obs.years[np.flatnonzero(bad)[0]])
            raise DataError(f"{obs.source_file}: year {y} of {obs.location!r}: {col} "
                            f"{obs.extra[col][bad][0]:g} over {area_km2:g} km2 is "
                            f"{conv[bad][0]:g} but {target} says {values[target][bad][0]:g}")
        values[target] = np.where(m, conv, values[target])
        masks[target] = masks[target] | m
    return dataclasses.replace(obs, values=values, masks=masks)


def read_observations(path) -> dict[str, Observations]:
    """Read and validate an observation CSV.

    Arguments
    ---------
    path : str or pathlib.Path
        CSV file with the columns of :data:`REQUIRED_COLUMNS` and optionally
        :data:`OPTIONAL_COLUMNS` (schema in the module docstring). A bare file name that does
        not exist in the working directory is looked up in the bundled data folder.

    Returns
    -------
    dict[str, Observations]
        One entry per location, in order of first appearance in the file.

    Raises
    ------
    DataError
        On an unknown or missing column, a non-numeric, nan/inf, out-of-range or negative
        value, a non-integer year, an empty location, a duplicate (year, location, depth) row,
        years out of order within a location, or conflicting values among the depth rows of a
        year. The message names the file, the line (header = 1) and the column.
    FileNotFoundError
        If the file does not exist.
    """
    path = _resolve(path)
    df = _read_raw(path)
    columns = list(df.columns)
    known = set(REQUIRED_COLUMNS) | set(OPTIONAL_COLUMNS)
    for col in columns:
        if col not in known:
            raise _fail(
                path, 1, col,
                f"unknown column; allowed are {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}",
            )
    seen_cols: set[str] = set()
    for col in columns:
        if col in seen_cols:
            raise _fail(path, 1, col, "column appears twice in the header")
        seen_cols.add(col)
    gauge_file = any(c in columns for c in GAUGE_COLUMNS)
    for col in REQUIRED_COLUMNS:
        if col not in columns and not (gauge_file and col not in ("year", "location")):
            raise _fail(path, 1, col, "missing required column")

    by_location: dict[str, list[dict]] = {}
    seen: dict[tuple[int, str, str], int] = {}
    last_year: dict[str, tuple[int, int]] = {}
    for i, raw in enumerate(df.to_dict("records")):
        line = i + 2
        if _is_blank_row(raw):
            continue
        location = raw["location"]
        if location == "":
            raise _fail(path, line, "location", "empty location")
        year = _parse_int(raw["year"], path, line, "year")
        row: dict = {"line": line, "year": year}
        for col in _NUMERIC_BOUNDS:
            value = _parse_number(raw.get(col, ""), path, line, col)
            _check_bounds(value, path, line, col)
            row[col] = value
        row["depth"] = _normalise_depth(raw.get("depth_cm", ""), path, line)
        row["source"] = raw.get("source", "")

        key = (year, location, row["depth"])
        if key in seen:
            depth = f", depth {row['depth']}" if row["depth"] else ""
            raise _fail(
                path, line, "year",
                f"duplicate row for year {year}, location {location!r}{depth} "
                f"(first on line {seen[key]})",
            )
        seen[key] = line
        if location in last_year and year < last_year[location][0]:
            prev_year, prev_line = last_year[location]
            raise _fail(
                path, line, "year",
                f"year {year} of location {location!r} comes after year {prev_year} "
                f"(line {prev_line}); years must be non-decreasing within a location",
            )
        last_year[location] = (year, line)
        by_location.setdefault(location, []).append(row)

    present = [c for c in EXTRA_COLUMNS if c in columns]
    return {loc: _build(loc, rows, path, present) for loc, rows in by_location.items()}


def load_site(path, location: str) -> Observations:
    """Read one location from an observation CSV.

    Arguments
    ---------
    path : str or pathlib.Path
        CSV file (see :func:`read_observations`).
    location : str
        Value of the ``location`` column, e.g. ``"Yanhe-basin"``.

    Returns
    -------
    Observations
        The validated observations of that location.

    Raises
    ------
    DataError
        If the file is invalid or does not contain ``location`` (the message lists the
        locations present).
    """
    table = read_observations(path)
    if location not in table:
        present = ", ".join(repr(k) for k in table) or "none"
        raise DataError(
            f"{_resolve(path)}: location {location!r} not found; locations present: {present}"
        )
    return table[location]
