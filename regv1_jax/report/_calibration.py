"""Calibration outputs: params.json (the seed's schema), fit.csv, metrics.json, figures,
report.md and report.html.  Numbers in, files out; no JAX transforms here."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..fit import (
    CORR_FLAG,
    SEED_CRITERIA,
    STAGE_STATUS,
    TARGET_VARIABLES,
    SiteCalibration,
    describe,
    simulated,
)
from ..model import PARAM_NAMES, SEED_PARAM_NAMES
from ._bootstrap import (
    bootstrap_entry,
    bootstrap_markdown,
    bootstrap_settings,
    bootstrap_summary,
    write_bootstrap,
)
from ._figures import VARIABLE_LABELS, plot_correlation, plot_fit
from ._format import flag_words, fmt, json_safe, md_table
from ._html import report_html

__all__ = ["write_outputs", "optimizer_text", "METRIC_DEFINITIONS", "SCAFFOLD_FILES",
           "params_json", "fit_table", "report_markdown"]

SCAFFOLD_FILES = {"loess_plateau_1995_2010.csv", "johnson_soil_carbon.csv"}

# One line per goodness-of-fit metric (obs o_i, simulated s_i, n years, mean obs ō).
METRIC_DEFINITIONS = (
    ("n", "number of observed years scored"),
    ("R2 (1:1)", "coefficient of determination about the 1:1 line, 1 − Σ(s_i − o_i)²/"
     "Σ(o_i − ō)² (the seed's R2 >= 0.7 is judged on this; equal to NSE)"),
    ("r² (corr.)", "squared Pearson correlation of observed and simulated values (1: perfectly "
     "linear; blind to bias and scale: a simulation equal to twice the data scores 1)"),
    ("RMSE", "root-mean-square error √(Σ(s_i − o_i)²/n), in the variable's units"),
    ("rel. RMSE", "RMSE divided by the mean observed value |ō| (0.2 = 20 %)"),
    ("NSE", "Nash-Sutcliffe efficiency 1 − Σ(s_i − o_i)²/Σ(o_i − ō)² (1: perfect; 0: no "
     "better than the observed mean; can be negative)"),
)


def optimizer_text(cal: SiteCalibration) -> str:
    """What the optimiser that ran was, from the config and the stages' own counts."""
    cfg = cal.config
    run = [r for r in cal.stages if r.skipped is None]
    starts = max((r.n_starts for r in run), default=cfg.n_starts)
    if cfg.optimizer == "lm":
        second = (f"Levenberg-Marquardt (forward-mode Jacobian through the solve, at most "
                  f"{cfg.lm_steps} iterations per start)")
    else:
        second = f"Optax L-BFGS ({cfg.lbfgs_steps} iterations per start)"
    first = f"Optax Adam ({cfg.adam_steps} steps, learning rate {cfg.adam_lr:g}), then " \
        if cfg.adam_steps else ""
    its = ", ".join(f"{r.name} {r.iterations}" for r in run) or "no stage ran"
    return (f"{first}{second}; {starts} start(s) per stage under vmap; iterations of the "
            f"winning start: {its}")


