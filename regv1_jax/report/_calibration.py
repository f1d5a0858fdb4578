"""Calibration outputs: params.json (the seed's schema), fit.csv, metrics.json, figures,
report.md and report.html.  Numbers in, files out; no JAX transforms here."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..fit._config import STAGE_STATUS, describe
from ..fit._objective import TARGET_VARIABLES, simulated
from ..fit._site import CORR_FLAG, SEED_CRITERIA, SiteCalibration
from ..model._params import PARAM_NAMES, SEED_PARAM_NAMES

__all__ = ["write_outputs", "report_html", "optimizer_text", "METRIC_DEFINITIONS",
           "VARIABLE_LABELS"]

SCAFFOLD_FILES = {"loess_plateau_1995_2010.csv", "johnson_soil_carbon.csv"}

# Axis label (quantity and unit) of each fitted variable: figures and tables use these.
VARIABLE_LABELS = {
    "veg_cover_%": "vegetation cover (%)",
    "SOM_%": "SOM, 0-20 cm (% of soil mass)",
    "SOM_0-10_%": "SOM, 0-10 cm (% of soil mass)",
    "SOM_10-20_%": "SOM, 10-20 cm (% of soil mass)",
    "SOM_20-40_%": "SOM, 20-40 cm (% of soil mass)",
    "runoff_mm": "runoff (mm/yr)",
    "erosion_t/ha": "sediment yield (t/ha/yr)",
    "theta_m3/m3": "soil moisture (m³/m³)",
}

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


def _num(x):
    if x is None:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    if isinstance(x, dict):
        return {k: _num(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_num(v) for v in x]
    return x


def flag_words(entry: dict) -> str:
    """The flags of a params.json entry, in words (empty when none)."""
    out = []
    if entry.get("at_bound"):
        out.append(f"at {entry['at_bound']} bound")
    if entry.get("not_identified"):
        out.append("not identified by the data")
    if entry.get("prior_dominated"):
        out.append("prior-dominated")
    if entry.get("outside_prior_CI_95"):
        out.append("outside prior CI_95")
    return ", ".join(out)


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
            for st, r in zip(cal.config.stages, cal.stages):
                if name in st.free and (r.skipped or name in r.held):
                    why = (f"stage {r.name} skipped: {r.skipped}" if r.skipped else
                           f"held in stage {r.name}: no data sensitivity")
            entry = {"value": value, "units": spec.units, "CI_95": [spec.lower, spec.upper],
                     "source": "prior", "prior_file": spec.file, "note": why, **common}
            if name in ("V0", "SOM0") and f"{name} = " in cal.initial_state_note:
                entry.update(source="data (first observed year)",
                             note=cal.initial_state_note)
        if boot is not None and name in boot.intervals and entry["source"] == "calibrated":
            _bootstrap_entry(entry, boot, name)
        block[name] = entry
    meta = {"site": cal.site, "dtype": cal.dtype, "data": cal.observations.source_file}
    if boot is not None:
        meta["bootstrap"] = bootstrap_settings(boot)
    return {cal.region: block, "_meta": meta}


def _bootstrap_entry(entry: dict, boot, name: str) -> None:
    iv = boot.intervals[name]
    bca, pct = iv["BCa"], iv["percentile"]
    use_bca = all(math.isfinite(x) for x in bca)
    local = entry["CI_95"]
    entry.update(
        CI_95=list(bca if use_bca else pct), CI_95_local=local,
        CI_kind_local=entry.pop("CI_kind", None),
        CI_method=(f"block bootstrap ({boot.scheme} blocks of {boot.block_length} years, "
                   f"{iv['n_used']} of {boot.B} replicates used), "
                   + ("BCa" if use_bca else "percentile (BCa undefined)")),
        CI_95_bootstrap_BCa=bca, CI_95_bootstrap_percentile=pct,
        note="CI_95: block bootstrap (staged refits on resampled years); CI_95_local: the "
        "local Gauss-Newton interval at the optimum")


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


def _fit_figure(cal: SiteCalibration, path: Path, boot=None):
    """Observed vs calibrated per variable (prior dashed, holdout shaded); with a bootstrap
    the 95% band of the simulated series over the used replicates."""
    from ._figures import _figure

    obs, sim = cal.observations, cal.sim
    years = np.asarray(sim.years)
    vars_ = [v for v in TARGET_VARIABLES if obs.masks[v].any()] or ["veg_cover_%"]
    panels = vars_ + [v for v in ("veg_cover_%", "SOM_%", "runoff_mm", "erosion_t/ha")
                      if v not in vars_]
    panels = panels[:9]
    plt, fig, axes = _figure(len(panels))
    hold = cal.holdout_years
    prior_sim = cal.prior_sim
    band = boot.band() if boot is not None else None
    for ax, var in zip(axes, panels):
        if band is not None:
            k = TARGET_VARIABLES.index(var) if var in TARGET_VARIABLES else None
            if k is not None:
                ax.fill_between(years, band[0][k], band[1][k], color="C0", alpha=0.25,
                                lw=0, label="bootstrap 95%")
        ax.plot(years, np.asarray(simulated(sim, var)), color="C0", lw=2, label="calibrated")
        if prior_sim is not None:
            ax.plot(years, np.asarray(simulated(prior_sim, var)), color="C0", lw=1, ls="--",
                    alpha=0.6, label="prior")
        m = obs.masks[var]
        if m.any():
            ax.plot(obs.years[m], obs.values[var][m], "o", color="k", ms=4, label="observed")
        if hold:
            ax.axvspan(hold[0] - 0.5, hold[1] + 0.5, color="0.9", zorder=0, label="holdout")
        ax.set_ylabel(VARIABLE_LABELS.get(var, var), fontsize=9)
        ax.set_xlabel("year", fontsize=9)
        ax.tick_params(labelbottom=True, labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    what = "" if boot is None else (f"; block bootstrap 95% band, {int(boot.used.sum())} of "
                                    f"{boot.B} refits")
    fig.suptitle(f"{cal.site}: observed vs calibrated (holdout shaded{what})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _corr_figure(cal: SiteCalibration, path: Path):
    """The correlation matrix; the cells of the flagged pairs (the report's pair table) are
    outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    ident = cal.identifiability
    names = ident["names"]
    C = np.asarray(ident["corr"])
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * len(names), 1.2 + 0.45 * len(names)))
    im = ax.imshow(C, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("parameter", fontsize=8)
    ax.set_ylabel("parameter", fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{C[i, j]:.2f}" if np.isfinite(C[i, j]) else "n.i.",
                    ha="center", va="center", fontsize=6)
    for p in ident["pairs"]:
        if p["flag"]:
            i, j = names.index(p["pair"][0]), names.index(p["pair"][1])
            for a, b in ((i, j), (j, i)):
                ax.add_patch(Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, lw=1.8,
                                       edgecolor="k"))
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("correlation coefficient r (dimensionless)", fontsize=8)
    ax.set_title(f"local parameter correlation (Gauss-Newton); |r| > {CORR_FLAG:g} outlined",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x, nd=3):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "pass" if x else "FAIL"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "–" if not math.isfinite(float(x)) else f"{float(x):.{nd}g}"
    return str(x)


