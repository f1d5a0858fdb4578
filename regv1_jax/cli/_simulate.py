"""``regv1 simulate``: one site, year by year, one CSV row per year (and a figure)."""

from __future__ import annotations

import click

from ..io import params_file_warnings, year_range_warnings
from ..report import atomic_files
from ._common import (
    CACHE_HELP,
    PLOT_SUFFIXES,
    check_years,
    cli_errors,
    compute_context,
    data_years,
    dry_run_option,
    dtype_option,
    forcing_option,
    load_site_and_space,
    no_cache_option,
    override_params,
    params_option,
    prepare_out_file,
    read_forcing_option,
    warn,
)

SIM_COLUMNS = (
    "year", "V", "veg_cover_%", "SOM_%", "SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%",
    "theta_m3/m3", "rainfall_mm", "runoff_mm", "ET_mm", "drainage_mm", "water_yield_mm",
    "storage_change_mm", "erosion_t/ha",
)


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


@click.command(epilog=CACHE_HELP)
@click.option("--site", required=True, help="Site name, e.g. Yanhe-basin (see `regv1 sites`).")
@click.option("--region", default=None, help="Prior region (default: the site's).")
@click.option("--start", type=int, required=True, help="First calendar year.")
@click.option("--end", type=int, required=True,
              help="Last calendar year (inclusive; may equal --start).")
@click.option("--out", type=click.Path(), required=True, help="Output CSV.")
@params_option
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with the site's rows (default: the bundled file).")
@click.option("--plot", type=click.Path(), default=None,
              help=f"Figure file ({', '.join('.' + s for s in PLOT_SUFFIXES)}).")
@click.option("--method", type=click.Choice(["tsit5", "dopri8", "kvaerno5", "rk4"]),
              default="tsit5", show_default=True)
@dtype_option()
@click.option("--no-planting", is_flag=True, help="Switch Grain for Green planting off.")
@no_cache_option
@dry_run_option
@forcing_option
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
        s, space = load_site_and_space(site, data, region)
        if params_file:
            for w in params_file_warnings(params_file, s.region):
                warn(w)
        params = override_params(space, params_file)
        ftable = read_forcing_option(forcing_file)
    for w in year_range_warnings(start, end, data_years(s), s.data_file):
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
