"""``regv1 bootstrap`` and the bootstrap options of ``regv1 calibrate --uncertainty``.

The bootstrap options are declared once here and used by both commands."""

from __future__ import annotations

import functools
import hashlib
import shutil
from pathlib import Path

import click

from ._common import (
    CACHE_HELP,
    calibration_inputs,
    check_years,
    cli_errors,
    command_manifest,
    compute_context,
    dtype_option,
    fit_years_options,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
    site_options,
)

__all__ = ["bootstrap", "bootstrap_options", "check_bootstrap_options",
           "run_site_bootstrap", "finish_site_bootstrap"]


def bootstrap_options(f):
    """The options every bootstrap run takes (``calibrate`` and ``bootstrap``)."""
    opts = [
        click.option("--B", "B", type=click.IntRange(min=2), default=1000, show_default=True,
                     help="Bootstrap replicates (each a full staged refit)."),
        click.option("--block-length", default="auto", show_default=True, metavar="L|auto",
                     help="Years per block; 'auto': Politis-White (2004) on the point fit's "
                     "residual series (docs/methods.md)."),
        click.option("--scheme", type=click.Choice(["moving", "stationary"]),
                     default="moving", show_default=True,
                     help="Moving-block (fixed L) or stationary (geometric, mean L) blocks."),
        click.option("--bootstrap-seed", type=click.IntRange(min=0), default=0,
                     show_default=True, help="Seed of the resampling (jax.random)."),
        click.option("--chunk", "boot_chunk", type=click.IntRange(min=1), default=128,
                     show_default=True, help="Refits per batched call (vmap)."),
        click.option("--resume", is_flag=True, help="Reuse the finished chunks of an "
                     "interrupted bootstrap with the same settings (kept in "
                     "OUT.bootstrap_chunks/ until the run completes)."),
    ]
    return functools.reduce(lambda g, o: o(g), reversed(opts), f)


def check_bootstrap_options(boot: dict) -> None:
    """``--block-length``: a positive integer or ``auto`` (one-line error otherwise)."""
    text = str(boot["block_length"]).strip().lower()
    if text == "auto":
        boot["block_length"] = "auto"
        return
    try:
        L = int(text)
    except ValueError:
        L = 0
    if L < 1:
        raise click.BadParameter(f"{boot['block_length']!r}: expected a positive integer "
                                 "or 'auto'", param_hint="--block-length")
    boot["block_length"] = L


def _chunks_dir(out_path: Path) -> Path:
    return Path(str(out_path) + ".bootstrap_chunks")


def run_site_bootstrap(cal, out_path: Path, boot: dict, t0: float, planting_start):
    """Run ``site_bootstrap`` with the CLI's options; chunks stream to
    ``OUT.bootstrap_chunks`` (removed by :func:`finish_site_bootstrap`)."""
    import time

    import numpy as np

    chunks = _chunks_dir(out_path)
    if not boot["resume"] and chunks.exists():
        shutil.rmtree(chunks)
    point = np.asarray([float(x) for x in cal.params.as_dict().values()])
    key = {"site": cal.site, "point": hashlib.sha1(point.tobytes()).hexdigest()[:16]}
    click.echo(f"[{time.time() - t0:6.1f}s] block bootstrap: B = {boot['B']}, "
               f"{boot['scheme']} blocks, block length {boot['block_length']} (staged "
               "refits batched; the first chunk includes compilation)")
    from ..analysis import site_bootstrap

    res = site_bootstrap(cal, B=boot["B"], block_length=boot["block_length"],
                         scheme=boot["scheme"], seed=boot["bootstrap_seed"],
                         planting_start=planting_start, chunk=boot["boot_chunk"],
                         store_dir=chunks,
                         store_key=key, resume=boot["resume"], progress=True)
    bad = res.B - int(res.used.sum())
    click.echo(f"[{time.time() - t0:6.1f}s] bootstrap: {res.B} refits in {res.seconds:.1f}s, "
               f"block length {res.block_length}; {bad} replicate(s) excluded "
               f"(status counts {res.status_counts})")
    return res


