"""``regv1 scenario``: regional scenarios of a calibrated site with bootstrap intervals,
beside the seed's targets and the published figures (``science.run_scenarios``)."""

from __future__ import annotations

import time

import click

from ._common import (
    CACHE_HELP,
    calibration_inputs,
    cli_errors,
    command_manifest,
    compute_context,
    dtype_option,
    fit_years_options,
    interval_refits_options,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
    site_options,
)


@click.command(epilog=CACHE_HELP)
@site_options
@out_dir_options
@fit_years_options
@click.option("--area-km2", "area_km2", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Area the scenarios are scaled to (km2; default the Loess "
              "Plateau's 640,000 km2).")
@click.option("--planting-start", type=int, default=None,
              help="First planting year of the scenarios (default: the site's).")
@interval_refits_options(B=200, what="for the intervals")
@dtype_option()
@no_cache_option
def scenario(site, data, region, out, force, config_file, start, end, holdout, area_km2,
             planting_start, B, seed, dtype, no_cache):
    """Calibrate a site, then run the scenarios (no planting; Grain for Green; planting +
    engineering; rainfall -20 % / +20 %) at the estimate and over B bootstrap refits, scaled
    to an area: runoff (m3/yr), water yield (mm/yr), SOC (Tg C/yr), sediment (Mt/yr, %).

    Writes scenarios.csv, scenarios.json, scenarios.png, report.md, report.html and
    manifest.json into OUT."""
    out_path = prepare_out_dir(out, force)
    cfg, s, space, obs, ftable, y0, y1 = calibration_inputs(
        site, data, region, config_file, start, end, holdout=holdout)
    t0 = time.time()

    def progress(m):
        click.echo(f"[{time.time() - t0:6.1f}s] {m}")

    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        from ..fit import calibrate_site
        from ..io import site_forcing
        from ..science import run_scenarios

        forcing = site_forcing(s, y0, y1, forcing_table=ftable)
        progress(f"calibrating {s.name} ({s.region}), {y0}-{y1}")
        cal = calibrate_site(space, space.prior_values(jdtype), forcing, obs, cfg,
                             planting_start=s.planting_start, identifiability=False)
        for sentence in cal.failures:
            click.echo(f"  The calibration failed. {sentence}")
        res = run_scenarios(cal, area_km2=area_km2, B=B, seed=seed,
                            planting_start=planting_start or s.planting_start,
                            progress=progress)
    from ..report import write_scenario
    from ..science import PUBLISHED, SCENARIOS

    doc = command_manifest({"data": s.data_file, "config": config_file}, dtype=dtype,
                           site=s.name, B=B, seed=seed, area_km2=res.area_km2)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_scenario(tmp, res, SCENARIOS, PUBLISHED)
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: "
               + ", ".join(sorted(f.name for f in files.values())) + ", manifest.json")
    for row in res.rows:
        if row["scenario"] == "grain_for_green":
            click.echo(f"  grain_for_green {row['quantity']}: {row['estimate']:.4g} "
                       f"[{row['lo']:.4g}, {row['hi']:.4g}]")
