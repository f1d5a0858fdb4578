"""The ``regv1`` command line.

``regv1 simulate`` runs the model for a site and writes one row per year; ``regv1 calibrate``
fits it to the site's data and writes a report; ``regv1 sites`` lists the bundled sites.
Files and plots stay here, at the edge; the library below never flips ``jax.config``.

Every command follows the same order, with helpers that a new command reuses:

1. check options and inputs (:func:`cli_errors` turns every user error into one line and an
   exit code 1; :func:`warn` prints plausibility warnings), and the output paths
   (:func:`prepare_out_dir` / :func:`prepare_out_file`) - all before JAX compiles anything;
2. compute inside :func:`compute_context` (persistent compilation cache, cacheable traces);
3. write through :func:`out_dir_writer` (a temporary folder swapped into place, with a
   ``manifest.json`` from :func:`command_manifest`) or :func:`_outputs.atomic_files`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from ..io import DataError, observation_warnings, params_file_warnings, year_range_warnings
from ..model import ParameterError
from ..report import (
    OutputError,
    atomic_files,
    atomic_out_dir,
    check_out_dir,
    check_out_file,
    manifest,
    os_error_message,
)
from ._bootstrap import (
    bootstrap,
    bootstrap_options,
    check_bootstrap_options,
    finish_site_bootstrap,
    run_site_bootstrap,
    site_profiles_and_identifiability,
    write_profiles_and_identifiability,
)

SIM_COLUMNS = (
    "year", "V", "veg_cover_%", "SOM_%", "SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%",
    "theta_m3/m3", "rainfall_mm", "runoff_mm", "ET_mm", "drainage_mm", "water_yield_mm",
    "storage_change_mm", "erosion_t/ha",
)
PLOT_SUFFIXES = ("png", "pdf", "svg", "jpg", "jpeg")
MAX_YEARS = 1000  # longest run a command accepts
DEBUG_ENV = "REGV1_DEBUG"  # set to 1 to see the traceback behind a one-line error

CACHE_HELP = (
    "Compiled functions are cached on disk in ~/.cache/regv1_jax/xla (or $REGV1_CACHE_DIR), so "
    "that the next run of the same job skips most compilation; --no-cache or REGV1_NO_CACHE=1 "
    "turns the cache off (delete the folder to reclaim the space).")


# --- shared helpers (reused by every command) ----------------------------------------------
def _user_errors() -> tuple[type[BaseException], ...]:
    from ..fit import CalibrationError

    return (DataError, ParameterError, CalibrationError, OutputError, ValueError)


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Turn user errors (bad files, values, paths: ``DataError``, ``ParameterError``,
    ``CalibrationError``, ``OutputError``, ``ValueError``, any ``OSError``) into one-line
    ``Error: ...`` messages with exit code 1.  ``REGV1_DEBUG=1`` re-raises them instead."""
    try:
        yield
    except click.ClickException:
        raise
    except OSError as err:
        if os.environ.get(DEBUG_ENV):
            raise
        raise click.ClickException(os_error_message(err)) from None
    except _user_errors() as err:
        if os.environ.get(DEBUG_ENV):
            raise
        text = " ".join(str(err).split("\n")[0].split()) or err.__class__.__name__
        raise click.ClickException(text) from None


def warn(message: str) -> None:
    """A plausibility warning on stderr: the run goes on."""
    click.echo(f"warning: {message}", err=True)


def _read_forcing(path):
    """``--forcing``: the per-year forcing table (None without the option)."""
    if not path:
        return None
    from ..io import read_forcing_csv

    return read_forcing_csv(path)


def _parse_holdout(text: str):
    """``--holdout``: ``Y0-Y1``, ``auto`` or ``none``."""
    t = text.strip().lower()
    if t == "auto":
        return "auto"
    if t == "none":
        return None
    parts = t.split("-")
    try:
        y0, y1 = (int(x) for x in parts)
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected Y0-Y1 (e.g. 2008-2010), 'auto' or "
                                 "'none'", param_hint="--holdout") from None
    if y1 < y0:
        raise click.BadParameter(f"{text!r}: the last year is before the first",
                                 param_hint="--holdout")
    return (y0, y1)