def params_json(cal: SiteCalibration, boot=None) -> dict:
    """Calibrated parameters in the seed's schema (value, units, CI_95, source), with the
    flags of the local analysis: ``at_bound`` (None, "lower", "upper"; the CI_95 is then
    one-sided), ``not_identified`` (by the data), ``prior_dominated`` (posterior/prior sd >
    0.8), ``outside_prior_CI_95``.  ``source`` is "prior" for every parameter that no stage
    fitted (its stage skipped, or held for lack of data sensitivity).

    With a block bootstrap (``boot``, :class:`BootstrapResult`) ``CI_95`` of every
    bootstrapped parameter is the bootstrap BCa interval (the percentile one where BCa is
    undefined), ``CI_method`` says which, the local interval stays as ``CI_95_local`` and
    both bootstrap intervals are given (``CI_95_bootstrap_BCa``,
    ``CI_95_bootstrap_percentile``)."""
    fitted = set()
    for r in cal.stages:
        if r.skipped is None:
            fitted |= set(r.fitted)
    ident = cal.identifiability or {}
    info = ident.get("params", {})
    block = {}
    for name in PARAM_NAMES:
        spec = cal.space.spec(name)
        value = float(getattr(cal.params, name))
        common = {"prior_CI_95": [spec.lower, spec.upper],
                  "bounds": [spec.bound_lower, spec.bound_upper]}
        if name in fitted and name in info:
            d = info[name]
            entry = {"value": value, "units": spec.units, "CI_95": list(d["CI_95"]),
                     "source": "calibrated", "CI_kind": d["CI_kind"],
                     "at_bound": d["at_bound"], "not_identified": d["not_identified"],
                     "prior_dominated": d["prior_dominated"],
                     "sd_ratio_posterior_prior": d["sd_ratio_posterior_prior"],
                     "outside_prior_CI_95": d["outside_prior_CI_95"], **common,
                     "note": "CI_95 from the local Gauss-Newton approximation at the optimum "
                     "(data rows scaled by max(1, chi2/dof), plus the prior's information); "
                     "`regv1 calibrate --uncertainty` adds the block-bootstrap interval"}
            flags = flag_words(entry)
            if flags:
                entry["flags"] = flags
        elif name in fitted:
            entry = {"value": value, "units": spec.units, "CI_95": [spec.lower, spec.upper],
                     "source": "calibrated", "CI_kind": "prior CI_95 (no local analysis)",
                     "outside_prior_CI_95": not spec.lower <= value <= spec.upper, **common}
        else:
            why = "not calibrated"
            for r in cal.stages:
                if name in r.free and (r.skipped or name in r.held):
                    why = (f"stage {r.name} skipped: {r.skipped}" if r.skipped else
                           f"held in stage {r.name}: no data sensitivity")
            entry = {"value": value, "units": spec.units, "CI_95": [spec.lower, spec.upper],
                     "source": "prior", "prior_file": spec.file, "note": why, **common}
            if name in ("V0", "SOM0") and f"{name} = " in cal.initial_state_note:
                entry.update(source="data (first observed year)",
                             note=cal.initial_state_note)
        if boot is not None and name in boot.intervals and entry["source"] == "calibrated":
            bootstrap_entry(entry, boot, name)
        block[name] = entry
    meta: dict[str, object] = {"site": cal.site, "dtype": cal.dtype,
                               "data": cal.observations.source_file}
    if boot is not None:
        meta["bootstrap"] = bootstrap_settings(boot)
    return {cal.region: block, "_meta": meta}


def fit_table(cal: SiteCalibration, boot=None) -> pd.DataFrame:
    """One row per year and variable: observed, simulated, split; with a bootstrap the
    2.5 / 97.5 % quantiles of the simulated series over the used replicates
    (``boot_lo_2.5``, ``boot_hi_97.5``)."""
    rows = []
    obs, sim = cal.observations, cal.sim
    years = np.asarray(sim.years)
    hold = cal.holdout_years
    band = boot.band() if boot is not None else None
    for k, var in enumerate(TARGET_VARIABLES):
        s = np.asarray(simulated(sim, var))
        for i, y in enumerate(years):
            j = np.flatnonzero(obs.years == y)
            o = obs.values[var][j[0]] if j.size and obs.masks[var][j[0]] else np.nan
            split = "holdout" if hold and hold[0] <= y <= hold[1] else "training"
            row = {"year": int(y), "variable": var, "observed": o, "simulated": s[i],
                   "split": split}
            if band is not None:
                row.update({"boot_lo_2.5": band[0][k, i], "boot_hi_97.5": band[1][k, i]})
            rows.append(row)
    df = pd.DataFrame(rows)
    observed_vars = df.groupby("variable")["observed"].apply(lambda c: c.notna().any())
    keep = [v for v in TARGET_VARIABLES if observed_vars.get(v, False)] + ["runoff_mm"]
    return df[df["variable"].isin(keep)].reset_index(drop=True)


def screen_markdown(s: dict | None) -> list[str]:
    """The report section of the global start search and the basin stage (``fit._screen``;
    none when the search was off)."""
    if s is None:
        return []
    lines = ["## Global start search", ""]
    if s.get("n_draws"):
        lines += [f"{s['n_draws']} prior draws of {', '.join(s['names'])} ({s['sampling']}; "
                  f"seed {s['seed']}) scored with the fit's objective (data and prior "
                  f"penalty) in one batched solve ({fmt(s['seconds'])} s): "
                  f"{s['n_finite']} solved; loss best {fmt(s['best_loss'])}, median "
                  f"{fmt(s['median_loss'])}, at the prior centre {fmt(s['incoming_loss'])}. "
                  f"The basin stage started from the prior centre and the "
                  f"{s['n_starts_from_screen']} best distinct draws; the winning start was "
                  f"{s['winning_start_is']}.", ""]
    else:
        lines += [f"No prior draws (screen 0): the basin stage started from the incoming "
                  f"vector; the winning start was {s['winning_start_is']}.", ""]
    added = s.get("added_by_sensitivity") or []
    lines += [f"Basin stage free set: {', '.join(s['free'])}"
              + (f" ({', '.join(added)} added by their data sensitivity)" if added else "")
              + f". Sensitivity: the {s['sensitivity_definition']}.", ""]
    rows = [[n, v] for n, v in s["sensitivity"].items()]
    lines += [md_table(["parameter", "sensitivity"], rows), ""]
    return lines


