"""Cross-site science (``regv1_jax.science``): the rainfall limits against the bifurcation
diagram, the laws against numpy and against data made from a known law, the sites table's
errors, and (``slow``) the synthetic MAP gradient's law recovered within its intervals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import regv1_jax as r
from regv1_jax import science as S
from regv1_jax.cli import main
from regv1_jax.io import DataError
from regv1_jax.model import rainfall_limits


def test_rainfall_limits_are_the_bifurcation_folds_and_the_fast_settings_are_close():
    space = r.load_param_space("LoessPlateau")
    p = space.prior_values(jnp.float64)
    rain = jnp.linspace(100.0, 1500.0, 57)
    bif = r.bifurcation(p, rain)
    fine = rainfall_limits(p, rain)
    assert float(fine[0]) == pytest.approx(float(bif.P_veg), abs=1e-9)
    assert float(fine[1]) == pytest.approx(float(bif.P_bare_unstable), abs=1e-9)
    draws = space.sample_prior(jax.random.PRNGKey(5), 16, dtype=jnp.float64)
    f = jax.jit(jax.vmap(lambda q: rainfall_limits(q, rain)))
    ref = [np.asarray(a) for a in f(draws)]
    fast = S.thresholds(draws, jnp.asarray(400.0), jnp.asarray(1.0), batched=True)
    for name, want, tol in (("P_veg", ref[0], 2.5), ("P_bare_unstable", ref[1], 0.5)):
        got = np.asarray(fast[name])
        assert np.array_equal(np.isnan(got), np.isnan(want)), name
        ok = ~np.isnan(want)
        assert ok.sum() >= 12, name  # the comparison is not vacuous
        np.testing.assert_allclose(got[ok], want[ok], atol=tol, err_msg=name)


def test_fit_linear_equals_numpy_wls_and_tests_the_sign():
    rng = np.random.default_rng(0)
    MAP = np.linspace(200, 700, 12)
    sd = rng.uniform(0.01, 0.03, 12)
    y = 0.4 - 4e-4 * MAP + sd * rng.standard_normal(12)
    fit = S.fit_linear("V_crit", MAP, y, sd, expected_sign=-1)
    X = np.stack([np.ones(12), MAP], 1) / sd[:, None]
    beta = np.linalg.lstsq(X, y / sd, rcond=None)[0]
    np.testing.assert_allclose(fit.estimate, beta, rtol=1e-10)
    lo, hi = fit.ci[1]
    assert lo < -4e-4 < hi and hi < 0
    assert fit.sign_p < 0.05 and fit.as_dict()["sign_supported_at_5pct"]
    up = S.fit_linear("V_crit", MAP, -y, sd, expected_sign=-1)
    assert up.sign_p > 0.95 and not up.as_dict()["sign_supported_at_5pct"]
    with pytest.raises(ValueError, match="sites with finite values"):
        S.fit_linear("V_crit", MAP[:2], y[:2], sd[:2])
    cov = S.fit_linear("V_crit", MAP, y, sd, covariates={"slope_deg": rng.uniform(5, 25, 12)})
    assert cov.names[-1] == "coef_slope_deg" and cov.dof == 9


def test_power_law_is_recovered_within_its_profile_intervals():
    law = S.GRADIENT_LAW
    MAP = np.asarray(S.GRADIENT_MAPS)
    truth = S.gradient_eta1(MAP)
    rng = np.random.default_rng(1)
    sd = 0.06 * truth
    y = truth + sd * rng.standard_normal(MAP.size)
    fit = S.fit_power_law(MAP, y, sd)
    for name, (lo, hi) in zip(fit.names, fit.ci):
        assert lo < law[name] < hi, (name, lo, hi)
    assert fit.interval == "profile likelihood"
    # intervals far too narrow for the scatter: a between-site scatter is added, and the
    # law is still covered (without it the narrow sites would decide it alone)
    narrow = S.fit_power_law(MAP, y, sd / 10)
    assert 0.3 * np.mean(sd) < narrow.tau < 3 * np.mean(sd)
    assert narrow.chi2 / narrow.dof == pytest.approx(1.0, abs=1e-3)
    for name, (lo, hi) in zip(narrow.names, narrow.ci):
        assert lo < law[name] < hi, (name, lo, hi)


def _table(tmp, text):
    p = tmp / "sites.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,needle", [
    ("site,region\nA,LoessPlateau\n", "missing column"),
    ("site,region,data_file,colour\nA,LoessPlateau,x.csv,red\n", "unknown column"),
    ("site,region,data_file\n", "no sites"),
    ("site,region,data_file\nA,LoessPlateau,nope.csv\n", "not found"),
    ("site,region,data_file\nA,LoessPlateau,{csv}\nA,LoessPlateau,{csv}\n", "listed twice"),
    ("site,region,data_file,MAP_mm\nA,LoessPlateau,{csv},-3\n", "MAP_mm"),
    ("site,region,data_file\nA,Atlantis,{csv}\n", "Atlantis"),
])
def test_sites_table_errors_name_the_line_and_the_column(tmp_path, text, needle):
    csv = tmp_path / "obs.csv"
    csv.write_text("year,location,veg_cover_%\n2000,A,30\n2005,A,40\n")
    p = _table(tmp_path, text.format(csv=csv.name))
    with pytest.raises(DataError, match=needle):
        S.read_sites_table(p)
    res = CliRunner().invoke(main, ["scaling", "--sites", str(p), "--out",
                                    str(tmp_path / "out")])
    assert res.exit_code in (1, 2) and "Error:" in res.output and needle in res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_the_bundled_gradient_is_labelled_synthetic_and_follows_its_law():
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "data" / "synthetic" / "gradient"
    specs = S.read_sites_table(folder / "sites_gradient_synthetic.csv")
    assert len(specs) == 12 and all("synthetic" in s.site for s in specs)
    meta = json.loads((folder / "sites_gradient_synthetic.json").read_text())
    assert meta["synthetic"] is True and meta["law"] == S.GRADIENT_LAW
    for s in specs:
        m = json.loads(s.data_file.with_suffix(".json").read_text())
        assert m["true_params"]["eta1"] == pytest.approx(float(S.gradient_eta1(s.MAP_mm)))


@pytest.mark.slow
def test_synthetic_gradient_law_is_recovered_within_its_intervals(tmp_path):
    """12 twins, 200-700 mm, eta1 from GRADIENT_LAW: each calibrated (one compiled call),
    20 bootstrap refits each, the power law fitted across them covers the stated law; the
    parameters no stage fitted have no law (said so, not a zero slope)."""
    table = S.synthetic_gradient(tmp_path)
    specs = S.read_sites_table(table)
    cfg = r.CalibrationConfig(**S.GRADIENT_CONFIG)
    cals = S.calibrate_many(specs, cfg, identifiability=False)
    rows = S.thresholds_table(cals, [s.MAP_mm for s in specs], B=20)
    laws = S.fit_laws(rows)
    eta = laws["eta1"]["coefficients"]
    for name, value in S.GRADIENT_LAW.items():
        lo, hi = eta[name]["CI_95"]
        assert lo < value < hi, (name, lo, hi)
    assert "error" in laws["theta_star"] and "calibrated at 0 of 12" in laws["theta_star"]["error"]


def test_many_sites_in_one_call_equal_each_site_alone():
    """Two gradient sites (200 and 700 mm, their own rainfall) in one compiled call, each
    site's starts and tangents members of one kernel call with a forcing per member: the
    same fits as calibrating each site alone."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "data" / "synthetic" / "gradient"
    specs = S.read_sites_table(folder / "sites_gradient_synthetic.csv")[::11]
    cfg = r.CalibrationConfig(**S.GRADIENT_CONFIG, n_starts=2, lm_steps=8)
    many = S.calibrate_many(specs, cfg, identifiability=False)
    for spec, cal in zip(specs, many):
        alone = S.calibrate_many([spec], cfg, identifiability=False)[0]
        assert cal.site == alone.site == spec.site
        assert [s.final_loss for s in cal.stages] == pytest.approx(
            [s.final_loss for s in alone.stages], rel=1e-9)
        for name in ("r_V", "K_V", "eta1", "lambda1"):
            assert float(getattr(cal.params, name)) == pytest.approx(
                float(getattr(alone.params, name)), rel=1e-8), name
    assert len({round(float(c.params.eta1), 6) for c in many}) == 2  # the sites differ


