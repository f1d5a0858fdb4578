"""``regv1 profile`` and ``regv1 identify``: profile likelihood and identifiability of a
site's calibration.

Both start from a point fit: a fresh ``calibrate_site`` (the same options and config as
``regv1 calibrate``), or ``--from-calibration DIR`` (the params.json, and metrics.json's
holdout, of an earlier ``regv1 calibrate`` with the same data and config).  Float64
throughout: deviances are differences of losses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..status import code
from ._common import (
    CACHE_HELP,
    calibration_inputs,
    check_years,
    cli_errors,
    command_manifest,
    compute_context,
    fit_years_options,
    no_cache_option,
    out_dir_options,
    out_dir_writer,
    prepare_out_dir,
    site_options,
)


def _inputs_options(f):
    """Options shared by both commands (the inputs of the point fit)."""
    f = no_cache_option(f)
    f = out_dir_options(f)
    f = fit_years_options(f)
    f = click.option("--from-calibration", "from_cal",
                     type=click.Path(exists=True, file_okay=False), default=None,
                     help="Folder of an earlier `regv1 calibrate` (params.json: the estimate "
                     "and the calibrated set; metrics.json: the holdout years) with the same "
                     "data and config; default: calibrate first.")(f)
    return site_options(f)


def _read_calibration(folder: str, space, site: str) -> dict:
    """The estimate, calibrated set and holdout of a ``regv1 calibrate`` folder."""
    from ..fit import CalibrationError
    from ..model import PARAM_NAMES

    path = Path(folder) / "params.json"
    if not path.exists():
        raise CalibrationError(f"{folder}: no params.json (not a `regv1 calibrate` folder)")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CalibrationError(f"{path}: not valid JSON ({err})") from None
    block = doc.get(space.region) if isinstance(doc, dict) else None
    if not isinstance(block, dict):
        raise CalibrationError(f"{path}: no block for region {space.region!r} (regions: "
                               f"{[k for k in doc if not k.startswith('_')]})")
    values, free = {}, []
    for n in PARAM_NAMES:
        e = block.get(n)
        if not isinstance(e, dict) or not isinstance(e.get("value"), (int, float)):
            raise CalibrationError(f"{path}: parameter {n!r} has no numeric value")
        values[n] = float(e["value"])
        if e.get("source") == "calibrated":
            free.append(n)
    if not free:
        raise CalibrationError(f"{path}: no parameter has source 'calibrated'")
    meta_site = doc.get("_meta", {}).get("site")
    out = {"values": values, "free": free, "site": meta_site, "params_json": str(path)}
    mpath = Path(folder) / "metrics.json"
    if mpath.exists():
        m = json.loads(mpath.read_text())
        h = m.get("holdout_years")
        out["holdout"] = tuple(h) if h else None
    if meta_site and meta_site != site:
        click.echo(f"warning: {path} calibrated site {meta_site!r}, not {site!r}", err=True)
    return out


def _inputs(site, data, region, from_cal, config_file, start, end, holdout):
    """Checked inputs (before any compilation): ``calibrate``'s (``calibration_inputs``)
    and the earlier calibration folder, if any."""
    check_years(start, end, min_years=2)
    cfg, s, space, _, _, y0, y1 = calibration_inputs(
        site, data, region, config_file, start, end, holdout=holdout)
    with cli_errors():
        calib = _read_calibration(from_cal, space, s.name) if from_cal else None
    return cfg, s, space, y0, y1, calib


def _point_fit(cfg, s, space, y0, y1, calib, t0):
    """The :class:`ProfileSetup` of the point fit (calibrating first unless ``calib``)."""
    import jax.numpy as jnp

    from ..analysis import ProfileSetup, setup_from_calibration
    from ..fit import calibrate_site, resolve_holdout, training_targets
    from ..io import site_forcing

    forcing = site_forcing(s, y0, y1)
    prior = space.prior_values(jnp.float64)
    if calib is None:
        click.echo(f"calibrating {s.name} ({s.region}), {y0}-{y1} (regv1 calibrate's "
                   "staged fit; --from-calibration DIR skips this)", err=True)
        cal = calibrate_site(space, prior, forcing, s.observations, cfg,
                             planting_start=s.planting_start, identifiability=False,
                             progress=lambda m: click.echo(f"[{time.time() - t0:6.1f}s] {m}",
                                                           err=True))
        return setup_from_calibration(cal)
    params = prior.replace(**{n: jnp.asarray(v, jnp.float64)
                              for n, v in calib["values"].items()})
    hold = calib["holdout"] if "holdout" in calib else \
        resolve_holdout(cfg.holdout, s.observations, forcing.years)[0]
    targets = training_targets(s.observations, forcing, hold, jnp.float64)
    return ProfileSetup(space, params, forcing, targets, tuple(calib["free"]), cfg,
                        events=any(st.events for st in cfg.stages))


def _manifest_inputs(s, config_file, calib, extra=None):
    inputs = {"data": s.data_file, "config": config_file,
              "calibration": calib["params_json"] if calib else None}
    inputs.update(extra or {})
    return inputs


@click.command("profile", epilog=CACHE_HELP)
@_inputs_options
@click.option("--param", "params", multiple=True,
              help="Also profile this parameter (repeatable; the seed's thresholds "
              "theta_star and SOM_star are always profiled).")
@click.option("--points", type=click.IntRange(min=3), default=41, show_default=True,
              help="Grid points per parameter (odd; an even count gets one more).")
@click.option("--k-sd", "k_sd", type=click.FloatRange(min=0, min_open=True), default=3.0,
              show_default=True, help="Grid half-width in prior standard deviations (on the "
              "prior's scale), cut inside the physical bounds.")
@click.option("--lm-steps", type=click.IntRange(min=1), default=None,
              help="Most Levenberg-Marquardt iterations per grid point (default 15; each "
              "point starts from its converged neighbour).")
def profile_cmd(site, data, region, from_cal, config_file, start, end, holdout, out, force,
                no_cache, params, points, k_sd, lm_steps):
    """Profile likelihood of the seed's thresholds (and --param): each grid point refits
    every other calibrated parameter (one joint Levenberg-Marquardt on the calibration's
    objective, warm-started from the neighbouring point, all sweeps batched); 95%
    likelihood-ratio intervals (deviance 2 (L - L_min) / max(1, chi2/dof) <= 3.84).

    Writes profile.csv, profile.json, profile.png and manifest.json into OUT."""
    from ..analysis import DEFAULT_PROFILED

    cfg, s, space, y0, y1, calib = _inputs(site, data, region, from_cal, config_file, start,
                                           end, holdout)
    names = list(DEFAULT_PROFILED) + [p for p in params if p not in DEFAULT_PROFILED]
    with cli_errors():
        for n in names:
            space.spec(n)
        if len(set(names)) != len(names):
            raise ValueError(f"--param names a parameter twice: {list(params)}")
    out_path = prepare_out_dir(out, force)
    from ..analysis import PROFILE_LM_STEPS, profile
    from ..report import write_profile

    t0 = time.time()
    with compute_context("float64", no_cache), cli_errors():
        setup = _point_fit(cfg, s, space, y0, y1, calib, t0)
        click.echo(f"[{time.time() - t0:6.1f}s] profiling {', '.join(names)}: {points} points "
                   f"each, refitting {', '.join(setup.free)} (first call compiles)", err=True)
        profs = profile(setup, names, points=points, k_sd=k_sd, lm_steps=lm_steps)
    settings = {"site": s.name, "region": s.region, "years": [y0, y1],
                "points": int(profs[0].x.size), "k_sd": k_sd, "dtype": "float64",
                "lm_steps": lm_steps or PROFILE_LM_STEPS,
                "method": cfg.method, "prior_weight": cfg.prior_weight,
                "events": setup.events, "calibrated": list(setup.free),
                "point_fit": calib["params_json"] if calib else "calibrate_site (this run)",
                "objective": "the joint stage's: every target variable, the event "
                "constraints when the fit used them, the prior rows of the refitted "
                "parameters; the profiled parameter's own prior row left out"}
    doc = command_manifest(_manifest_inputs(s, config_file, calib), dtype="float64",
                           site=s.name, region=s.region)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_profile(profs, tmp, settings, title=f"{s.name}: profile likelihood")
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: " + ", ".join(files)
               + ", manifest.json")
    echo_profiles(profs)


def echo_profiles(profs) -> None:
    """One line per profile: estimate, 95% LR interval, open sides, flat, point status."""
    for p in profs:
        flags = [w for w, on in (("open below", p.open_lower), ("open above", p.open_upper),
                                 ("FLAT", p.flat)) if on]
        nc = int((p.status == code("not_converged")).sum())
        failed = (f", {len(p.failed)} failed points" if p.failed else "") + \
            (f", {nc} points not converged (--lm-steps)" if nc else "")
        click.echo(f"  {p.name} = {p.estimate:.4g}: 95% LR [{p.ci[0]:.4g}, {p.ci[1]:.4g}]"
                   + (f" ({', '.join(flags)})" if flags else "") + failed)


@click.command("identify", epilog=CACHE_HELP)
@_inputs_options
@click.option("--replicates", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Parameter vectors (e.g. bootstrap replicates): CSV with one column per "
              "parameter (optional status column; rows not 0/ok dropped) or NPZ "
              "(replicates, names, optional status).")
def identify_cmd(site, data, region, from_cal, config_file, start, end, holdout, out, force,
                 no_cache, replicates):
    """Identifiability of the calibrated parameters: correlation, VIF (flag > 10), |r| > 0.9
    pairs and the sloppy eigen-directions, from the data rows at the estimate and, with
    --replicates, from the sample.

    Writes correlation.csv, vif.csv, sloppy.csv, identify.json, correlation.png and
    manifest.json into OUT."""
    from ..analysis import identify_data, identify_sample, read_replicates
    from ..report import write_identify

    cfg, s, space, y0, y1, calib = _inputs(site, data, region, from_cal, config_file, start,
                                           end, holdout)
    sample = None
    if replicates:
        with cli_errors():
            sample = read_replicates(replicates, space)
    out_path = prepare_out_dir(out, force)
    t0 = time.time()
    with compute_context("float64", no_cache), cli_errors():
        setup = _point_fit(cfg, s, space, y0, y1, calib, t0)
        click.echo(f"[{time.time() - t0:6.1f}s] identifiability of {', '.join(setup.free)} "
                   "(jacfwd of the data rows)", err=True)
        idents = [identify_data(space, setup.params, setup.forcing, setup.targets,
                                list(setup.free), cfg, setup.events)]
        if sample is not None:
            X, names, dropped = sample
            idents.append(identify_sample(X, names, space, dropped))
    settings = {"site": s.name, "region": s.region, "years": [y0, y1], "dtype": "float64",
                "calibrated": list(setup.free), "replicates": replicates,
                "point_fit": calib["params_json"] if calib else "calibrate_site (this run)"}
    doc = command_manifest(_manifest_inputs(s, config_file, calib, {"replicates": replicates}),
                           dtype="float64", site=s.name, region=s.region)
    with out_dir_writer(out_path, doc) as tmp:
        files = write_identify(idents, tmp, settings, title=f"{s.name}: identifiability")
    click.echo(f"[{time.time() - t0:6.1f}s] wrote {out_path}/: " + ", ".join(files)
               + ", manifest.json")
    for i in idents:
        pairs = [f"{a}-{b} {r:+.2f}" for (a, b), r in
                 ((p["pair"], p["corr"]) for p in i.pairs() if p["flag"])]
        click.echo(f"  {i.source}: |r| > 0.9: {', '.join(pairs) or 'none'}; VIF > 10: "
                   f"{', '.join(i.vif_flags()) or 'none'}; least-informed direction: "
                   + ", ".join(f"{n} {v:+.2f}" for n, v in
                               list(i.sloppy(1)[0]["loadings"].items())[:3])
                   + f" (information {i.information[0]:.3g})")
