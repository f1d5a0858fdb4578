"""``regv1 calibrate``: the staged calibration of a site and its report (the main job)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click

from ._bootstrap import (
    bootstrap_options,
    check_bootstrap_options,
    finish_site_bootstrap,
    run_site_bootstrap,
    site_profiles_and_identifiability,
    write_profiles_and_identifiability,
)
from ._common import (
    CACHE_HELP,
    calibration_inputs,
    check_years,
    cli_errors,
    command_manifest,
    compute_context,
    dry_run_option,
    dtype_option,
    fit_years_options,
    forcing_option,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
    site_options,
)


def _show_config(ctx, _param, value):
    if not value or ctx.resilient_parsing:
        return
    from ..fit import CONFIG_KEYS, config_document

    click.echo("# --config FILE.json: a JSON object with any of these keys (absent keys keep "
               "the defaults below)")
    for key, (desc, _) in CONFIG_KEYS.items():
        click.echo(f"#   {key}: {desc}")
    click.echo(json.dumps(config_document(), indent=2))
    ctx.exit(0)


@click.command(epilog=CACHE_HELP)
@site_options
@out_dir_options
@fit_years_options
@click.option("--show-config", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_config, help="Print the default config with each key's meaning.")
@click.option("--starts", "n_starts", type=click.IntRange(min=1), default=None,
              help="Starts per stage (>= 1; default: the config's, 8).")
@click.option("--method", type=click.Choice(["tsit5", "rk4"]), default=None,
              help="Solver inside the fit (default rk4: fixed steps by the generated kernels, "
              "forward-mode derivatives; tsit5: diffrax, adaptive, adjoint gradients).")
@dtype_option()
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed of the prior starts and of the global start search (>= 0).")
@click.option("--screen", type=click.IntRange(min=0), default=None, metavar="N",
              help="Prior draws of the global start search before the stages (default: the "
              "config's, 10000; 0: none, and no basin stage: the seed's stages alone).")
@no_cache_option
@dry_run_option
@forcing_option
@click.option("--area-km2", "area_km2", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Catchment area (km2) converting runoff_m3 (m3/yr) and "
              "sediment_t (t/yr) columns to mm/yr and t/ha/yr (default: the site registry's "
              "area_km2).")
@click.option("--uncertainty", is_flag=True,
              help="After the point fit, a block bootstrap over years (staged refits, "
              "batched): bootstrap CI_95 in params.json, bands in fit.csv, a report "
              "section and the `regv1 bootstrap` files (see --B, --block-length, --scheme).")
@bootstrap_options
def calibrate(site, data, region, out, force, config_file, start, end, n_starts, method,
              dtype, seed, screen, no_cache, dry_run, holdout, forcing_file, area_km2,
              uncertainty, **boot):
    """Staged calibration of a site; writes params.json, fit.csv, metrics.json, figures,
    report.md / report.html and manifest.json into OUT (all at once, when the run ends)."""
    import time

    check_years(start, end, min_years=2)
    check_bootstrap_options(boot)
    out_path = prepare_out_dir(out, force)
    cfg, s, space, obs, ftable, y0, y1 = calibration_inputs(
        site, data, region, config_file, start, end, holdout=holdout,
        forcing_file=forcing_file, area_km2=area_km2, n_starts=n_starts, method=method,
        seed=seed, screen=screen)
    if dry_run:
        click.echo("inputs ok (dry run): nothing computed, nothing written")
        return
    from ..fit import calibrate_site
    from ..io import site_forcing
    from ..report import write_outputs

    t0 = time.time()
    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        prior = space.prior_values(jdtype)
        forcing = site_forcing(s, y0, y1, forcing_table=ftable)
        click.echo(f"calibrating {s.name} ({s.region}) on {s.data_file}, {y0}-{y1}, "
                   f"{cfg.method}/{dtype}, {cfg.n_starts} start(s) per stage")
        click.echo("  (the staged fit includes compilation unless it is cached)")
        cal = calibrate_site(space, prior, forcing, obs, cfg, planting_start=s.planting_start,
                             progress=lambda m: click.echo(f"[{time.time() - t0:6.1f}s] {m}"))
        boot_res = (run_site_bootstrap(cal, out_path, boot, t0, s.planting_start)
                    if uncertainty else None)
        profs, idents = (site_profiles_and_identifiability(cal, boot_res, t0)
                         if uncertainty else (None, None))
    from .._paths import data_path

    inputs = {"data": s.data_file, "config": config_file, "forcing": forcing_file}
    with contextlib.suppress(FileNotFoundError):
        inputs.update(priors_seed=data_path("priors_seed.json"),
                      priors_extra=data_path("priors_extra.json"),
                      bounds_seed=data_path("bounds_seed.json"))
    doc = command_manifest(inputs, dtype=dtype, site=s.name, region=s.region,
                           optimizer=cfg.optimizer, n_starts=cfg.n_starts, seed=cfg.seed)
    with out_dir_writer(out_path, doc) as tmp:
        sections = (write_profiles_and_identifiability(profs, idents, tmp, s.name)
                    if uncertainty else [])
        files = write_outputs(cal, tmp, bootstrap=boot_res, sections=sections)
    finish_site_bootstrap(out_path)
    sub = [d + "/" for d in ("profile", "identify") if (out_path / d).is_dir()]
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: "
               + ", ".join(sorted(Path(f).name for f in files.values()) + sub)
               + ", manifest.json")
    if profs:
        from ._profile import echo_profiles

        echo_profiles(profs)
    for k, v in cal.criteria.items():
        res = v.get("pass")
        click.echo(f"  {k}: {'n/a' if res is None else ('pass' if res else 'FAIL')}")
    for sentence in cal.failures:
        click.echo(f"  The calibration failed. {sentence}")
