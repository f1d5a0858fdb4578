"""Writers of the cross-site science (``regv1 scaling``, ``regv1 scenario``): tables, JSON,
figures with units and a self-contained report (numbers in, files out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ._format import fmt, json_safe, md_table
from ._html import report_html

__all__ = ["write_scaling", "write_scenario", "plot_laws", "plot_regions", "plot_scenarios",
           "regions_markdown"]

LAW_PANELS = (("V_crit", "V_crit (cover fraction)"), ("P_veg", "rainfall limit P_veg (mm/yr)"),
              ("theta_star", "theta* (m³/m³)"), ("SOM_star", "SOM* (%)"),
              ("eta1", "eta1 (mm per % SOM)"), ("bistable_width", "bistable width (mm/yr)"))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_laws(rows: list[dict], laws: dict, path: Path, truth=None) -> None:
    """Each threshold against MAP (points with their 95% intervals, one colour per region)
    and the fitted law; ``truth``: an optional ``MAP -> eta1`` of a synthetic gradient."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    df = pd.DataFrame(rows)
    grid = np.linspace(df["MAP_mm"].min() * 0.95, df["MAP_mm"].max() * 1.05, 200)
    for ax, (name, label) in zip(axes.ravel(), LAW_PANELS):
        for region, g in df.groupby("region"):
            y = g[name].to_numpy(float)
            lo, hi = g[f"{name}_lo"].to_numpy(float), g[f"{name}_hi"].to_numpy(float)
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0),
                             np.where(np.isfinite(hi), hi - y, 0)])
            ax.errorbar(g["MAP_mm"], y, yerr=np.clip(err, 0, None), fmt="o", capsize=3,
                        label=region)
        law = laws.get(name)
        if law is not None:
            c = {k: v["estimate"] for k, v in law["coefficients"].items()}
            if "alpha0" in c:
                ax.plot(grid, c["alpha0"] + c["alpha1_at_500mm"] * (grid / 500) ** -c["beta"],
                        "k-", label="fitted law")
            elif "slope_MAP" in c:
                ax.plot(grid, c["intercept"] + c["slope_MAP"] * grid, "k-",
                        label="fitted law")
            elif "slope_ln_MAP" in c:
                ax.plot(grid, c["intercept"] + c["slope_ln_MAP"] * np.log(grid), "k-",
                        label="fitted law")
        if name == "eta1" and truth is not None:
            ax.plot(grid, truth(grid), "r--", label="stated (synthetic truth)")
        ax.set_xlabel("MAP (mm/yr)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend(fontsize=8)
    axes.ravel()[4].legend(fontsize=8)
    fig.suptitle("thresholds across sites (95% bootstrap intervals) and the fitted laws")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_regions(rows: list[dict], path: Path) -> None:
    """The regions side by side: bistable range, V_crit and V_eq, recovery after a
    drought, the water cost of cover, the SOM gain."""
    plt = _plt()
    fig, axes = plt.subplots(1, 5, figsize=(16, 3.6))
    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    ax = axes[0]
    for i, r in enumerate(rows):
        hi = r["P_bare_unstable"] if np.isfinite(r["P_bare_unstable"]) else 1500.0
        ax.plot([i, i], [r["P_veg"], hi], lw=10, solid_capstyle="butt")
        ax.plot(i, r["MAP_mm"], "k*", ms=10)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("MAP (mm/yr): bistable range, * = site MAP")
    panels = ((axes[1], ("V_crit", "V_eq"), "cover fraction: V_crit, V_eq"),
              (axes[2], ("recovery_years",), "years to 90% cover after a 3-yr drought"),
              (axes[3], ("water_cost_mm_per_pct",), "water yield per % cover (mm/yr)"),
              (axes[4], ("som_gain_20yr",), "SOM gain in 20 yr of planting (%)"))
    for ax, keys, ylabel in panels:
        w = 0.8 / len(keys)
        for j, k in enumerate(keys):
            vals = [r[k] for r in rows]
            ax.bar(x + (j - (len(keys) - 1) / 2) * w, np.nan_to_num(vals), w, label=k)
            for i, v in enumerate(vals):
                if not np.isfinite(v):
                    ax.text(x[i], 0, "none", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        if len(keys) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def regions_markdown(rows: list[dict], units: dict) -> list[str]:
    keys = [k for k in units]
    table = [[k, units[k]] + [fmt(r[k]) for r in rows] for k in keys]
    return [md_table(["quantity", "units"] + [r["label"] for r in rows], table), "",
            "Sources: " + "; ".join(f"{r['label']}: {r['source']}" for r in rows) + ".", ""]


def write_scaling(out: Path, rows: list[dict], laws: dict, regions: list[dict],
                  region_units: dict, threshold_units: dict, sites: list[dict],
                  note: str = "", truth=None) -> dict:
    """thresholds.csv, laws.json, regions.csv, sites.json, scaling.png, regions.png,
    report.md, report.html in ``out``; returns ``{kind: path}``."""
    out = Path(out)
    pd.DataFrame(rows).to_csv(out / "thresholds.csv", index=False, float_format="%.6g")
    (out / "laws.json").write_text(json.dumps(json_safe(laws), indent=2))
    pd.DataFrame(regions).to_csv(out / "regions.csv", index=False, float_format="%.6g")
    (out / "sites.json").write_text(json.dumps(json_safe(sites), indent=2))
    plot_laws(rows, laws, out / "scaling.png", truth)
    plot_regions(regions, out / "regions.png")
    md = ["# Scaling laws across sites", ""]
    if note:
        md += [note, ""]
    md += ["## Sites", "", md_table(["site", "region", "MAP (mm/yr)", "kept", "cover R2 (1:1)",
                                     "failures"],
                                    [[s["site"], s["region"], fmt(s["MAP_mm"]), s["kept"],
                                      fmt(s["R2_cover"]), "; ".join(s["failures"]) or "none"]
                                     for s in sites]), ""]
    md += ["## Thresholds (95% bootstrap percentile intervals)", "",
           "Units: " + "; ".join(f"{k} {u}" for k, u in threshold_units.items()) + ".", ""]
    head = ["site", "MAP"] + list(threshold_units)
    md += [md_table(head, [[r["site"], fmt(r["MAP_mm"])] + [
        f"{fmt(r[k])} [{fmt(r[k + '_lo'])}, {fmt(r[k + '_hi'])}]" for k in threshold_units]
        for r in rows]), "", "![thresholds against MAP](scaling.png)", ""]
    md += ["## Fitted laws", ""]
    lrows = []
    for name, law in laws.items():
        for c, v in law["coefficients"].items():
            lrows.append([name, law["form"], c, fmt(v["estimate"]), fmt(v["se"]),
                          f"[{fmt(v['CI_95'][0])}, {fmt(v['CI_95'][1])}]"])
    md += [md_table(["law", "form", "coefficient", "estimate", "se", "95% CI"], lrows), ""]
    for name, law in laws.items():
        if "sign_p_value" in law:
            md.append(f"- {name}: the seed expects a {law['expected_sign_of_MAP_slope']} MAP "
                      f"slope; one-sided p = {fmt(law['sign_p_value'])} "
                      f"({'supported' if law['sign_supported_at_5pct'] else 'not supported'} "
                      "at 5 %).")
    md += ["", "## Loess Plateau against the Chihuahuan comparator", ""]
    md += regions_markdown(regions, region_units) + ["![regions](regions.png)", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(report_html("\n".join(md), out, "regv1 scaling"))
    return {k: out / k for k in ("thresholds.csv", "laws.json", "regions.csv", "sites.json",
                                 "scaling.png", "regions.png", "report.md", "report.html")}


SCENARIO_QUANTITIES = (("runoff_change_m3_per_yr", "runoff change (m³/yr)"),
                       ("water_yield_change_mm_per_yr", "water-yield change (mm/yr)"),
                       ("soc_sequestration_TgC_per_yr", "SOC sequestration (Tg C/yr)"),
                       ("sediment_change_percent", "sediment change (%)"))


def plot_scenarios(res, path: Path) -> None:
    plt = _plt()
    df = pd.DataFrame(res.rows)
    fig, axes = plt.subplots(1, len(SCENARIO_QUANTITIES), figsize=(16, 3.8))
    for ax, (q, label) in zip(axes, SCENARIO_QUANTITIES):
        g = df[df["quantity"] == q]
        y = np.arange(len(g))
        est = g["estimate"].to_numpy(float)
        lo, hi = g["lo"].to_numpy(float), g["hi"].to_numpy(float)
        err = np.vstack([np.nan_to_num(est - lo), np.nan_to_num(hi - est)])
        ax.barh(y, est, xerr=np.clip(err, 0, None), capsize=3)
        ax.set_yticks(y, g["scenario"], fontsize=8)
        ax.set_xlabel(label, fontsize=8)
        ax.axvline(0, color="k", lw=0.5)
    fig.suptitle(f"{res.site}: scenarios against no planting over {res.area_km2:,.0f} km² "
                 f"(95% bootstrap intervals, B = {res.replicates_used})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_scenario(out: Path, res, descriptions: dict, published: dict) -> dict:
    """scenarios.csv, scenarios.json, scenarios.png, report.md, report.html in ``out``."""
    out = Path(out)
    pd.DataFrame(res.rows).to_csv(out / "scenarios.csv", index=False, float_format="%.6g")
    (out / "scenarios.json").write_text(json.dumps(json_safe(res.as_dict()), indent=2))
    plot_scenarios(res, out / "scenarios.png")
    df = pd.DataFrame(res.rows)
    md = [f"# Regional scenarios: {res.site}", "",
          f"Area {res.area_km2:,.0f} km² ({res.area_source}); years {res.years[0]}-"
          f"{res.years[1]}; planting from {res.planting_start}; changes against no planting "
          f"over the years from the planting start; 95% intervals from {res.replicates_used} "
          f"used bootstrap replicates (of B = {res.B}).", ""]
    md += ["| scenario | meaning |", "|---|---|"] + [f"| {k} | {v} |"
                                                      for k, v in descriptions.items()] + [""]
    quantities = list(dict.fromkeys(df["quantity"]))
    rows = []
    for q in quantities:
        g = df[df["quantity"] == q].set_index("scenario")
        rows.append([q] + [f"{fmt(g.loc[s, 'estimate'])} [{fmt(g.loc[s, 'lo'])}, "
                           f"{fmt(g.loc[s, 'hi'])}]" for s in descriptions])
    md += [md_table(["quantity"] + list(descriptions), rows), "",
           "![scenarios](scenarios.png)", "", "## Beside the published figures", ""]
    g = df.set_index(["scenario", "quantity"])["estimate"]
    gfg = "grain_for_green"
    md += [md_table(["quantity", "this model (Grain for Green)", "published", "source"], [
        ["SOC sequestration", f"{fmt(g[(gfg, 'soc_sequestration_tC_per_ha_per_yr')])} t C/ha/yr "
         f"= {fmt(g[(gfg, 'soc_sequestration_TgC_per_yr')])} Tg C/yr over the area",
         published["soc_sequestration"]["value"], published["soc_sequestration"]["source"]],
        ["sediment change", f"{fmt(g[(gfg, 'sediment_change_percent')])} % (with engineering: "
         f"{fmt(g[('planting_engineering', 'sediment_change_percent')])} %)",
         published["sediment_change"]["value"], published["sediment_change"]["source"]],
        ["cover", f"{fmt(g[('no_planting', 'cover_end_percent')])} % without planting, "
         f"{fmt(g[(gfg, 'cover_end_percent')])} % with it (last year)",
         published["cover"]["value"], published["cover"]["source"]],
        ["seed targets", f"runoff {fmt(g[(gfg, 'runoff_change_m3_per_yr')])} m³/yr, water "
         f"yield {fmt(g[(gfg, 'water_yield_change_mm_per_yr')])} mm/yr",
         published["seed_targets"]["value"], published["seed_targets"]["source"]]]), ""]
    md += [f"Cost at the World Bank project's rate (US$518M over ~35,000 km²: "
           f"~US${res.cost_usd / (res.area_km2 * 100):.0f}/ha): US${res.cost_usd:,.0f} to treat "
           f"the {res.area_km2:,.0f} km².", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "report.html").write_text(report_html("\n".join(md), out, "regv1 scenario"))
    return {k: out / k for k in ("scenarios.csv", "scenarios.json", "scenarios.png",
                                 "report.md", "report.html")}
