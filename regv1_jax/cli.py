"""The ``regv1`` command line.

``regv1 simulate`` runs the model for a site and writes one row per year; ``regv1 calibrate``
(when available) fits it to the site's data and writes a report.  Files and plots stay here,
at the edge; the library below never flips ``jax.config``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._data import DataError
from ._params import ParameterError

SIM_COLUMNS = (
    "year", "V", "veg_cover_%", "SOM_%", "SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%",
    "theta_m3/m3", "rainfall_mm", "runoff_mm", "ET_mm", "drainage_mm", "water_yield_mm",
    "storage_change_mm", "erosion_t/ha",
)


def _setup_jax(dtype: str):
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return jnp.float64 if dtype == "float64" else jnp.float32


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


@click.group()
@click.version_option(package_name="regv1_jax")
def main():
    """regv1: vegetation-SOM-soil moisture regeneration model (JAX)."""


@main.command()
@click.option("--site", required=True, help="Site name, e.g. Yanhe-basin (see data/sites.json).")
@click.option("--region", default=None, help="Prior region (default: the site's).")
@click.option("--start", type=int, required=True, help="First calendar year.")
@click.option("--end", type=int, required=True, help="Last calendar year (inclusive).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output CSV.")
@click.option("--params", "params_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="JSON in the seed's schema whose values override the priors.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with the site's rows (default: the bundled file).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Figure (PNG).")
@click.option("--method", type=click.Choice(["tsit5", "dopri8", "kvaerno5", "rk4"]),
              default="tsit5", show_default=True)
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--no-planting", is_flag=True, help="Switch Grain for Green planting off.")
def simulate(site, region, start, end, out, params_file, data, plot, method, dtype,
             no_planting):
    """Simulate a site year by year and write one CSV row per year."""
    jdtype = _setup_jax(dtype)
    from . import _solve
    from ._params import load_param_space
    from ._sites import get_site, site_forcing

    try:
        s = get_site(site, data=data, region=region)
        space = load_param_space(s.region)
        params = space.override(params_file) if params_file else space.prior_values()
        forcing = site_forcing(s, start, end, planting=not no_planting)
    except (DataError, ParameterError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    params = params.astype(jdtype)
    sim = _solve.simulate(params, forcing, method=method)
    if int(sim.status) != 0:
        raise click.ClickException(
            f"the solve failed: {_solve.STATUS_MESSAGES[int(sim.status)]}")
    table = simulation_table(sim)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.6g")
    click.echo(f"{s.name} ({s.region}), {start}-{end}, {method}, {dtype}: wrote {out}")
    wb = abs(table["rainfall_mm"] - table["runoff_mm"] - table["ET_mm"] - table["drainage_mm"]
             - table["storage_change_mm"]).max()
    click.echo(f"  cover {table['veg_cover_%'].iloc[0]:.1f}% -> {table['veg_cover_%'].iloc[-1]:.1f}%,"
               f" runoff {table['runoff_mm'].iloc[0]:.1f} -> {table['runoff_mm'].iloc[-1]:.1f} mm,"
               f" max water-balance residual {wb:.2e} mm")
    if plot:
        from ._plots import plot_simulation

        src = s.data_file.name if s.data_file is not None else ""
        plot_simulation(table, s.observations, plot,
                        title=f"{s.name} ({s.region}): {method}, {dtype}, "
                        f"{'--params' if params_file else 'prior'} values",
                        obs_label=f"data rows ({src})")
        click.echo(f"  figure: {plot}")


@main.command()
@click.option("--site", required=True, help="Site (data/sites.json), or a location in --data.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV in the seed's schema (default: the site's bundled file).")
@click.option("--region", default=None, help="Prior region (default: the site's).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              default=None, help="JSON calibration config (stages, starts, iterations).")
@click.option("--start", type=int, default=None, help="First year (default: first data year).")
@click.option("--end", type=int, default=None,
              help="Last year (default: last data year or the holdout's end).")
@click.option("--starts", "n_starts", type=int, default=None, help="Starts per stage.")
@click.option("--method", type=click.Choice(["tsit5", "rk4"]), default=None,
              help="Solver inside the fit (default tsit5: diffrax adjoint gradients).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64",
              show_default=True)
@click.option("--seed", type=int, default=None, help="Random seed of the prior starts.")
def calibrate(site, data, region, out, config_file, start, end, n_starts, method, dtype, seed):
    """Staged calibration of a site; writes params.json, fit.csv, metrics.json, figures and
    report.md / report.html into OUT."""
    import dataclasses
    import time

    _setup_jax(dtype)
    import jax

    jax.config.update("jax_compilation_cache_dir",
                      str(Path.home() / ".cache" / "regv1_jax" / "xla"))
    from ._calibrate import CalibrationConfig, CalibrationError, load_config
    from ._fit import calibrate_site
    from ._params import load_param_space
    from ._report import write_outputs
    from ._sites import get_site, site_forcing

    t0 = time.time()
    try:
        s = get_site(site, data=data, region=region)
        if s.observations is None:
            raise DataError(f"site {site!r} has no bundled data: pass --data FILE.csv")
        cfg = load_config(config_file) if config_file else CalibrationConfig()
        kw = {k: v for k, v in (("n_starts", n_starts), ("method", method), ("seed", seed))
              if v is not None}
        cfg = dataclasses.replace(cfg, **kw)
        space = load_param_space(s.region)
        prior = space.prior_values(_setup_jax(dtype))
        obs = s.observations
        y0 = int(obs.years[0]) if start is None else start
        y1 = end if end is not None else max(int(obs.years[-1]),
                                             cfg.holdout[1] if cfg.holdout else 0)
        forcing = site_forcing(s, y0, y1)
        click.echo(f"calibrating {s.name} ({s.region}) on {s.data_file}, {y0}-{y1}, "
                   f"{cfg.method}/{dtype}, {cfg.n_starts} starts per stage")
        click.echo("  (the first stage includes compilation; later stages reuse it)")
        cal = calibrate_site(space, prior, forcing, obs, cfg, planting_start=s.planting_start,
                             progress=lambda m: click.echo(f"[{time.time() - t0:6.1f}s] {m}"))
    except (DataError, ParameterError, CalibrationError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    files = write_outputs(cal, out)
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {files['md']}, {files['html']}, "
               f"{files['params']}, {files['fit']}, {files['metrics']}")
    for k, v in cal.criteria.items():
        res = v.get("pass")
        click.echo(f"  {k}: {'n/a' if res is None else ('pass' if res else 'FAIL')}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())