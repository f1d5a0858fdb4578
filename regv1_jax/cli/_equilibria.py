"""``regv1 equilibria``: equilibria, stability, V_crit and the bifurcation diagram."""

from __future__ import annotations

import json

import click

from ..io import params_file_warnings
from ._common import (
    CACHE_HELP,
    cli_errors,
    command_manifest,
    compute_context,
    dtype_option,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    override_params,
    params_option,
    prepare_out_dir,
    warn,
)


def _branch_index(V, stable, valid):
    """Branch labels for the bifurcation table: 0 bare, 1 saddle, 2 restored (by cover
    order among the valid equilibria of each rainfall)."""
    import numpy as np

    kind = np.full(V.shape, -1)
    kind[valid & (V == 0)] = 0
    kind[valid & (V > 0) & ~stable] = 1
    kind[valid & (V > 0) & stable] = 2
    return kind


@click.command(epilog=CACHE_HELP)
@click.option("--region", required=True, help="Prior region: LoessPlateau or ChihuahuanDesert.")
@click.option("--map", "map_mm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean annual rainfall (mm/yr) whose equilibria to report "
              "(default: only the sweep).")
@click.option("--sweep", default="100:900:33", show_default=True,
              help="Rainfall sweep LO:HI:N (mm/yr) for the bifurcation diagram.")
@params_option
@click.option("--intensity", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Storm intensity (mm/min).")
@click.option("--planting", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Planting effort 0..1 (0: natural dynamics, bare soil an equilibrium).")
@out_dir_options
@dtype_option()
@no_cache_option
def equilibria(region, map_mm, sweep, params_file, intensity, planting, out, force, dtype,
               no_cache):
    """Equilibria of the model under fixed climate, their stability, V_crit and the
    bifurcation diagram over rainfall.

    Writes equilibria.csv (every equilibrium of every rainfall: cover, SOM, soil moisture,
    largest real eigenvalue, stable), equilibria.json (V_crit at --map, the rainfall limit
    to revegetation and the rainfall where bare soil loses stability), bifurcation.png and
    manifest.json into OUT."""
    import numpy as np

    try:
        lo, hi, n = sweep.split(":")
        lo, hi, n = float(lo), float(hi), int(n)
        if not (0 < lo < hi and n >= 2):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{sweep!r}: expected LO:HI:N with 0 < LO < HI and N >= 2",
                                 param_hint="--sweep") from None
    out_path = prepare_out_dir(out, force)
    with cli_errors():
        from ..model import load_param_space

        space = load_param_space(region)
        if params_file:
            for w in params_file_warnings(params_file, region):
                warn(w)
        params = override_params(space, params_file)
    from ..model import Climate, bifurcation
    from ..model import equilibria as find_equilibria

    rain = np.linspace(lo, hi, n)
    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        p = params.astype(jdtype)
        b = bifurcation(p, rain, intensity=intensity, psi_plant=planting)
        at = (find_equilibria(p, Climate(map_mm, intensity, planting)) if map_mm else None)
    import pandas as pd

    e = b.equilibria
    V, stable, valid = (np.asarray(a) for a in (e.V, e.stable, e.valid))
    rows = pd.DataFrame({
        "rainfall_mm": np.repeat(rain, V.shape[1]),
        "branch": _branch_index(V, stable, valid).ravel(),
        "V": V.ravel(), "veg_cover_%": 100 * V.ravel(), "SOM_%": np.asarray(e.SOM).ravel(),
        "theta_m3/m3": np.asarray(e.theta).ravel(),
        "max_real_eig_per_yr": np.asarray(e.max_real_eig).ravel(),
        "stable": stable.ravel(), "valid": valid.ravel(),
    })

    def finite(x):
        x = float(x)
        return x if np.isfinite(x) else None

    summary = {
        "region": region, "params": str(params_file) if params_file else "prior values",
        "dtype": dtype, "intensity_mm_min": intensity, "psi_plant": planting,
        "P_veg_mm": finite(b.P_veg), "P_bare_unstable_mm": finite(b.P_bare_unstable),
        "bistable_rainfall_mm": [float(x) for x in rain[np.asarray(e.bistable)]],
        "units": {"V": "fraction", "V_crit": "fraction", "SOM": "% (0-20 cm)",
                  "theta": "m^3/m^3", "rainfall": "mm/yr", "max_real_eig": "yr^-1"},
        "definitions": {
            "P_veg_mm": "lowest rainfall with a stable vegetated equilibrium",
            "P_bare_unstable_mm": "rainfall above which bare soil is no longer stable",
            "V_crit": "cover of the saddle between the lowest stable state and the next "
                      "stable state above it (null when not bistable)"},
    }
    if at is not None:
        ok = np.asarray(at.valid)
        summary["at_map"] = {
            "rainfall_mm": map_mm, "V_crit": finite(at.V_crit),
            "equilibria": [
                {"V": float(v), "SOM_%": float(s_), "theta_m3/m3": float(t),
                 "max_real_eig_per_yr": float(ev), "stable": bool(st)}
                for v, s_, t, ev, st in zip(*(np.asarray(a)[ok] for a in (
                    at.V, at.SOM, at.theta, at.max_real_eig, at.stable)))]}
    doc = command_manifest({"params": params_file}, dtype=dtype, region=region)
    from ..report import plot_bifurcation

    with out_dir_writer(out_path, doc) as tmp:
        rows[rows["valid"]].drop(columns="valid").to_csv(
            tmp / "equilibria.csv", index=False, float_format="%.6g")
        (tmp / "equilibria.json").write_text(json.dumps(summary, indent=2))
        plot_bifurcation(rows, summary, tmp / "bifurcation.png",
                         title=f"{region}: equilibria over MAP "
                         f"({'--params' if params_file else 'prior values'}, {dtype})")
    click.echo(f"{region}: rainfall limit {summary['P_veg_mm']} mm, bare soil unstable above "
               f"{summary['P_bare_unstable_mm']} mm; wrote {out_path}/")
    if at is not None:
        click.echo(f"  at {map_mm:g} mm: " + ", ".join(
            f"V={q['V']:.3f} ({'stable' if q['stable'] else 'unstable'})"
            for q in summary["at_map"]["equilibria"])
            + f"; V_crit = {summary['at_map']['V_crit']}")