def _override(space, params_file):
    """``--params``: the prior values with the file's values; a value outside the prior
    CI_95 (inside the physical bounds) is accepted with a warning."""
    import warnings

    from ..model import ParameterWarning

    if not params_file:
        return space.prior_values()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ParameterWarning)
        params = space.override(params_file)
    for w in caught:
        if issubclass(w.category, ParameterWarning):
            warn(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return params


def check_years(start: int | None, end: int | None, min_years: int = 1) -> None:
    """``--start``/``--end``: end not before start, at least ``min_years``, at most
    ``MAX_YEARS``."""
    if start is None or end is None:
        return
    if end < start:
        raise click.BadParameter(f"--end {end} is before --start {start}", param_hint="--end")
    n = end - start + 1
    if n < min_years:
        raise click.BadParameter(f"--start {start} --end {end} is {n} year; this command needs "
                                 f"at least {min_years}", param_hint="--end")
    if n > MAX_YEARS:
        raise click.BadParameter(f"--start {start} --end {end} spans {n} years; at most "
                                 f"{MAX_YEARS}", param_hint="--end")


def prepare_out_dir(out: str, force: bool) -> Path:
    """Check the ``--out`` folder before computing (see ``_outputs.check_out_dir``)."""
    with cli_errors():
        return check_out_dir(out, force=force, option="--out")


def prepare_out_file(path: str, option: str, suffixes=None) -> Path:
    """Check an output file option before computing (see ``_outputs.check_out_file``)."""
    with cli_errors():
        return check_out_file(path, option, suffixes)


def command_line(ctx: click.Context | None = None) -> list[str]:
    """The command as the user could type it again, rebuilt from click's parsed options."""
    ctx = ctx or click.get_current_context()
    words = ctx.command_path.split()
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or v is False or not p.opts or p.name == "show_config":
            continue
        opt = max(p.opts, key=len)
        words += [opt] if v is True else [opt, str(v)]
    return words


def command_manifest(inputs: Mapping[str, str | Path | None], **extra) -> dict:
    """The ``manifest.json`` document of the current command (``_outputs.manifest``)."""
    return manifest(command_line(), inputs, **extra)


@contextlib.contextmanager
def out_dir_writer(out: Path, manifest_doc: Mapping) -> Iterator[Path]:
    """Yield a temporary folder to write into; on success it becomes ``out`` with its
    manifest (``_outputs.atomic_out_dir``); OS errors become one-line messages."""
    with cli_errors(), atomic_out_dir(out, manifest_doc) as tmp:
        yield tmp


@contextlib.contextmanager
def compute_context(dtype: str, no_cache: bool = False) -> Iterator[object]:
    """Set JAX up for a command (precision, persistent cache) and trace cacheable
    functions; yields the JAX dtype.  Says once when the cache is off or unusable."""
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from ._cache import cache_dir, cache_disabled, cacheable_traces, enable_cache

    folder = enable_cache(disabled=no_cache)
    if folder is None and not (no_cache or cache_disabled()):
        warn(f"compilation cache {cache_dir()} cannot be written; compiling without it")
    with cacheable_traces():
        yield jnp.float64 if dtype == "float64" else jnp.float32


def simulation_table(sim):
    """Annual outputs of a :class:`Simulation` as a pandas DataFrame with unit-named columns."""
    import numpy as np
    import pandas as pd

    layers = np.asarray(sim.SOM_layers)
    cols = {
        "year": np.asarray(sim.years),
        "V": np.asarray(sim.V),
        "veg_cover_%": 100.0 * np.asarray(sim.V),
        "SOM_%": np.asarray(sim.SOM),
        "SOM_0-10_%": layers[:, 0],
        "SOM_10-20_%": layers[:, 1],
        "SOM_20-40_%": layers[:, 2],
        "theta_m3/m3": np.asarray(sim.theta),
        "rainfall_mm": np.asarray(sim.rainfall),
        "runoff_mm": np.asarray(sim.runoff),
        "ET_mm": np.asarray(sim.ET),
        "drainage_mm": np.asarray(sim.drainage),
        "water_yield_mm": np.asarray(sim.water_yield),
        "storage_change_mm": np.asarray(sim.storage_change),
        "erosion_t/ha": np.asarray(sim.erosion),
    }
    return pd.DataFrame(cols, columns=SIM_COLUMNS)


def _load_site(site: str, data: str | None, region: str | None):
    """The site and its region's parameter space, with the data's plausibility warnings."""
    from ..io import get_site
    from ..model import load_param_space

    s = get_site(site, data=data, region=region)
    space = load_param_space(s.region)
    if s.observations is not None:
        for w in observation_warnings(s.observations, s.data_file):
            warn(w)
    return s, space


def _data_years(s):
    return None if s.observations is None else s.observations.years


# --- commands -------------------------------------------------------------------------------
@click.group(epilog=CACHE_HELP)
@click.version_option(package_name="regv1_jax")
def main():
    """regv1: vegetation-SOM-soil moisture regeneration model (JAX)."""


@main.command()
def sites():
    """List the bundled sites: region, data file, mean annual precipitation, planting start.

    Names work with --site of simulate and calibrate; the files are read from the
    installed package's data folder."""
    from .._paths import data_dir
    from ..io import site_registry

    with cli_errors():
        reg = site_registry()
        root = data_dir()
    rows = [("site", "region", "data file", "MAP_mm", "planting")]
    for name in sorted(reg):
        e = reg[name]
        f = e.get("data_file")
        path = (Path(e["_folder"]) / f) if f else None
        shown = str(path.relative_to(root)) if path is not None else "(none: pass --data)"
        rows.append((name, str(e.get("region", "")), shown,
                     "" if e.get("MAP_mm") is None else f"{e['MAP_mm']:g}",
                     str(e.get("planting_start") or "none")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    click.echo(f"data folder: {root}")


@main.command(epilog=CACHE_HELP)
@click.option("--site", required=True, help="Site name, e.g. Yanhe-basin (see `regv1 sites`).")
@click.option("--region", default=None, help="Prior region (default: the site's).")
@click.option("--start", type=int, required=True, help="First calendar year.")
@click.option("--end", type=int, required=True,
              help="Last calendar year (inclusive; may equal --start).")
@click.option("--out", type=click.Path(), required=True, help="Output CSV.")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="JSON in the seed's schema whose values override the priors.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with the site's rows (default: the bundled file).")
@click.option("--plot", type=click.Path(), default=None,
              help=f"Figure file ({', '.join('.' + s for s in PLOT_SUFFIXES)}).")
@click.option("--method", type=click.Choice(["tsit5", "dopri8", "kvaerno5", "rk4"]),
              default="tsit5", show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--no-planting", is_flag=True, help="Switch Grain for Green planting off.")
@click.option("--no-cache", is_flag=True, help="Do not use the compilation cache.")
@click.option("--dry-run", is_flag=True,
              help="Check the options and inputs, print warnings, compute nothing.")
@click.option("--forcing", "forcing_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="CSV of per-year forcing: year and any of rainfall_mm, "
              "storm_intensity_mm_min, psi_eng, psi_plant (a year without a value keeps the "
              "last earlier value; before the first, the site's constant).")
def simulate(site, region, start, end, out, params_file, data, plot, method, dtype,
             no_planting, no_cache, dry_run, forcing_file):
    """Simulate a site year by year and write one CSV row per year.

    The CSV and the figure are written under temporary names and renamed into place once
    both are complete."""
    check_years(start, end)
    out_path = prepare_out_file(out, "--out")
    plot_path = prepare_out_file(plot, "--plot", PLOT_SUFFIXES) if plot else None
    if plot_path is not None and plot_path.absolute() == out_path.absolute():
        raise click.BadParameter("--plot and --out name the same file", param_hint="--plot")
    with cli_errors():
        s, space = _load_site(site, data, region)
        if params_file:
            for w in params_file_warnings(params_file, s.region):
                warn(w)
        params = _override(space, params_file)
        ftable = _read_forcing(forcing_file)
    for w in year_range_warnings(start, end, _data_years(s), s.data_file):
        warn(w)
    if dry_run:
        click.echo("inputs ok (dry run): nothing computed, nothing written")
        return
    from ..io import site_forcing
    from ..solve import STATUS_MESSAGES
    from ..solve import simulate as run_simulate

    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        # A one-year run solves two years and keeps the first: the solver needs a forcing
        # date inside the run, and a later year cannot change an earlier one.
        forcing = site_forcing(s, start, max(end, start + 1), planting=not no_planting,
                               forcing_table=ftable)
        sim = run_simulate(params.astype(jdtype), forcing, method=method)
        status = int(sim.status)
        if status != 0:
            raise click.ClickException(
                f"the solve failed: {STATUS_MESSAGES[status]}")
        table = simulation_table(sim).iloc[: end - start + 1]
    targets = [out_path] + ([plot_path] if plot_path else [])
    with cli_errors(), atomic_files(targets) as tmps:
        table.to_csv(tmps[0], index=False, float_format="%.6g")
        if plot_path is not None:
            from ..report import plot_simulation

            src = s.data_file.name if s.data_file is not None else ""
            plot_simulation(table, s.observations, tmps[1],
                            title=f"{s.name} ({s.region}): {method}, {dtype}, "
                            f"{'--params' if params_file else 'prior'} values",
                            obs_label=f"data rows ({src})")
    click.echo(f"{s.name} ({s.region}), {start}-{end}, {method}, {dtype}: wrote {out_path}")
    wb = abs(table["rainfall_mm"] - table["runoff_mm"] - table["ET_mm"] - table["drainage_mm"]
             - table["storage_change_mm"]).max()
    click.echo(f"  cover {table['veg_cover_%'].iloc[0]:.1f}% -> "
               f"{table['veg_cover_%'].iloc[-1]:.1f}%, runoff {table['runoff_mm'].iloc[0]:.1f}"
               f" -> {table['runoff_mm'].iloc[-1]:.1f} mm, max water-balance residual "
               f"{wb:.2e} mm")
    if plot_path is not None:
        click.echo(f"  figure: {plot_path}")


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


def _config_help() -> str:
    from ..fit import CONFIG_KEYS

    return ("JSON calibration config with any of the keys " + ", ".join(CONFIG_KEYS)
            + " (--show-config prints the defaults and what each key means).")


@main.command(epilog=CACHE_HELP)
@click.option("--site", required=True, help="Site (`regv1 sites`), or a location in --data.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV in the seed's schema (default: the site's bundled file).")
@click.option("--region", default=None, help="Prior region (default: the site's).")
@click.option("--out", type=click.Path(), required=True,
              help="Output folder: new, empty, or one that regv1 wrote (it has a "
              "manifest.json); replaced as a whole when the run succeeds.")
@click.option("--force", is_flag=True,
              help="Replace --out even if it holds files regv1 did not write.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help=_config_help())
@click.option("--show-config", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_config, help="Print the default config with each key's meaning.")
@click.option("--start", type=int, default=None, help="First year (default: first data year).")
@click.option("--end", type=int, default=None,
              help="Last year (default: last data year or the holdout's end).")
@click.option("--starts", "n_starts", type=click.IntRange(min=1), default=None,
              help="Starts per stage (>= 1; default: the config's, 8).")
@click.option("--method", type=click.Choice(["tsit5", "rk4"]), default=None,
              help="Solver inside the fit (default tsit5: diffrax adjoint gradients).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Random seed of the prior starts (>= 0).")
@click.option("--no-cache", is_flag=True, help="Do not use the compilation cache.")
@click.option("--dry-run", is_flag=True,
              help="Check the options and inputs, print warnings, compute nothing.")
@click.option("--holdout", default=None, metavar="Y0-Y1|auto|none",
              help="Years kept out of the fit and scored separately: Y0-Y1, 'auto' (the last "
              "~20% of the observed years; the default) or 'none'. Overrides the config.")
@click.option("--forcing", "forcing_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="CSV of per-year forcing: year and any of rainfall_mm, "
              "storm_intensity_mm_min, psi_eng, psi_plant (a year without a value keeps the "
              "last earlier value; before the first, the site's constant).")
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
              dtype, seed, no_cache, dry_run, holdout, forcing_file, area_km2, uncertainty,
              **boot):
    """Staged calibration of a site; writes params.json, fit.csv, metrics.json, figures,
    report.md / report.html and manifest.json into OUT (all at once, when the run ends)."""
    import time

    check_years(start, end, min_years=2)
    check_bootstrap_options(boot)
    out_path = prepare_out_dir(out, force)
    cfg, s, space, obs, ftable, y0, y1 = calibration_inputs(
        site, data, region, config_file, start, end, n_starts, method, seed, holdout,
        forcing_file, area_km2)
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


def calibration_inputs(site, data, region, config_file, start, end, n_starts, method, seed,
                       holdout, forcing_file, area_km2):
    """The checked inputs of a calibration (``calibrate``, ``bootstrap``): config, site,
    parameter space, observations, forcing table and years; year-range warnings printed."""
    import dataclasses

    with cli_errors():
        from ..fit import CalibrationConfig, load_config

        cfg = load_config(config_file) if config_file else CalibrationConfig()
        kw = {k: v for k, v in (("n_starts", n_starts), ("method", method), ("seed", seed))
              if v is not None}
        if holdout is not None:
            kw["holdout"] = _parse_holdout(holdout)
        cfg = dataclasses.replace(cfg, **kw)
        s, space = _load_site(site, data, region)
        if s.observations is None:
            raise DataError(f"site {site!r} has no bundled data: pass --data FILE.csv")
        for st in cfg.stages:
            st.check(space)
        from ..io import convert_gauge

        area = area_km2 if area_km2 is not None else s.area_km2
        obs = convert_gauge(s.observations, area)
        s = dataclasses.replace(s, observations=obs)
        ftable = _read_forcing(forcing_file)
        y0 = int(obs.years[0]) if start is None else start
        y1 = end if end is not None else max(
            int(obs.years[-1]), cfg.holdout[1] if isinstance(cfg.holdout, tuple) else 0)
        check_years(y0, y1, min_years=2)
        if not ((obs.years >= y0) & (obs.years <= y1)).any():
            raise DataError(f"{s.data_file}: no data rows for {s.name!r} in the years "
                            f"{y0}-{y1} (the data cover {int(obs.years.min())}-"
                            f"{int(obs.years.max())}); nothing to calibrate")
    for w in year_range_warnings(y0, y1, obs.years, s.data_file):
        warn(w)
    return cfg, s, space, obs, ftable, y0, y1


def _branch_index(V, stable, valid):
    """Branch labels for the bifurcation table: 0 bare, 1 saddle, 2 restored (by cover
    order among the valid equilibria of each rainfall)."""
    import numpy as np

    kind = np.full(V.shape, -1)
    kind[valid & (V == 0)] = 0
    kind[valid & (V > 0) & ~stable] = 1
    kind[valid & (V > 0) & stable] = 2
    return kind


@main.command(epilog=CACHE_HELP)
@click.option("--region", required=True, help="Prior region: LoessPlateau or ChihuahuanDesert.")
@click.option("--map", "map_mm", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Mean annual rainfall (mm/yr) whose equilibria to report "
              "(default: only the sweep).")
@click.option("--sweep", default="100:900:33", show_default=True,
              help="Rainfall sweep LO:HI:N (mm/yr) for the bifurcation diagram.")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="JSON in the seed's schema whose values override the priors "
              "(e.g. data/parameter_sets/loess_bistable.json).")
@click.option("--intensity", type=click.FloatRange(min=0, min_open=True), default=1.0,
              show_default=True, help="Storm intensity (mm/min).")
@click.option("--planting", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Planting effort 0..1 (0: natural dynamics, bare soil an equilibrium).")
@click.option("--out", type=click.Path(), required=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that regv1 did not write.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--no-cache", is_flag=True, help="Do not use the compilation cache.")
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
        params = _override(space, params_file)
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



def _default_site(region: str) -> str:
    """The first registry site of ``region`` (the forcing of a region-only Sobol' study)."""
    from ..io import site_registry

    for name, entry in site_registry().items():
        if entry.get("region") == region:
            return name
    raise ParameterError(f"no site of region {region!r} in the registry; give --site")


@main.command(epilog=CACHE_HELP)
@click.option("--region", default=None, help="Prior region (LoessPlateau or ChihuahuanDesert); "
              "default: the site's.")
@click.option("--site", default=None, help="Site whose forcing drives the runs (default: the "
              "region's first site, e.g. Yanhe-basin, Jornada-plot).")
@click.option("--qoi", required=True, help="Quantity of interest: COLUMN:YEAR (V:2015), "
              "COLUMN:Y0-Y1 (mean, runoff:2005-2015), runoff_decrease, water_yield_decrease, "
              "soc_sequestration or V_crit.")
@click.option("--params-subset", default=None, help="Comma-separated parameters to vary "
              "(default: r_V,K_V,lambda1,lambda2,eta1,a1,a2,gamma,b_V,c_E,omega_E,k_E,"
              "theta_star,SOM_star,tau_VS,tau_SH).")
@click.option("--n", "n_base", type=int, default=1024, show_default=True,
              help="Base samples N (a power of two); runs: N(d+2), N(2d+2) with "
              "--second-order.")
@click.option("--second-order", is_flag=True, help="Also second-order indices (sobol_s2.csv).")
@click.option("--dgsm", "dgsm_n", type=click.IntRange(min=0), default=0, show_default=True,
              help="DGSM (gradients through the RK4 solve) over the first K base points "
              "(dgsm.csv; 0: off).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Scrambling seed of the Sobol' sequence and bootstrap seed.")
@click.option("--resamples", type=click.IntRange(min=10), default=100, show_default=True,
              help="Bootstrap resamples for the confidence intervals.")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="JSON in the seed's schema: values of the parameters not "
              "varied (default: prior values).")
@click.option("--start", type=int, default=1995, show_default=True, help="First year.")
@click.option("--end", type=int, default=2015, show_default=True, help="Last year.")
@click.option("--chunk", type=click.IntRange(min=1), default=65536, show_default=True,
              help="Model runs per batch (memory: about 0.5 kB per run and year).")
@click.option("--resume", is_flag=True, help="Reuse the finished chunks of an interrupted "
              "run with the same settings (kept in OUT.chunks/ until the run completes).")
@click.option("--out", type=click.Path(), required=True, help="Output folder.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that regv1 did not write.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32",
              show_default=True, help="Precision of the model runs (indices: float64).")
@click.option("--no-cache", is_flag=True, help="Do not use the compilation cache.")
@click.option("--quiet", is_flag=True, help="No progress line.")
def sobol(region, site, qoi, params_subset, n_base, second_order, dgsm_n, seed, resamples,
          params_file, start, end, chunk, resume, out, force, dtype, no_cache, quiet):
    """Sobol' indices (first, total, optionally second order) of a quantity of interest,
    with bootstrap confidence intervals, and optionally DGSM.

    Each varied parameter is uniform on its prior CI_95 on its own scale (log-uniform for
    log-scale parameters); the others stay at their prior values (or --params).  A
    Saltelli block with a failed run is dropped whole and counted in sobol.json.

    Writes sobol.csv (parameter, S1, S1_lo, S1_hi, ST, ST_lo, ST_hi), sobol_s2.csv
    (--second-order), dgsm.csv (--dgsm), sobol.json, sobol.png and manifest.json into OUT."""
    import shutil
    import time

    check_years(start, end, min_years=2)
    if n_base < 2 or n_base & (n_base - 1):
        raise click.BadParameter(
            f"{n_base} is not a power of two >= 2 (Sobol' sequences are balanced only at "
            f"powers of two), e.g. {1 << max(n_base.bit_length() - 1, 1)} or "
            f"{1 << max(n_base.bit_length(), 1)}", param_hint="--n")
    if region is None and site is None:
        raise click.UsageError("give --region or --site")
    out_path = prepare_out_dir(out, force)
    with cli_errors():
        from ..analysis import DEFAULT_SUBSET, QoIContext, make_qoi
        from ..io import get_site
        from ..model import load_param_space

        if region is not None:
            load_param_space(region)  # an unknown region is named before the site
        site_name = site or _default_site(region)
        s = get_site(site_name, region=region)
        region = region or s.region
        space = load_param_space(region)
        names = (tuple(x.strip() for x in params_subset.split(",") if x.strip())
                 if params_subset else DEFAULT_SUBSET)
        for n in names:
            space.spec(n)
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(f"--params-subset needs at least two distinct parameters, got "
                             f"{list(names)}")
        if params_file:
            for w in params_file_warnings(params_file, region):
                warn(w)
        base = space.override(params_file) if params_file else space.prior_values()
        ctx = QoIContext(start, end, s.planting_start, s.MAP_mm, s.intensity)
        q = make_qoi(qoi, ctx)
        if dgsm_n and not q.scenarios:
            raise ValueError(f"--dgsm needs a QoI of the simulation; {q.name} has none")
    import jax

    from ..analysis import sobol_study
    from ..io import site_forcing
    from ..report import write_sobol

    chunks_dir = Path(str(out_path) + ".chunks")
    if not resume and chunks_dir.exists():
        shutil.rmtree(chunks_dir)
    d = len(names)
    runs = n_base * (2 * d + 2 if second_order else d + 2)
    click.echo(f"{region} / {site_name}: {q.name} [{q.units}], d = {d}, N = {n_base}, "
               f"{runs} model runs ({dtype})", err=True)
    t0 = time.time()
    with compute_context(dtype, no_cache) as jdtype, cli_errors():
        jax.config.update("jax_enable_x64", True)  # indices in float64; runs in --dtype
        forcing = site_forcing(s, start, end)
        study = sobol_study(space, forcing, q, names=names, N=n_base,
                            second_order=second_order, seed=seed, dtype=jdtype, base=base,
                            chunk=chunk, store_dir=chunks_dir,
                            store_key={"region": region, "site": site_name,
                                       "start": start, "end": end,
                                       "params": str(params_file)},
                            resume=resume, progress=not quiet, num_resamples=resamples,
                            dgsm_n=dgsm_n)
    sampling = {n: {"lower": space.spec(n).lower, "upper": space.spec(n).upper,
                    "scale": space.spec(n).scale, "units": space.spec(n).units,
                    "distribution": "log-uniform" if space.spec(n).scale == "log"
                    else "uniform"} for n in names}
    settings = {"region": region, "site": site_name, "start": start, "end": end,
                "seed": seed, "dtype_runs": dtype, "dtype_indices": "float64",
                "chunk": chunk, "params": str(params_file) if params_file else "prior values",
                "dgsm_points": dgsm_n}
    doc = command_manifest({"params": params_file}, dtype=dtype, region=region)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_sobol(study, q, settings, sampling, tmp,
                            title=f"{site_name}: {q.name} [{q.units}], N = {n_base}, "
                            f"{study.failed_blocks} failed blocks")
    shutil.rmtree(chunks_dir, ignore_errors=True)
    i = study.indices
    top = sorted(zip(i.ST, names), reverse=True)[:5]
    click.echo(f"[{time.time() - t0:6.1f}s] {runs} runs, {study.failed_rows} failed "
               f"({study.failed_blocks} blocks dropped); wrote {out_path}/: "
               + ", ".join(files) + ", manifest.json")
    click.echo("  largest ST: " + ", ".join(f"{n} {v:.3f}" for v, n in top))

bootstrap.epilog = CACHE_HELP
main.add_command(bootstrap)

# regv1 profile, regv1 identify (issue 11): bodies in _cli_profile.py.
from ._profile import register as _register_profile  # noqa: E402

_register_profile(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