@pytest.mark.slow
def test_scaling_and_scenario_commands_write_their_folders(tmp_path):
    """``regv1 scaling`` on three gradient sites and ``regv1 scenario`` on the synthetic
    Yanhe twin, end to end: every promised file, the laws' refusals stated (three sites are
    too few for the power law), intervals that contain their estimates, the published
    figures beside the scenarios."""
    import json
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "data" / "synthetic" / "gradient"
    table = tmp_path / "three.csv"
    lines = (folder / "sites_gradient_synthetic.csv").read_text().splitlines()
    table.write_text("\n".join([lines[0]] + [
        ln.replace("gradient_", str(folder / "gradient_"), 1) for ln in lines[1::5]]) + "\n")
    res = CliRunner().invoke(main, ["scaling", "--sites", str(table), "--config",
                                    str(folder / "config_gradient_synthetic.json"), "--B", "6",
                                    "--out", str(tmp_path / "scal")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "scal"
    for f in ("thresholds.csv", "laws.json", "regions.csv", "sites.json", "scaling.png",
              "regions.png", "report.md", "report.html", "manifest.json"):
        assert (out / f).is_file(), f
    laws = json.loads((out / "laws.json").read_text())
    assert "calibrated at 0 of 3" in laws["theta_star"]["error"]
    assert "needs >= 4" in laws["eta1"]["error"]  # three sites: refused, and said why
    import pandas as pd

    th = pd.read_csv(out / "thresholds.csv")
    assert len(th) == 3 and ((th.eta1_lo <= th.eta1) & (th.eta1 <= th.eta1_hi)).all()
    res = CliRunner().invoke(main, ["scenario", "--site", "Yanhe-basin-synthetic", "--B", "6",
                                    "--out", str(tmp_path / "scen")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "scen" / "scenarios.json").read_text())
    text = (tmp_path / "scen" / "report.md").read_text()
    assert "Deng et al. 2014" in text and "Wang et al. 2016" in text and "World Bank" in text
    assert (tmp_path / "scen" / "scenarios.png").is_file()
    rows = {(r["scenario"], r["quantity"]): r for r in doc["rows"]}
    soc = rows[("grain_for_green", "soc_sequestration_tC_per_ha_per_yr")]
    assert 0 < soc["lo"] <= soc["estimate"] <= soc["hi"]  # planting stores carbon
    wet = rows[("rain_plus_20", "runoff_change_mm_per_yr")]["estimate"]
    dry = rows[("rain_minus_20", "runoff_change_mm_per_yr")]["estimate"]
    assert dry < rows[("grain_for_green", "runoff_change_mm_per_yr")]["estimate"] < wet
