"""The priors of a region from the JSON files in the seed's schema (``data/``):
:func:`load_param_space`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._paths import data_path
from ._params import PARAM_NAMES, ParamSpace
from ._spec import UNITS, ParameterError, ParamSpec, read_json

__all__ = ["load_param_space", "SEED_FILE", "EXTRA_FILE", "BOUNDS_FILE", "PARTIAL_REGIONS"]

SEED_FILE = "priors_seed.json"
EXTRA_FILE = "priors_extra.json"
# Physical bounds of parameters whose priors file has none inline (the seed's nine: the seed
# file is kept verbatim).
BOUNDS_FILE = "bounds_seed.json"
# Regions of the seed that hold only cross-site priors, not a full parameter set.
PARTIAL_REGIONS = {"Universal"}


def _spec_from_entry(region: str, name: str, entry: object, file: str,
                     fallback: Mapping | None = None) -> ParamSpec:
    where = f"region {region!r}, parameter {name!r} in {file}"
    if not isinstance(entry, Mapping):
        raise ParameterError(f"{where}: expected an object with value/units/CI_95")
    for key in ("value", "units", "CI_95"):
        if key not in entry:
            raise ParameterError(f"{where}: missing {key!r}")
    try:
        value = float(entry["value"])
        lo, hi = (float(v) for v in entry["CI_95"])
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{where}: value and CI_95 must be numbers ({err})") from err
    if not all(math.isfinite(v) for v in (value, lo, hi)):
        raise ParameterError(f"{where}: value and CI_95 must be finite")
    if not lo < hi:
        raise ParameterError(f"{where}: CI_95 low ({lo}) must be below high ({hi})")
    if not lo <= value <= hi:
        raise ParameterError(f"{where}: value {value} lies outside its CI_95 [{lo}, {hi}]")
    units = entry["units"]
    if units not in UNITS[name]:
        raise ParameterError(
            f"{where}: unknown units {units!r}; expected one of {list(UNITS[name])}"
        )
    if "bounds" not in entry and fallback and isinstance(fallback.get(name), Mapping):
        entry = {**entry, **{k: v for k, v in fallback[name].items()
                             if k in ("bounds", "bounds_reason")}}
        where += f" (bounds from {BOUNDS_FILE})"
    if "bounds" not in entry:
        raise ParameterError(
            f"{where}: missing 'bounds' (the admissible physical range [lo, hi], with a "
            f"'bounds_reason', inline or in {BOUNDS_FILE}); the CI_95 is the prior, not a "
            "limit")
    try:
        b_lo, b_hi = (float(v) for v in entry["bounds"])
    except (TypeError, ValueError) as err:
        raise ParameterError(f"{where}: bounds must be two numbers [lo, hi] ({err})") from err
    if not (math.isfinite(b_lo) and math.isfinite(b_hi) and b_lo < b_hi):
        raise ParameterError(f"{where}: bounds [{b_lo}, {b_hi}] must be finite with lo < hi")
    if not (b_lo <= lo and hi <= b_hi):
        raise ParameterError(
            f"{where}: CI_95 [{lo}, {hi}] must lie inside the bounds [{b_lo}, {b_hi}]")
    source = str(entry.get("source", entry.get("notes", entry.get("note", ""))))
    return ParamSpec(name, value, lo, hi, UNITS[name][0], source, file, b_lo, b_hi,
                     str(entry.get("bounds_reason", "")))


def _region_specs(region: str, files: Sequence[Path],
                  bounds_file: Path | None = None) -> dict[str, ParamSpec]:
    specs: dict[str, ParamSpec] = {}
    fallback = {}
    if bounds_file is not None and bounds_file.exists():
        fallback = read_json(bounds_file).get(region, {})
    known_regions: set[str] = set()
    for path in files:
        doc = read_json(path)
        known_regions |= {k for k in doc if not k.startswith("_")}
        block = doc.get(region)
        if block is None or region in PARTIAL_REGIONS:
            continue
        for name, entry in block.items():
            if name not in UNITS:
                raise ParameterError(
                    f"region {region!r}, parameter {name!r} in {path.name}: unknown parameter"
                )
            specs[name] = _spec_from_entry(region, name, entry, path.name, fallback)
    if region in PARTIAL_REGIONS:
        raise ParameterError(
            f"region {region!r} holds cross-site priors only, not a full parameter set; "
            f"choose one of {sorted(known_regions - PARTIAL_REGIONS)}"
        )
    if region not in known_regions:
        raise ParameterError(
            f"unknown region {region!r} in {[p.name for p in files]}; "
            f"known: {sorted(known_regions - PARTIAL_REGIONS)}"
        )
    missing = [n for n in PARAM_NAMES if n not in specs]
    if missing:
        raise ParameterError(
            f"region {region!r}: missing parameter(s) {missing} in {[p.name for p in files]}"
        )
    return specs


def _check_shares(region: str, specs: Mapping[str, ParamSpec]) -> None:
    if specs["theta_wp"].value >= specs["theta_fc"].value:
        raise ParameterError(
            f"region {region!r}: theta_wp ({specs['theta_wp'].value}) must be below "
            f"theta_fc ({specs['theta_fc'].value}) in {specs['theta_fc'].file}"
        )


def load_param_space(
    region: str, files: Sequence[str | Path] | None = None
) -> ParamSpace:
    """Priors for ``region`` from the seed JSON and the extra-constants JSON.

    Arguments:
        region: ``"LoessPlateau"`` or ``"ChihuahuanDesert"``.
        files: JSON files in the seed's schema, later ones adding to earlier ones (default:
            ``data/priors_seed.json`` then ``data/priors_extra.json``).  Physical bounds come
            from each entry's ``bounds``, else from ``data/bounds_seed.json``.
    Returns:
        the region's :class:`ParamSpace`.
    Raises:
        ParameterError naming region, parameter and file for a missing parameter, a value
        outside its CI_95, a CI_95 with low >= high, unknown units or an unknown region.
    """
    paths = [data_path(SEED_FILE), data_path(EXTRA_FILE)] if files is None else [
        Path(f) for f in files
    ]
    specs = _region_specs(region, paths, data_path(BOUNDS_FILE))
    _check_shares(region, specs)
    return ParamSpace(region, tuple(specs[n] for n in PARAM_NAMES))