def report_markdown(cal: SiteCalibration, files: dict, boot=None,
                    sections: Sequence[str] = ()) -> str:
    src = Path(cal.observations.source_file).name
    lines = [f"# Calibration report: {cal.site} ({cal.region})", ""]
    if src in SCAFFOLD_FILES:
        lines += ["> **These data are the seed's scaffold rows, not field data.** They are "
                  "format examples (the Yanhe runoff of 90 to 58 mm is about three times the "
                  "gauged 20-30 mm/yr of the Yan River at Ganguyi, 5,891 km2, 1995-2010). "
                  "This fit demonstrates the workflow; it is **not a validation**.", ""]
    if "synthetic" in src:
        lines += ["> **Synthetic twin-experiment data** generated by "
                  "`scripts/make_synthetic.py` from stated true parameters plus stated noise; "
                  "not field data.", ""]
    lines += [
        f"- data: `{cal.observations.source_file}` ({cal.observations.years.size} years with "
        f"rows); simulated {cal.forcing.start}-{cal.forcing.end}",
        f"- training years {cal.train_years[0]}-{cal.train_years[1]}; holdout "
        f"{cal.holdout_years or 'none with data'} ({cal.holdout_rule or 'config'}); "
        "measurement spreads from the training cells only",
        f"- initial state: {cal.initial_state_note or 'prior'}",
        f"- solver `{cal.config.method}` in {cal.dtype}; seed {cal.config.seed}",
        f"- optimiser: {optimizer_text(cal)}",
        "",
    ]
    lines += [f"> **The calibration failed.** {s}" for s in cal.failures]
    lines += [""] if cal.failures else []
    lines += [
        f"![fit]({files['fit_png']})",
        "",
        "## Stages",
        "",
    ]
    rows = []
    for r in cal.stages:
        if r.skipped:
            rows.append([r.name, ", ".join(r.free), "–", str(r.n_obs), r.status, "–", "–",
                         "–", r.skipped])
        else:
            note = "; ".join(x for x in (r.note, ("dropped starts " + str(
                list(r.dropped_starts))) if r.dropped_starts else "") if x)
            rows.append([r.name, ", ".join(r.fitted) or "–", str(r.n_obs), r.status,
                         str(r.iterations), f"{r.initial_loss:.4g} → {r.final_loss:.4g}",
                         "yes" if r.converged else "no",
                         f"{r.best_start}/{r.n_starts}", note])
    lines += [md_table(["stage", "fitted", "obs", "status", "iterations", "loss", "converged",
                      "best start", "note"], rows), "",
              "Status: " + "; ".join(f"`{k}` {v}" for k, v in STAGE_STATUS.items()) + ".", ""]
    lines += screen_markdown(cal.screen)
    lines += ["## Parameters", ""]
    pj = params_json(cal, boot)[cal.region]
    rows = []
    for name in PARAM_NAMES:
        e = pj[name]
        if e["source"] != "calibrated" and name not in SEED_PARAM_NAMES:
            continue
        prior = float(getattr(cal.prior, name))
        rows.append([name, e["units"], fmt(prior),
                     f"[{fmt(e['prior_CI_95'][0])}, {fmt(e['prior_CI_95'][1])}]",
                     fmt(e["value"]),
                     f"[{fmt(e['CI_95'][0])}, {fmt(e['CI_95'][1])}]"
                     + (" (one-sided)" if e.get("at_bound") else ""),
                     "calibrated" if e["source"] == "calibrated" else "prior",
                     flag_words(e) or "–"])
    lines += [md_table(["parameter", "units", "prior", "prior CI_95", "value", "CI_95",
                      "source", "flags"], rows),
              "", f"All {len(PARAM_NAMES)} parameters are in `params.json` (seed schema). "
              "Bounds are physical (`bounds` and `bounds_reason` in the priors files); the "
              "prior is a soft penalty (weight "
              f"{cal.config.prior_weight:g}). Flags: *at bound* (the interval is one-sided "
              "from the bound), *not identified by the data* (a direction of the data-only "
              "Fisher matrix with negligible information; its variance is the prior's), "
              "*prior-dominated* (posterior sd > 0.8 prior sd).", ""]
    outside = [n for n in PARAM_NAMES if pj[n]["source"] == "calibrated"
               and pj[n].get("outside_prior_CI_95")]
    lines += ["Calibrated parameters outside their prior CI_95: "
              + (", ".join(f"{n} = {fmt(pj[n]['value'])} (prior CI_95 "
                            f"[{fmt(pj[n]['prior_CI_95'][0])}, "
                            f"{fmt(pj[n]['prior_CI_95'][1])}])" for n in outside)
                 if outside else "none") + ".", ""]
    lines += ["## Goodness of fit", ""]
    rows = []
    for var, row in cal.metrics.items():
        for split in ("training", "holdout"):
            m = row[split]
            if m["n"]:
                rows.append([var, split, m["n"], m["R2_1to1"], m["R2"], m["RMSE"], m["rRMSE"],
                             m["NSE"]])
    lines += [md_table(["variable", "split", "n", "R2 (1:1)", "r² (corr.)", "RMSE",
                      "rel. RMSE", "NSE"], rows), ""]
    lines += ["Metrics, per variable and split (RMSE in the variable's units: "
              + "; ".join(f"{v} {VARIABLE_LABELS[v][VARIABLE_LABELS[v].rfind('('):]}"
                          for v in cal.metrics if v in VARIABLE_LABELS) + "):", ""]
    lines += [f"- **{k}**: {d}" for k, d in METRIC_DEFINITIONS] + [""]
    lines += ["Seed criteria: R2 >= 0.7 on V and SOM, judged on the 1:1-line R2 (not the "
              "squared correlation, which a biased or scaled simulation can max out); "
              "RMSE <= 20% on holdout.", ""]
    rows = [[k, v.get("value"), v.get("pass") if v.get("pass") is not None else "n/a"]
            for k, v in cal.criteria.items()]
    lines += [md_table(["criterion", "value", "result"], rows), ""]
    lines += ["## Regional magnitudes (seed targets)", ""]
    mg = cal.magnitudes
    if "runoff_decrease" in mg:
        a = mg["areas_km2"]
        rd, wy, soc = mg["runoff_decrease"], mg["water_yield_decrease"], mg["soc_sequestration"]
        st, hy = mg["soc_timing"], mg["hydrology_stabilisation"]
        rows = [
            ["runoff decrease between stages", f"{fmt(rd['mm_per_yr'])} mm/yr × "
             f"{fmt(a['regional'])} km2 = {fmt(rd['m3_per_yr'])} m3/yr", "~3.9e8 m3/yr"],
            ["vegetation-induced water-yield decrease", f"{fmt(wy['mm_per_yr'])} mm/yr",
             "1.0-1.6 mm/yr"],
            ["GTGP SOC sequestration", f"{fmt(soc['tC_per_ha_per_yr'])} t C/ha/yr × "
             f"{fmt(a.get('gtgp'))} km2 = {fmt(soc['TgC_per_yr'])} Tg C/yr", "~0.712 Tg C/yr"],
            ["SOC fast phase", f"half of the 100-yr gain after {fmt(st['years_to_half_gain'])}"
             f" yr; {fmt(100 * st['gain_first_20yr_share'])}% in the first 20 yr",
             "fast for 10-23 yr, then levelling"],
            ["hydrological stabilisation", f"3 e-folding times = "
             f"{fmt(hy['three_efold_years'])} yr", "~3 yr"],
        ]
        lines += [md_table(["quantity", "model", "seed target"], rows), "",
                  "Areas are stated assumptions (docs/methods.md): the regional area converts "
                  "depths to volumes; the GTGP area converts the per-area SOC gain.", ""]
    else:
        lines += [mg.get("note", "not computed"), ""]
    ident = cal.identifiability
    if ident:
        lines += ["## Local identifiability", "",
                  f"Gauss-Newton information of the **data rows only** (jacfwd through the "
                  f"solve, on each parameter's transform scale) over "
                  f"{len(ident['names'])} parameters: rank {ident['rank']} of "
                  f"{ident['n_params']}; condition number on the identified subspace "
                  f"{fmt(ident['condition_number'])}; chi²/dof "
                  f"{fmt(ident['chi2_dof'])} ({fmt(ident['chi2'])} over "
                  f"{ident['dof']} degrees of freedom, {ident['n_data_rows']} data rows); "
                  f"residual-variance scaling of the data information "
                  f"{fmt(ident['residual_variance_scale'])} (max(1, chi²/dof)).", "",
                  f"![correlation]({files['corr_png']})", ""]
        rows = [[p["pair"][0] + " – " + p["pair"][1], p["corr"],
                 f"strong trade-off (above {CORR_FLAG:g} in size)" if p["flag"]
                 else f"ok (at most {CORR_FLAG:g} in size)"] for p in ident["pairs"]]
        n_flag = sum(p["flag"] for p in ident["pairs"])
        lines += [f"Pairs with |r| > {CORR_FLAG:g} ({n_flag}, outlined in the figure: the data "
                  "cannot tell these parameters apart), then the seed's named pairs; the "
                  "values are the figure's.", ""]
        if rows:
            lines += [md_table(["pair", "correlation r", "flag"], rows), ""]
        rows = [[n, v, "yes" if ident["params"][n]["not_identified"] else "no",
                 ident["params"][n]["sd_ratio_posterior_prior"]]
                for n, v in zip(ident["names"], ident["VIF"])]
        lines += [md_table(["parameter", "VIF (data rows)", "not identified by the data",
                          "posterior sd / prior sd"], rows), "",
                  "VIF > 10 marks a parameter whose sensitivity is nearly a combination of "
                  "others' (poorly identifiable from these data).", ""]
    if boot is not None:
        lines += bootstrap_markdown(cal, boot, "bootstrap_bands.png")
    for sec in sections:
        lines += [sec, ""]
    lines += ["## Stage log", ""] + [f"- {describe(r)}" for r in cal.stages] + [""]
    lines += [f"_regv1_jax, Python {platform.python_version()}, {platform.machine()}_", ""]
    return "\n".join(lines)