def site_profiles_and_identifiability(cal, boot_res, t0: float):
    """``calibrate --uncertainty``'s second half: profiles of the seed's thresholds (LR
    intervals) and identifiability from the data rows and from the used bootstrap
    replicates.  Returns ``(profiles, idents)``; profiles are ``None`` unless float64."""
    import time

    import numpy as np

    from ..analysis import (
        DEFAULT_PROFILED,
        identify_data,
        identify_sample,
        profile,
        setup_from_calibration,
    )

    setup = setup_from_calibration(cal)
    profs = None
    if cal.dtype == "float64":
        click.echo(f"[{time.time() - t0:6.1f}s] profile likelihood of "
                   f"{', '.join(DEFAULT_PROFILED)} (41 points, refitting "
                   f"{', '.join(setup.free)}; the first call compiles)")
        profs = profile(setup, DEFAULT_PROFILED)
    else:
        click.echo("warning: profiles need float64 (--dtype float64); skipped", err=True)
    idents = [identify_data(cal.space, setup.params, setup.forcing, setup.targets,
                            list(setup.free), cal.config, setup.events)]
    k = len(boot_res.names)
    used = boot_res.used
    if used.sum() > k:
        idents.append(identify_sample(np.asarray(boot_res.replicates)[used, :k],
                                      list(boot_res.names), cal.space,
                                      int((~used).sum())))
    return profs, idents


def write_profiles_and_identifiability(profs, idents, folder: Path, site: str) -> list[str]:
    """``profile/`` and ``identify/`` subfolders of a calibrate output (the files of
    ``regv1 profile`` and ``regv1 identify``); returns the report sections (markdown)."""
    from ..report import identify_fragment, profile_fragment, write_identify, write_profile

    sections = []
    if profs:
        (folder / "profile").mkdir()
        write_profile(profs, folder / "profile", {"site": site, "dtype": "float64",
                                                  "from": "calibrate --uncertainty"},
                      title=f"{site}: profile likelihood")
        sections.append(profile_fragment(profs) + "\n![profiles](profile/profile.png)\n")
    (folder / "identify").mkdir()
    write_identify(idents, folder / "identify", {"site": site, "from": "calibrate "
                                                 "--uncertainty"},
                   title=f"{site}: identifiability")
    sections.append(identify_fragment(idents)
                    + "\n![identifiability](identify/correlation.png)\n")
    return sections


def finish_site_bootstrap(out_path: Path) -> None:
    shutil.rmtree(_chunks_dir(out_path), ignore_errors=True)


@click.command(epilog=CACHE_HELP)
@site_options
@fit_years_options
@out_dir_options
@dtype_option()
@no_cache_option
@bootstrap_options
def bootstrap(site, data, region, config_file, start, end, holdout, out, force, dtype,
              no_cache, **boot):
    """Block bootstrap of a site's staged calibration: the point fit, then B staged refits
    on resampled years (warm-started from the point estimate, batched), percentile and BCa
    95% intervals of every calibrated parameter and of the derived quantities.

    Writes bootstrap.json, bootstrap_params.csv, bootstrap_replicates.csv,
    bootstrap_bands.csv, bootstrap_bands.png and manifest.json into OUT (schemas:
    docs/methods.md, "Block bootstrap")."""
    import time


    check_years(start, end, min_years=2)
    check_bootstrap_options(boot)
    out_path = prepare_out_dir(out, force)
    cfg, s, space, obs, ftable, y0, y1 = calibration_inputs(
        site, data, region, config_file, start, end, holdout=holdout)
    from ..fit import calibrate_site
    from ..io import site_forcing
    from ..report import write_bootstrap

    t0 = time.time()
    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        forcing = site_forcing(s, y0, y1, forcing_table=ftable)
        click.echo(f"point fit of {s.name} ({s.region}), {y0}-{y1}, {cfg.method}/{dtype}")
        cal = calibrate_site(space, space.prior_values(jdtype), forcing, obs, cfg,
                             planting_start=s.planting_start, identifiability=False,
                             progress=lambda m: click.echo(f"[{time.time() - t0:6.1f}s] {m}"))
        res = run_site_bootstrap(cal, out_path, boot, t0, s.planting_start)
    doc = command_manifest({"data": s.data_file, "config": config_file}, dtype=dtype,
                           site=s.name, region=s.region)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_bootstrap(cal, res, tmp)
    finish_site_bootstrap(out_path)
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: " + ", ".join(files)
               + ", manifest.json")
    for n in res.names + res.derived:
        iv = res.intervals[n]
        click.echo(f"  {n}: {res.point[n]:.4g}, BCa [{iv['BCa'][0]:.4g}, {iv['BCa'][1]:.4g}],"
                   f" percentile [{iv['percentile'][0]:.4g}, {iv['percentile'][1]:.4g}]")
