"""``regv1 scaling``: calibrate a sites table, threshold intervals, the seed's scaling laws
and the regions compared (``science.scaling_study``)."""

from __future__ import annotations

import time

import click

from ._common import (
    CACHE_HELP,
    cli_errors,
    command_manifest,
    compute_context,
    dtype_option,
    interval_refits_options,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
)


@click.command(epilog=CACHE_HELP)
@click.option("--sites", "sites_file", type=click.Path(exists=True, dir_okay=False),
              required=True, help="Sites table CSV: site, region, data_file[, MAP_mm, "
              "area_km2, forcing_file, planting_start, slope_deg, initial_degradation, "
              "storm_intensity_mm_min] (docs/methods.md, 'Cross-site science').")
@out_dir_options
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="Calibration config JSON for every site.")
@interval_refits_options(B=100, what="per site for the threshold intervals")
@dtype_option()
@no_cache_option
def scaling(sites_file, out, force, config_file, B, seed, dtype, no_cache):
    """Calibrate every site of a sites table (one compiled call per region), tabulate the
    thresholds (V_crit, theta*, SOM*, eta1, the rainfall limit, the bistable range) with
    bootstrap intervals, fit the seed's laws across the sites and compare the Loess
    Plateau with the Chihuahuan comparator.

    Writes thresholds.csv, laws.json, regions.csv, sites.json, scaling.png, regions.png,
    report.md, report.html and manifest.json into OUT."""
    out_path = prepare_out_dir(out, force)
    with cli_errors():
        from ..fit import CalibrationConfig, load_config
        from ..science import read_sites_table

        specs = read_sites_table(sites_file)
        cfg = load_config(config_file) if config_file else CalibrationConfig()
    t0 = time.time()

    def progress(m):
        click.echo(f"[{time.time() - t0:6.1f}s] {m}")

    click.echo(f"scaling study: {len(specs)} site(s) from {sites_file}, B = {B}, {dtype}")
    with compute_context(dtype, no_cache), cli_errors():
        from ..science import scaling_study

        study = scaling_study(specs, cfg, B=B, seed=seed, progress=progress)
    from ..report import write_scaling
    from ..science import REGION_METRICS, THRESHOLDS

    inputs = {"sites": sites_file, "config": config_file}
    inputs.update({f"data:{s.site}": s.data_file for s in specs})
    doc = command_manifest(inputs, dtype=dtype, B=B, seed=seed)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_scaling(tmp, study.thresholds, study.laws, study.regions,
                              REGION_METRICS, THRESHOLDS, study.sites)
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: "
               + ", ".join(sorted(f.name for f in files.values())) + ", manifest.json")
    for name, law in study.laws.items():
        if "error" in law:
            click.echo(f"  {name}: not fitted ({law['error']})")
            continue
        c = ", ".join(f"{k} {v['estimate']:.4g} [{v['CI_95'][0]:.4g}, {v['CI_95'][1]:.4g}]"
                      for k, v in law["coefficients"].items())
        sign = (f"; expected {law['expected_sign_of_MAP_slope']} slope: p = "
                f"{law['sign_p_value']:.3g}" if "sign_p_value" in law else "")
        click.echo(f"  {name}: {c}{sign}")
