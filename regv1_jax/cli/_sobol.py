"""``regv1 sobol``: Sobol' indices (and DGSM) of a quantity of interest."""

from __future__ import annotations

from pathlib import Path

import click

from ..io import params_file_warnings
from ..model import ParameterError
from ._common import (
    CACHE_HELP,
    check_years,
    cli_errors,
    command_manifest,
    compute_context,
    dtype_option,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
    warn,
)


def _default_site(region: str) -> str:
    """The first registry site of ``region`` (the forcing of a region-only Sobol' study)."""
    from ..io import site_registry

    for name, entry in site_registry().items():
        if entry.get("region") == region:
            return name
    raise ParameterError(f"no site of region {region!r} in the registry; give --site")


@click.command(epilog=CACHE_HELP)
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
@out_dir_options
@dtype_option("float32", "Precision of the model runs (indices: float64).")
@no_cache_option
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
