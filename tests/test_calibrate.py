"""Twin experiments and errors of the staged calibration.

Every calibration here uses the same config and the same number of years, so that one
compiled multi-start optimiser serves them all (the first test pays the compilation).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regv1_jax as r
from regv1_jax.fit import (
    DEFAULT_NOISE,
    SEED_STAGES,
    CalibrationConfig,
    CalibrationError,
    Stage,
    calibrate_site,
    calibrate_stages,
    fit_metrics,
    load_config,
    make_targets,
    make_twin,
    run_stage,
    twin_forcing,
    write_twin,
)
from regv1_jax.io import load_site
from regv1_jax.report import write_outputs

START, END = 1995, 2010
TRUTH = dict(r_V=0.10, K_V=0.72, a1=0.20, a2=0.040, lambda1=0.6, lambda2=0.06, eta1=6.0,
             c_E=1.25, omega_E=1.15, gamma=2.2, b_V=0.55, k_E=6.0)
RAIN = 400 + 80 * np.sin(np.arange(START, END + 1) * 1.7)
# Intensity varies by year so that c_E and omega_E are separately identifiable.
INTENSITY = 1.0 + 0.5 * np.cos(np.arange(START, END + 1) * 2.3)

# Twin config: plain least squares (no prior, no event constraints, whose seed values do
# not belong to these true parameters), no holdout, fixed-step solves.
NO_EVENTS = tuple(dataclasses.replace(s, events=False) for s in SEED_STAGES)
CFG = CalibrationConfig(stages=NO_EVENTS, n_starts=4, prior_weight=0.0, holdout=None,
                        method="rk4")

# Stated recovery tolerances (relative error) per parameter.
TOL_EXACT = 0.02
# lambda1, lambda2 and eta1 act on runoff and theta only through small changes of V and of
# field capacity: with the stated noise they are weakly identified (the Fisher report
# flags them), so the noisy twin checks them only for staying inside their bounds.
# r_V: in model v2 growth is r_V w(theta) and the cover trajectory under planting is led
# by s_plant (fixed here); over noise seeds 7-10 the fit gave r_V -36%, -7%, +5%, -24%.
TOL_NOISY = {"r_V": 0.4, "K_V": 0.05, "a1": 0.15, "a2": 0.15, "lambda1": None,
             "lambda2": None, "eta1": None, "gamma": 0.3, "b_V": 0.3, "c_E": 0.3,
             "omega_E": 0.3, "k_E": 0.4}


def _twin(tmp_path, name, noise=None, seed=1):
    frame, meta = make_twin("LoessPlateau", f"{name}-synthetic", TRUTH, START, END, RAIN, 1999,
                            noise=noise, seed=seed, intensity=INTENSITY)
    path = tmp_path / f"{name}_synthetic.csv"
    write_twin(frame, meta, path)
    return load_site(path, f"{name}-synthetic")


@pytest.fixture(scope="module")
def setup():
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(START, END, RAIN, 1999, None, INTENSITY, 0.0)
    return space, space.prior_values(jnp.float64), forcing


@pytest.fixture(scope="module")
def exact(setup, tmp_path_factory):
    space, prior, forcing = setup
    obs = _twin(tmp_path_factory.mktemp("exact"), "exact")
    targets = make_targets(obs, forcing)
    p, stages = calibrate_stages(space, prior, forcing, targets, CFG)
    return obs, targets, p, stages


def test_noise_free_twin_is_recovered_nearly_exactly(exact):
    _, _, p, stages = exact
    for name, true in TRUTH.items():
        assert float(getattr(p, name)) == pytest.approx(true, rel=TOL_EXACT), name
    assert all(s.skipped is None for s in stages)
    assert stages[-1].final_loss < 1e-3


def test_kept_stages_alone_branch_is_the_screen_0_fit(setup, exact):
    """On this twin the basin stage does not pay for its parameters: the branch of the
    seed's stages alone is kept, and it is the fit of ``screen: 0`` (the seed's stages
    without the search), to rounding."""
    space, prior, forcing = setup
    _, targets, p, stages = exact
    assert stages[0].screen["kept"] == "stages_alone"
    p0, s0 = calibrate_stages(space, prior, forcing, targets,
                              dataclasses.replace(CFG, screen=0))
    assert [s.name for s in s0] == [s.name for s in stages]
    for name in r.PARAM_NAMES:
        assert float(getattr(p, name)) == pytest.approx(float(getattr(p0, name)),
                                                       rel=1e-9, abs=1e-12), name


def test_each_stage_reports_its_work(exact):
    _, _, _, stages = exact
    for s in stages:
        assert 1 <= s.iterations <= CFG.adam_steps + CFG.lm_steps
        assert np.isfinite(s.final_loss) and s.final_loss <= s.initial_loss + 1e-12
        assert 0 <= s.best_start < CFG.n_starts and len(s.start_losses) == CFG.n_starts
        assert s.final_loss == pytest.approx(min(s.start_losses))


def test_noisy_twin_recovers_within_stated_tolerances(setup, tmp_path):
    space, prior, forcing = setup
    obs = _twin(tmp_path, "noisy", noise=DEFAULT_NOISE, seed=7)
    # MAP with the soft prior (the bounds are physical now, so without it the weakly
    # identified r_V may wander to 0.04; the prior is what holds it, as in a real run).
    cfg = dataclasses.replace(CFG, prior_weight=1.0)
    p, _ = calibrate_stages(space, prior, forcing, make_targets(obs, forcing), cfg)
    for name, true in TRUTH.items():
        got = {n: round(float(getattr(p, n)), 4) for n in TRUTH}
        if TOL_NOISY[name] is None:
            spec = space.spec(name)
            assert spec.bound_lower <= got[name] <= spec.bound_upper
        else:
            assert got[name] == pytest.approx(true, rel=TOL_NOISY[name]), (name, got)


def test_all_missing_column_changes_nothing(setup, exact, tmp_path):
    space, prior, forcing = setup
    obs, targets, _, _ = exact
    # Stage (a) alone, with and without an all-missing erosion column.
    st = SEED_STAGES[0]
    key = jax.random.PRNGKey(0)
    p1, r1 = run_stage(space, st, prior, forcing, targets, CFG, key)
    p2, r2 = run_stage(space, st, prior, forcing, targets.drop(["erosion_t/ha"]), CFG, key)
    assert r1.values == r2.values and r1.final_loss == r2.final_loss
    # A cover value that is masked out does not count, whatever it holds.
    bad = dataclasses.replace(targets)
    vals = dict(bad.values)
    vals["veg_cover_%"] = jnp.where(bad.masks["veg_cover_%"], vals["veg_cover_%"], 1e6)
    masks = dict(bad.masks)
    masks["veg_cover_%"] = masks["veg_cover_%"].at[3].set(False)
    vals["veg_cover_%"] = vals["veg_cover_%"].at[3].set(1e6)
    t3 = type(targets)(vals, masks, targets.sigma)
    t4 = type(targets)(targets.values, masks, targets.sigma)
    _, r3 = run_stage(space, st, prior, forcing, t3, CFG, key)
    _, r4 = run_stage(space, st, prior, forcing, t4, CFG, key)
    assert r3.values == r4.values


def test_stage_without_data_keeps_prior_and_says_so(setup, exact):
    space, prior, forcing = setup
    _, targets, _, _ = exact
    no_som = targets.drop(["SOM_%", "SOM_0-10_%", "SOM_10-20_%", "SOM_20-40_%"])
    cfg = dataclasses.replace(CFG, stages=NO_EVENTS[:2])
    p, stages = calibrate_stages(space, prior, forcing, no_som, cfg)
    soil = {s.name: s for s in stages}["b_soil_carbon"]
    assert soil.skipped and "no observations" in soil.skipped
    assert float(p.a1) == float(prior.a1) and float(p.a2) == float(prior.a2)


def test_errors(setup, exact, tmp_path):
    space, prior, forcing = setup
    obs, targets, _, _ = exact
    with pytest.raises(CalibrationError, match="stage 'x' names unknown parameter 'foo'"):
        calibrate_stages(space, prior, forcing, targets,
                         dataclasses.replace(CFG, stages=(Stage("x", ("foo",), ("SOM_%",)),)))
    with pytest.raises(CalibrationError, match="unknown variable 'NDVI'"):
        Stage("y", ("r_V",), ("NDVI",)).check(space)
    few = targets.with_mask(jnp.arange(forcing.n_years) == 0)  # one year of data
    # Too few constraints never aborts: without a prior the stage is skipped, and says why.
    p_few, res = run_stage(space, SEED_STAGES[0], prior, forcing, few, CFG,
                           jax.random.PRNGKey(0))
    assert res.status == "skipped" and "1 observations for 2 free parameters" in res.skipped
    assert float(p_few.r_V) == float(prior.r_V)
    with pytest.raises(r.DataError, match="not-a-site"):
        load_site(obs.source_file, "not-a-site")
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"stages": [{"name": "v", "free": ["r_V"],
                                            "variables": ["veg_cover_%"]}], "n_starts": 2}))
    cfg = load_config(path)
    assert cfg.stages[0].free == ("r_V",) and cfg.n_starts == 2
    path.write_text(json.dumps({"n_stars": 2}))
    with pytest.raises(CalibrationError, match="unknown config key"):
        load_config(path)


def test_diverging_start_is_dropped_and_reported(setup, exact):
    space, prior, forcing = setup
    _, targets, _, _ = exact
    # V0 = NaN in the warm start makes start 0 fail; the prior draws keep V0 too, so
    # free it with the stage: its draws are finite, the warm start is not.
    st = Stage("t", ("r_V", "K_V", "V0"), ("veg_cover_%",))
    bad = prior.replace(V0=jnp.nan)
    p, res = run_stage(space, st, bad, forcing, targets, CFG, jax.random.PRNGKey(0))
    assert 0 in res.dropped_starts and res.best_start != 0
    assert np.isfinite(float(p.V0)) and np.isfinite(res.final_loss)


def test_fit_metrics_against_hand_values():
    m = fit_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.1, 1.9, 3.2, 3.8]))
    assert m["RMSE"] == pytest.approx(np.sqrt(np.mean([0.01, 0.01, 0.04, 0.04])))
    assert m["NSE"] == pytest.approx(1 - 0.1 / 5.0)
    assert m["rRMSE"] == pytest.approx(m["RMSE"] / 2.5)
    assert 0.9 < m["R2"] <= 1.0
    assert m["R2_1to1"] == pytest.approx(m["NSE"])
    # A simulation equal to twice the data: perfect correlation, poor 1:1 R2.
    obs = np.array([1.0, 2.0, 3.0, 4.0])
    twice = fit_metrics(obs, 2 * obs)
    assert twice["R2"] == pytest.approx(1.0)
    assert twice["R2_1to1"] == pytest.approx(1 - np.sum(obs**2) / 5.0) and twice["R2_1to1"] < 0


def test_site_calibration_writes_the_report(setup, tmp_path):
    space, prior, forcing = setup
    obs = _twin(tmp_path, "rep", noise=DEFAULT_NOISE, seed=3)
    cfg = dataclasses.replace(CFG, holdout=(2008, 2010), prior_weight=1.0,
                              stages=NO_EVENTS[:2])
    cal = calibrate_site(space, prior, forcing, obs, cfg, planting_start=1999)
    assert cal.holdout_years == (2008, 2010) and cal.train_years == (1995, 2007)
    assert cal.metrics["veg_cover_%"]["holdout"]["n"] == 3
    assert cal.metrics["veg_cover_%"]["training"]["R2"] > 0.9
    ident = cal.identifiability
    C = np.asarray(ident["corr"])
    names = ident["names"]
    # Every fitted parameter of every stage that ran (the basin stage's too, when kept).
    assert set(names) == {m for s in cal.stages for m in s.fitted} and len(set(names)) == len(names)
    assert {"r_V", "K_V", "a1", "a2"} <= set(names)
    k = len(names)
    ok = np.isfinite(np.diag(C))
    assert C.shape == (k, k) and np.allclose(np.diag(C)[ok], 1.0)
    pairs = {tuple(p["pair"]): p for p in ident["pairs"]}
    assert {("a1", "a2"), ("r_V", "K_V")} <= set(pairs)  # the seed's pairs are always listed
    for i in range(k):  # every |r| > 0.9 of the matrix is listed and flagged, nothing else
        for j in range(i + 1, k):
            strong = abs(C[i, j]) > 0.9
            p = pairs.get((names[i], names[j]))
            assert (p is not None and p["flag"]) == strong
            if p is not None:
                assert p["corr"] == pytest.approx(C[i, j])
    files = write_outputs(cal, tmp_path / "out")
    pj = json.loads(files["params"].read_text())
    assert pj["LoessPlateau"]["r_V"]["source"] == "calibrated"
    lo, hi = pj["LoessPlateau"]["r_V"]["CI_95"]
    assert lo < pj["LoessPlateau"]["r_V"]["value"] < hi
    assert pj["LoessPlateau"]["tau_VS"]["source"].startswith("prior")
    md = files["md"].read_text()
    assert "Synthetic twin-experiment data" in md and "R2 veg_cover_% >= 0.7" in md
    assert "Levenberg-Marquardt" in md and "Nash-Sutcliffe" in md
    assert 'src="data:image/png;base64,' in files["html"].read_text()
    for f in ("fit.png", "correlation.png", "report.html", "fit.csv", "metrics.json"):
        assert (tmp_path / "out" / f).stat().st_size > 0
    mg = json.loads(files["metrics"].read_text())["magnitudes"]
    assert mg["water_yield_decrease"]["mm_per_yr"] > 0  # planting lowers water yield
    assert mg["runoff_decrease"]["mm_per_yr"] > 0


def test_spd_solve_equals_numpy_and_rejects_an_indefinite_matrix():
    """The LM step's Cholesky solve (jnp, no LAPACK call: see ``fit.spd_solve``) equals numpy's
    solve on damped normal matrices, also with an all-zero (padded) column, under vmap."""
    from regv1_jax.fit import spd_solve

    rng = np.random.default_rng(0)
    Ms, bs = [], []
    for zero_col in (None, 3):
        J = rng.normal(size=(30, 12))
        if zero_col is not None:
            J[:, zero_col] = 0.0
        A = J.T @ J
        d = np.where(np.diag(A) > 0, np.diag(A), 1.0)
        Ms.append(A + 1e-3 * np.diag(d))
        bs.append(rng.normal(size=12))
    x = jax.vmap(spd_solve)(jnp.asarray(np.stack(Ms)), jnp.asarray(np.stack(bs)))
    for M, b, xi in zip(Ms, bs, np.asarray(x)):
        np.testing.assert_allclose(xi, np.linalg.solve(M, b), rtol=1e-10, atol=1e-12)
    assert np.all(np.isnan(np.asarray(spd_solve(jnp.asarray(-Ms[0]), jnp.asarray(bs[0])))))