def _table(header, rows) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in r) + " |"
            for r in rows]
    return "\n".join(out)


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
    lines += [_table(["stage", "fitted", "obs", "status", "iterations", "loss", "converged",
                      "best start", "note"], rows), "",
              "Status: " + "; ".join(f"`{k}` {v}" for k, v in STAGE_STATUS.items()) + ".", ""]
    lines += ["## Parameters", ""]
    pj = params_json(cal, boot)[cal.region]
    rows = []
    for name in PARAM_NAMES:
        e = pj[name]
        if e["source"] != "calibrated" and name not in SEED_PARAM_NAMES:
            continue
        prior = float(getattr(cal.prior, name))
        rows.append([name, e["units"], _fmt(prior),
                     f"[{_fmt(e['prior_CI_95'][0])}, {_fmt(e['prior_CI_95'][1])}]",
                     _fmt(e["value"]),
                     f"[{_fmt(e['CI_95'][0])}, {_fmt(e['CI_95'][1])}]"
                     + (" (one-sided)" if e.get("at_bound") else ""),
                     "calibrated" if e["source"] == "calibrated" else "prior",
                     flag_words(e) or "–"])
    lines += [_table(["parameter", "units", "prior", "prior CI_95", "value", "CI_95",
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
              + (", ".join(f"{n} = {_fmt(pj[n]['value'])} (prior CI_95 "
                            f"[{_fmt(pj[n]['prior_CI_95'][0])}, "
                            f"{_fmt(pj[n]['prior_CI_95'][1])}])" for n in outside)
                 if outside else "none") + ".", ""]
    lines += ["## Goodness of fit", ""]
    rows = []
    for var, row in cal.metrics.items():
        for split in ("training", "holdout"):
            m = row[split]
            if m["n"]:
                rows.append([var, split, m["n"], m["R2_1to1"], m["R2"], m["RMSE"], m["rRMSE"],
                             m["NSE"]])
    lines += [_table(["variable", "split", "n", "R2 (1:1)", "r² (corr.)", "RMSE",
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
    lines += [_table(["criterion", "value", "result"], rows), ""]
    lines += ["## Regional magnitudes (seed targets)", ""]
    mg = cal.magnitudes
    if "runoff_decrease" in mg:
        a = mg["areas_km2"]
        rd, wy, soc = mg["runoff_decrease"], mg["water_yield_decrease"], mg["soc_sequestration"]
        st, hy = mg["soc_timing"], mg["hydrology_stabilisation"]
        rows = [
            ["runoff decrease between stages", f"{_fmt(rd['mm_per_yr'])} mm/yr × "
             f"{_fmt(a['regional'])} km2 = {_fmt(rd['m3_per_yr'])} m3/yr", "~3.9e8 m3/yr"],
            ["vegetation-induced water-yield decrease", f"{_fmt(wy['mm_per_yr'])} mm/yr",
             "1.0-1.6 mm/yr"],
            ["GTGP SOC sequestration", f"{_fmt(soc['tC_per_ha_per_yr'])} t C/ha/yr × "
             f"{_fmt(a.get('gtgp'))} km2 = {_fmt(soc['TgC_per_yr'])} Tg C/yr", "~0.712 Tg C/yr"],
            ["SOC fast phase", f"half of the 100-yr gain after {_fmt(st['years_to_half_gain'])}"
             f" yr; {_fmt(100 * st['gain_first_20yr_share'])}% in the first 20 yr",
             "fast for 10-23 yr, then levelling"],
            ["hydrological stabilisation", f"3 e-folding times = "
             f"{_fmt(hy['three_efold_years'])} yr", "~3 yr"],
        ]
        lines += [_table(["quantity", "model", "seed target"], rows), "",
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
                  f"{_fmt(ident['condition_number'])}; chi²/dof "
                  f"{_fmt(ident['chi2_dof'])} ({_fmt(ident['chi2'])} over "
                  f"{ident['dof']} degrees of freedom, {ident['n_data_rows']} data rows); "
                  f"residual-variance scaling of the data information "
                  f"{_fmt(ident['residual_variance_scale'])} (max(1, chi²/dof)).", "",
                  f"![correlation]({files['corr_png']})", ""]
        rows = [[p["pair"][0] + " – " + p["pair"][1], p["corr"],
                 f"strong trade-off (above {CORR_FLAG:g} in size)" if p["flag"]
                 else f"ok (at most {CORR_FLAG:g} in size)"] for p in ident["pairs"]]
        n_flag = sum(p["flag"] for p in ident["pairs"])
        lines += [f"Pairs with |r| > {CORR_FLAG:g} ({n_flag}, outlined in the figure: the data "
                  "cannot tell these parameters apart), then the seed's named pairs; the "
                  "values are the figure's.", ""]
        if rows:
            lines += [_table(["pair", "correlation r", "flag"], rows), ""]
        rows = [[n, v, "yes" if ident["params"][n]["not_identified"] else "no",
                 ident["params"][n]["sd_ratio_posterior_prior"]]
                for n, v in zip(ident["names"], ident["VIF"])]
        lines += [_table(["parameter", "VIF (data rows)", "not identified by the data",
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
    (out / "params.json").write_text(json.dumps(_num(params_json(cal, boot)), indent=2))
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
        "parameter_flags": {n: {k: e.get(k) for k in ("at_bound", "not_identified",
                                                      "prior_dominated", "outside_prior_CI_95",
                                                      "source", "CI_95")}
                            for n, e in params_json(cal, boot)[cal.region].items()
                            if e["source"] == "calibrated"},
    }
    if boot is not None:
        metrics["bootstrap"] = bootstrap_summary(cal, boot)
    (out / "metrics.json").write_text(json.dumps(_num(metrics), indent=2))
    _fit_figure(cal, out / "fit.png", boot)
    if cal.identifiability:
        _corr_figure(cal, out / "correlation.png")
    md = report_markdown(cal, files, boot, sections)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(report_html(md, out, title=f"regv1 calibration: {cal.site}"))
    return {k: (out / v if isinstance(v, str) else v) for k, v in files.items()}


# --- block bootstrap (regv1 bootstrap, calibrate --uncertainty) ------------------------------
def _units(cal: SiteCalibration, name: str) -> str:
    from ..analysis._bootstrap import DERIVED

    return DERIVED[name][0] if name in DERIVED else cal.space.spec(name).units


def bootstrap_settings(boot) -> dict:
    """How the bootstrap ran (params.json ``_meta.bootstrap`` and bootstrap.json)."""
    from ..analysis._bootstrap import REPLICATE_STATUS

    return {
        "B": boot.B, "scheme": boot.scheme, "block_length_years": boot.block_length,
        "block_length_rule": boot.block_rule, "seed": boot.seed, "level": 0.95,
        "training_years_resampled": [int(y) for y in boot.train_years],
        "replicates_used": int(boot.used.sum()),
        "replicates_excluded": int(boot.B - boot.used.sum()),
        "status_counts": {str(k): v for k, v in boot.status_counts.items()},
        "status_meaning": {str(k): v for k, v in REPLICATE_STATUS.items()},
        "not_converged_excluded": boot.exclude_not_converged,
        "jackknife_refits": int(boot.jackknife.shape[0]),
        "jackknife_used": int(np.sum(boot.jackknife_status == 0)),
        "point_refit_stage_codes": boot.point_refit_codes,
        "refit": "fit_staged: every stage of the config, one start (the point estimate), "
                 "per-cell weights = the year's count in the resample",
        "intervals": "percentile: 2.5/97.5% quantiles of the used replicates; BCa: Efron "
                     "(1987), z0 from the replicates, acceleration from the delete-one-block "
                     "jackknife",
        "seconds": round(boot.seconds, 3), "chunks_resumed": boot.chunks_resumed,
    }


def bootstrap_summary(cal: SiteCalibration, boot) -> dict:
    """bootstrap.json: settings and, per quantity, the point value and the intervals."""
    from ..analysis._bootstrap import DERIVED

    local = (cal.identifiability or {}).get("CI_95", {})
    out = {"site": cal.site, "region": cal.region, **bootstrap_settings(boot),
           "intervals": {}}
    for n in boot.names + boot.derived:
        iv = boot.intervals[n]
        out["intervals"][n] = {
            "kind": "derived" if n in DERIVED else "parameter", "units": _units(cal, n),
            "point": boot.point[n], "percentile": iv["percentile"], "BCa": iv["BCa"],
            "z0": iv["z0"], "acceleration": iv["acceleration"], "sd": iv["sd"],
            "n_used": iv["n_used"], "point_inside_percentile": iv["point_inside_percentile"],
            "CI_95_local": list(local[n]) if n in local else None,
            "description": DERIVED[n][1] if n in DERIVED else None}
    return _num(out)


def bootstrap_tables(cal: SiteCalibration, boot):
    """bootstrap_params.csv, bootstrap_replicates.csv and bootstrap_bands.csv frames."""
    qs = boot.names + boot.derived
    iv = boot.intervals
    params = pd.DataFrame({
        "quantity": qs, "units": [_units(cal, n) for n in qs],
        "point": [boot.point[n] for n in qs],
        "percentile_lo": [iv[n]["percentile"][0] for n in qs],
        "percentile_hi": [iv[n]["percentile"][1] for n in qs],
        "BCa_lo": [iv[n]["BCa"][0] for n in qs], "BCa_hi": [iv[n]["BCa"][1] for n in qs],
        "sd": [iv[n]["sd"] for n in qs], "z0": [iv[n]["z0"] for n in qs],
        "acceleration": [iv[n]["acceleration"] for n in qs],
        "n_used": [iv[n]["n_used"] for n in qs]})
    reps = pd.DataFrame(boot.replicates, columns=qs)
    for j, st in enumerate(cal.config.stages):
        reps[f"stage_code:{st.name}"] = boot.stage_codes[:, j]
    reps.insert(0, "status", boot.status)
    reps.insert(0, "replicate", np.arange(boot.B))
    lo, hi = boot.band()
    bands = pd.DataFrame([
        {"year": int(y), "variable": v, "simulated_point": boot.point_series[k, i],
         "lo_2.5": lo[k, i], "hi_97.5": hi[k, i]}
        for k, v in enumerate(TARGET_VARIABLES) for i, y in enumerate(boot.years)])
    return params, reps, bands


def write_bootstrap(cal: SiteCalibration, boot, folder: Path) -> list[str]:
    """bootstrap.json, bootstrap_params.csv, bootstrap_replicates.csv, bootstrap_bands.csv
    and bootstrap_bands.png into ``folder``; returns the file names."""
    folder = Path(folder)
    params, reps, bands = bootstrap_tables(cal, boot)
    params.to_csv(folder / "bootstrap_params.csv", index=False, float_format="%.6g")
    reps.to_csv(folder / "bootstrap_replicates.csv", index=False, float_format="%.8g")
    bands.to_csv(folder / "bootstrap_bands.csv", index=False, float_format="%.6g")
    (folder / "bootstrap.json").write_text(json.dumps(bootstrap_summary(cal, boot), indent=2))
    _fit_figure(cal, folder / "bootstrap_bands.png", boot)
    return ["bootstrap.json", "bootstrap_params.csv", "bootstrap_replicates.csv",
            "bootstrap_bands.csv", "bootstrap_bands.png"]


def bootstrap_markdown(cal: SiteCalibration, boot, png: str) -> list[str]:
    """The report's "Bootstrap uncertainty" section."""
    st = bootstrap_settings(boot)
    local = (cal.identifiability or {}).get("CI_95", {})
    rows = []
    for n in boot.names + boot.derived:
        iv = boot.intervals[n]
        loc = local.get(n)
        rows.append([n, _units(cal, n), boot.point[n],
                     f"[{_fmt(iv['BCa'][0])}, {_fmt(iv['BCa'][1])}]",
                     f"[{_fmt(iv['percentile'][0])}, {_fmt(iv['percentile'][1])}]",
                     f"[{_fmt(loc[0])}, {_fmt(loc[1])}]" if loc else "–", iv["sd"]])
    counts = ", ".join(f"{v} × status {k}" for k, v in st["status_counts"].items())
    outside = [n for n in boot.names + boot.derived
               if not boot.intervals[n]["point_inside_percentile"]]
    warn = ([f"**Warning:** the point estimate lies outside the percentile interval of "
             f"{', '.join(outside)}: the replicates sit on one side of it (e.g. refits that "
             "can move only one way from a physical bound); treat these intervals with "
             "care.", ""] if outside else [])
    return [
        "## Bootstrap uncertainty", "",
        f"Block bootstrap over the {len(st['training_years_resampled'])} training years with "
        f"data: B = {boot.B} replicates, {boot.scheme} blocks of {boot.block_length} years "
        f"({boot.block_rule.get('rule', '')}), seed {boot.seed}. Each replicate is a full "
        "staged refit (every stage of the config, warm-started from the point estimate) "
        "with each year's cells weighted by its count in the resample; all refits batched "
        f"(vmap). Replicates used: {st['replicates_used']} of {boot.B} ({counts}; status "
        "0 is used, every other status is excluded from the intervals, never averaged in: "
        + "; ".join(f"{k} {v}" for k, v in st["status_meaning"].items()) + "). BCa "
        f"acceleration from {st['jackknife_refits']} delete-one-block jackknife refits "
        f"({st['jackknife_used']} used).", "",
        _table(["quantity", "units", "point", "BCa 95%", "percentile 95%", "local CI_95",
                "bootstrap sd"], rows), "", *warn,
        "params.json `CI_95` is the bootstrap BCa interval (`CI_95_local` the local one). "
        "Derived quantities use the fit's solver on the replicate's parameters; multiply "
        "runoff decrease by the regional area and SOC sequestration by the GTGP area for "
        "regional totals.", "",
        f"![bootstrap bands]({png})", ""]


REPORT_CSS = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       line-height: 1.4; }
.table-wrap { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 8px; font-size: 13px; text-align: left; }
th { background: #f3f3f3; }
blockquote { background: #fff4e5; border-left: 4px solid #f90; margin: 1em 0;
             padding: 4px 12px; }
img { max-width: 100%; height: auto; }
code { overflow-wrap: anywhere; }
li, p { overflow-wrap: anywhere; }
"""


def _data_uri(path: Path) -> str:
    import base64

    mime = {"png": "image/png", "svg": "image/svg+xml", "jpg": "image/jpeg"}[
        path.suffix.lstrip(".").lower()]
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def report_html(md: str, folder: Path, title: str) -> str:
    """A self-contained HTML page of the Markdown report: every local image embedded as a
    data URI (a missing one is an error, not a broken link), tables in a scrolling box."""
    import html as _html
    import re

    import markdown

    body = markdown.markdown(md, extensions=["tables"])

    def embed(m):
        src = m.group(2)
        if src.startswith(("data:", "http:", "https:")):
            return m.group(0)
        path = Path(folder) / src
        if not path.is_file():
            raise FileNotFoundError(f"report image {src!r} not found in {folder}")
        return m.group(1) + _data_uri(path) + m.group(3)

    body = re.sub(r'(<img[^>]*\ssrc=")([^"]+)(")', embed, body)
    body = body.replace("<table>", '<div class="table-wrap"><table>').replace(
        "</table>", "</table></div>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_html.escape(title)}</title><style>{REPORT_CSS}</style></head><body>"
            + body + "</body></html>\n")