def write_outputs(cal: SiteCalibration, out: str | Path, bootstrap=None,
                  sections: Sequence[str] = ()) -> dict:
    """Write every output into ``out``; returns {kind: path}.  With ``bootstrap`` (a
    :class:`BootstrapResult`) also the ``regv1 bootstrap`` files, bootstrap CI_95 in
    params.json, bands in fit.csv and fit.png, and a report section; ``sections``: further
    report sections (markdown: the profile and identifiability of ``--uncertainty``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"params": out / "params.json", "fit": out / "fit.csv",
             "metrics": out / "metrics.json", "fit_png": "fit.png",
             "corr_png": "correlation.png", "md": out / "report.md",
             "html": out / "report.html"}
    boot = bootstrap
    if boot is not None:
        for f in write_bootstrap(cal, boot, out):
            files["boot:" + f] = out / f
    (out / "params.json").write_text(json.dumps(json_safe(params_json(cal, boot)), indent=2))
    fit_table(cal, boot).to_csv(out / "fit.csv", index=False, float_format="%.6g")
    metrics = {
        "site": cal.site, "region": cal.region, "dtype": cal.dtype,
        "method": cal.config.method, "optimizer": cal.config.optimizer,
        "optimizer_description": optimizer_text(cal),
        "metric_definitions": dict(METRIC_DEFINITIONS),
        "train_years": cal.train_years, "holdout_years": cal.holdout_years,
        "metrics": cal.metrics, "criteria": cal.criteria, "seed_criteria": SEED_CRITERIA,
        "stages": [r.as_dict() for r in cal.stages],
        "identifiability": cal.identifiability, "magnitudes": cal.magnitudes,
        "holdout_rule": cal.holdout_rule,
        "failures": list(cal.failures), "screen": cal.screen,
        "parameter_flags": {n: {k: e.get(k) for k in ("at_bound", "not_identified",
                                                      "prior_dominated", "outside_prior_CI_95",
                                                      "source", "CI_95")}
                            for n, e in params_json(cal, boot)[cal.region].items()
                            if e["source"] == "calibrated"},
    }
    if boot is not None:
        metrics["bootstrap"] = bootstrap_summary(cal, boot)
    (out / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    plot_fit(cal, out / "fit.png", boot)
    if cal.identifiability:
        plot_correlation(cal, out / "correlation.png")
    md = report_markdown(cal, files, boot, sections)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out, title=f"regv1 calibration: {cal.site}"))
    return {k: (out / v if isinstance(v, str) else v) for k, v in files.items()}


