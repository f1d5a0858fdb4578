"""What every ``regv1`` command shares: one-line errors, warnings, the checks of options and
output paths, the compute context, the manifest, the checked inputs of a calibration, and
the options several commands take (declared once here).

Every command follows the same order:

1. check options and inputs (:func:`cli_errors` turns every user error into one line and an
   exit code 1; :func:`warn` prints plausibility warnings), and the output paths
   (:func:`prepare_out_dir` / :func:`prepare_out_file`) - all before JAX compiles anything;
2. compute inside :func:`compute_context` (persistent compilation cache, cacheable traces);
3. write through :func:`out_dir_writer` (a temporary folder swapped into place, with a
   ``manifest.json`` from :func:`command_manifest`) or ``report.atomic_files``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import click

from ..io import DataError, observation_warnings, year_range_warnings
from ..model import ParameterError
from ..report import (
    OutputError,
    atomic_out_dir,
    check_out_dir,
    check_out_file,
    manifest,
    os_error_message,
)

PLOT_SUFFIXES = ("png", "pdf", "svg", "jpg", "jpeg")
MAX_YEARS = 1000  # longest run a command accepts
DEBUG_ENV = "REGV1_DEBUG"  # set to 1 to see the traceback behind a one-line error

CACHE_HELP = (
    "Compiled functions are cached on disk in ~/.cache/regv1_jax/xla (or $REGV1_CACHE_DIR), so "
    "that the next run of the same job skips most compilation; --no-cache or REGV1_NO_CACHE=1 "
    "turns the cache off (delete the folder to reclaim the space).")


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


def read_forcing_option(path):
    """``--forcing``: the per-year forcing table (None without the option)."""
    if not path:
        return None
    from ..io import read_forcing_csv

    return read_forcing_csv(path)


def parse_holdout(text: str):
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


def override_params(space, params_file):
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

    from .. import _traces
    from ._cache import cache_dir, cache_disabled, cacheable_traces, enable_cache

    folder = enable_cache(disabled=no_cache)
    if folder is None and not (no_cache or cache_disabled()):
        warn(f"compilation cache {cache_dir()} cannot be written; compiling without it")
    # Traced functions beside the compiled ones (regv1_jax._traces): same switch.
    if folder is not None:
        _traces.enable(folder.parent / "traces")
    else:
        _traces.disable()
    with cacheable_traces():
        yield jnp.float64 if dtype == "float64" else jnp.float32


def load_site_and_space(site: str, data: str | None, region: str | None):
    """The site and its region's parameter space, with the data's plausibility warnings."""
    from ..io import get_site
    from ..model import load_param_space

    s = get_site(site, data=data, region=region)
    space = load_param_space(s.region)
    if s.observations is not None:
        for w in observation_warnings(s.observations, s.data_file):
            warn(w)
    return s, space


def data_years(s):
    return None if s.observations is None else s.observations.years


def calibration_inputs(site, data, region, config_file, start, end, *, holdout=None,
                       forcing_file=None, area_km2=None, **overrides):
    """The checked inputs of a calibration (``calibrate``, ``bootstrap``, ``profile``):
    config (``overrides``: config keys given as options, None = the config's), site,
    parameter space, observations, forcing table and years; year-range warnings printed."""
    import dataclasses

    with cli_errors():
        from ..fit import CalibrationConfig, load_config

        cfg = load_config(config_file) if config_file else CalibrationConfig()
        kw = {k: v for k, v in overrides.items() if v is not None}
        if holdout is not None:
            kw["holdout"] = parse_holdout(holdout)
        cfg = dataclasses.replace(cfg, **kw)
        s, space = load_site_and_space(site, data, region)
        if s.observations is None:
            raise DataError(f"site {site!r} has no bundled data: pass --data FILE.csv")
        for st in cfg.stages:
            st.check(space)
        from ..io import convert_gauge

        area = area_km2 if area_km2 is not None else s.area_km2
        obs = convert_gauge(s.observations, area)
        s = dataclasses.replace(s, observations=obs)
        ftable = read_forcing_option(forcing_file)
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


# --- options several commands take (one declaration each) ----------------------------------
def _stack(*opts):
    """Apply click options in the order written (the first is the first in --help)."""
    return lambda f: functools.reduce(lambda g, o: o(g), reversed(opts), f)


def site_options(f):
    """``--site``, ``--data``, ``--region``: the site and its observations."""
    return _stack(
        click.option("--site", required=True,
                     help="Site (`regv1 sites`), or a location in --data."),
        click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="CSV in the seed's schema (default: the site's bundled file)."),
        click.option("--region", default=None, help="Prior region (default: the site's)."),
    )(f)


def out_dir_options(f):
    """``--out``, ``--force``: the output folder, owned and replaced atomically."""
    return _stack(
        click.option("--out", type=click.Path(), required=True,
                     help="Output folder: new, empty, or one that regv1 wrote (it has a "
                     "manifest.json); replaced as a whole when the run succeeds."),
        click.option("--force", is_flag=True,
                     help="Replace --out even if it holds files regv1 did not write."),
    )(f)


def fit_years_options(f):
    """``--config``, ``--start``, ``--end``, ``--holdout``: the inputs of a point fit."""
    from ..fit import CONFIG_KEYS

    return _stack(
        click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                     default=None, help="JSON calibration config with any of the keys "
                     + ", ".join(CONFIG_KEYS) + " (`regv1 calibrate --show-config` prints "
                     "the defaults and what each key means)."),
        click.option("--start", type=int, default=None,
                     help="First year (default: first data year)."),
        click.option("--end", type=int, default=None,
                     help="Last year (default: last data year or the holdout's end)."),
        click.option("--holdout", default=None, metavar="Y0-Y1|auto|none",
                     help="Years kept out of the fit and scored separately: Y0-Y1, 'auto' (the "
                     "last ~20% of the observed years; the default) or 'none'. Overrides the "
                     "config."),
    )(f)


def dtype_option(default: str = "float64", help: str | None = None):
    """``--dtype float64|float32``."""
    choices = ["float64", "float32"] if default == "float64" else ["float32", "float64"]
    return click.option("--dtype", type=click.Choice(choices), default=default,
                        show_default=True, help=help)


def interval_refits_options(B: int, what: str):
    """``--B`` (bootstrap refits, 0: no intervals; default ``B``) and ``--seed`` (of the
    resampling) of the commands that put bootstrap intervals on derived quantities
    (``scaling``, ``scenario``); ``what``: the intervals' subject in ``--B``'s help."""
    return _stack(
        click.option("--B", "B", type=click.IntRange(min=0), default=B, show_default=True,
                     help=f"Bootstrap refits {what} (0: none)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the bootstrap resampling."),
    )


no_cache_option = click.option("--no-cache", is_flag=True,
                               help="Do not use the compilation cache.")
dry_run_option = click.option("--dry-run", is_flag=True,
                              help="Check the options and inputs, print warnings, compute "
                              "nothing.")
forcing_option = click.option(
    "--forcing", "forcing_file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="CSV of per-year forcing: year and any of rainfall_mm, storm_intensity_mm_min, "
    "psi_eng, psi_plant (a year without a value keeps the last earlier value; before the "
    "first, the site's constant).")
params_option = click.option(
    "--params", "params_file", type=click.Path(exists=True, dir_okay=False), default=None,
    help="JSON in the seed's schema whose values override the priors (e.g. "
    "data/parameter_sets/loess_bistable.json).")
