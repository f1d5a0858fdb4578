"""Profile likelihood (``regv1_jax.analysis.profile``): the batched warm-started sweeps
agree with cold-started scipy refits of the same residuals, the profile is consistent with
the point fit's objective, and the interval rules (crossing, open side, flat, failed
points) on constructed curves."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import least_squares

import regv1_jax as r
from regv1_jax.analysis import (
    CHI2_95,
    ProfileSetup,
    lr_interval,
    point_residual_fn,
    profile,
    profile_grid,
)
from regv1_jax.fit import (
    CalibrationConfig,
    Stage,
    make_targets,
    make_twin,
    twin_forcing,
    write_twin,
)

START, END = 1999, 2006
RAIN = 420 + 60 * np.sin(np.arange(START, END + 1) * 1.7)
FREE = ("r_V", "K_V", "a1", "a2")
# Small problem (8 years, RK4 with 6 steps a year, four calibrated parameters, no event
# constraints, prior weight 1) so that one compilation of the sweeps is ~20-40 s.
CFG = CalibrationConfig(stages=(Stage("joint", FREE, ("veg_cover_%", "SOM_%")),),
                        n_starts=1, lm_steps=20, prior_weight=1.0, holdout=None, method="rk4",
                        steps_per_year=6)
POINTS = 9


def _lsq(fn, v0):
    return least_squares(fn, v0, jac="3-point", method="trf", xtol=1e-13, ftol=1e-13,
                         gtol=1e-13, max_nfev=400)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Synthetic twin (noisy cover and SOM), fitted by scipy on the library's residuals:
    the profile of theta_star (not calibrated) at its prior value frees all of FREE, so
    its residual function is the point fit's objective."""
    frame, meta = make_twin("LoessPlateau", "profile-synthetic", {"r_V": 0.15, "a2": 0.045},
                            START, END, RAIN, 1999, depth_every=None,
                            noise={"veg_cover_%": 1.0, "SOM_%": 0.03}, seed=3)
    path = tmp_path_factory.mktemp("profile") / "profile_synthetic.csv"
    write_twin(frame, meta, path)
    obs = r.load_site(path, "profile-synthetic")
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(START, END, RAIN, 1999)
    targets = make_targets(obs, forcing)
    prior = space.prior_values(jnp.float64)
    setup0 = ProfileSetup(space, prior, forcing, targets, FREE, CFG, events=False)
    theta0 = float(prior.theta_star)
    fn, v0 = point_residual_fn(setup0, "theta_star", theta0)
    sol = _lsq(fn, v0)
    u = space.to_constrained(space.to_unconstrained(prior).replace(
        **{n: jnp.asarray(x) for n, x in zip(FREE, sol.x)}))
    params = prior.replace(**{n: getattr(u, n) for n in FREE})
    setup = ProfileSetup(space, params, forcing, targets, FREE, CFG, events=False)
    profs = profile(setup, ("theta_star", "a2"), points=POINTS)
    return setup, fn, sol, profs


def test_profile_agrees_with_cold_scipy_refits(fitted):
    setup, fn_full, sol, (p_theta, p_a2) = fitted
    assert p_theta.x.size == POINTS and np.all(np.diff(p_theta.x) > 0)
    assert p_theta.x[POINTS // 2] == pytest.approx(float(setup.params.theta_star))
    assert set(p_theta.status) <= {0}, p_theta.status
    # Five grid points (both ends, the estimate, two between), each refitted from the
    # prior values by scipy (trf, finite-difference Jacobian) on the same residuals.
    for i in (0, 2, POINTS // 2, 6, POINTS - 1):
        fn, v0 = point_residual_fn(setup, "theta_star", float(p_theta.x[i]))
        ref = 0.5 * float(np.sum(_lsq(fn, v0).fun ** 2))
        assert p_theta.loss[i] == pytest.approx(ref, rel=1e-4), i
        assert p_theta.loss[i] <= ref * (1 + 1e-6)  # warm starts never end worse
    # At the estimate the theta_star profile is the point fit itself (prior row of
    # theta_star: zero at its prior value).
    assert p_theta.loss[POINTS // 2] == pytest.approx(0.5 * np.sum(sol.fun**2), rel=1e-6)


def test_profile_of_a_calibrated_parameter_matches_the_point_objective(fitted):
    setup, fn_full, sol, (_, p_a2) = fitted
    m = POINTS // 2
    # Profile likelihood of a2: its own prior row is left out, every other row is the
    # point fit's; at the estimate the refit of the others stays at the optimum.
    z = setup.space.spec("a2").standardised(float(setup.params.a2))
    full = 0.5 * float(np.sum(sol.fun**2))
    assert p_a2.loss[m] + 0.5 * float(z) ** 2 == pytest.approx(full, rel=1e-6)
    assert p_a2.free == ("r_V", "K_V", "a1")
    dev = p_a2.deviance[np.isfinite(p_a2.deviance)]
    assert dev.min() >= -1e-9 and dev.max() > CHI2_95  # the grid (+-3 prior sd) crosses
    lo, hi = p_a2.ci
    assert p_a2.x[0] < lo < p_a2.x_min < hi < p_a2.x[-1]
    assert not p_a2.flat and p_a2.scale == 1.0  # chi2/dof < 1: no inflation
    s = p_a2.summary()
    assert s["CI_95_LR"] == [lo, hi] and s["failed_points"] == []


def test_interval_rules_on_constructed_curves():
    x = np.linspace(-2.0, 4.0, 61)
    dev = ((x - 1.0) / 0.5) ** 2  # quadratic: interval 1 -+ 0.5 sqrt(3.84)
    half = 0.5 * np.sqrt(CHI2_95)
    lo, hi, olo, ohi = lr_interval(x, dev, np.ones_like(x, bool))
    assert (olo, ohi) == (False, False)
    assert lo == pytest.approx(1 - half, abs=2e-3) and hi == pytest.approx(1 + half, abs=2e-3)
    # One-sided: the curve never reaches 3.84 below the minimum.
    dev1 = np.where(x < 1.0, 0.1 * (x - 1.0) ** 2, ((x - 1.0) / 0.5) ** 2)
    lo, hi, olo, ohi = lr_interval(x, dev1, np.ones_like(x, bool))
    assert olo and not ohi and lo == x[0]
    # Flat: open on both sides.
    assert lr_interval(x, 0.01 * x**2, np.ones_like(x, bool))[2:] == (True, True)
    # A failed point at the crossing is skipped: the crossing moves to the next usable one.
    usable = np.ones_like(x, bool)
    j = int(np.searchsorted(x, 1 + half))
    usable[j] = False
    lo2, hi2, _, _ = lr_interval(x, dev, usable)
    assert lo2 == pytest.approx(1 - half, abs=2e-3)
    assert hi2 > x[j - 1] and hi2 <= x[j + 1]


def test_grid_is_centred_and_inside_the_bounds():
    space = r.load_param_space("LoessPlateau")
    sp = space.spec("SOM_star")
    g = profile_grid(space, "SOM_star", sp.value, points=40)  # even: one more
    assert g.size == 41 and g[20] == pytest.approx(sp.value)
    assert np.all(np.diff(g) > 0) and sp.bound_lower < g[0] and g[-1] < sp.bound_upper
    # Near a bound the grid is cut inside it; the centre stays the estimate.
    near = sp.bound_lower + 0.002 * (sp.bound_upper - sp.bound_lower)
    g = profile_grid(space, "SOM_star", near, points=11)
    assert g[5] == pytest.approx(near) and g[0] > sp.bound_lower


# Compiles the sweeps and the identifiability Jacobian of the command path (~1-2 min on 2
# cores): slow.
@pytest.mark.slow
def test_cli_profile_and_identify_from_a_calibration_folder(tmp_path):
    import json

    from click.testing import CliRunner

    from regv1_jax.cli import main

    frame, meta = make_twin("LoessPlateau", "profile-synthetic", {"r_V": 0.15, "a2": 0.045},
                            START, END, RAIN, 1999, depth_every=None,
                            noise={"veg_cover_%": 1.0, "SOM_%": 0.03}, seed=3)
    data = tmp_path / "twin.csv"
    write_twin(frame, meta, data)
    space = r.load_param_space("LoessPlateau")
    cal = tmp_path / "cal"
    cal.mkdir()
    block = {s.name: {"value": s.value, "source": "calibrated" if s.name in FREE else "prior"}
             for s in space.specs}
    (cal / "params.json").write_text(json.dumps({"LoessPlateau": block}))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"stages": [{"name": "joint", "free": list(FREE),
                                           "variables": ["veg_cover_%", "SOM_%"]}],
                               "method": "rk4", "steps_per_year": 6, "lm_steps": 20,
                               "holdout": None}))
    common = ["--site", "profile-synthetic", "--data", str(data), "--region", "LoessPlateau",
              "--from-calibration", str(cal), "--config", str(cfg)]
    res = CliRunner().invoke(main, ["profile", *common, "--param", "a2", "--points", "5",
                                    "--out", str(tmp_path / "prof")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert [p["name"] for p in doc["profiles"]] == ["theta_star", "SOM_star", "a2"]
    assert (tmp_path / "prof" / "profile.png").exists()
    rep = tmp_path / "rep.csv"
    rng = np.random.default_rng(0)
    rep.write_text("r_V,K_V,a1,a2\n" + "\n".join(
        ",".join(f"{v * (1 + 0.05 * rng.standard_normal()):.6g}" for v in
                 (0.12, 0.7, 0.18, 0.035)) for _ in range(40)) + "\n")
    res = CliRunner().invoke(main, ["identify", *common, "--replicates", str(rep),
                                    "--out", str(tmp_path / "ident")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "ident" / "identify.json").read_text())
    assert [d["source"] for d in doc["results"]] == ["data", "sample"]
    assert (tmp_path / "ident" / "correlation.png").exists()


def test_setup_from_a_site_calibration_takes_its_fitted_set_and_training_years(tmp_path):
    from types import SimpleNamespace

    from regv1_jax.analysis import setup_from_calibration
    from regv1_jax.fit import SEED_STAGES, StageResult

    frame, meta = make_twin("LoessPlateau", "profile-synthetic", {}, START, END, RAIN, 1999,
                            depth_every=None)
    path = tmp_path / "twin.csv"
    write_twin(frame, meta, path)
    obs = r.load_site(path, "profile-synthetic")
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(START, END, RAIN, 1999)
    stages = [StageResult(st.name, st.free, {}, {}, 8, fitted=st.free) for st in SEED_STAGES]
    stages[1] = StageResult("b_soil_carbon", ("a1", "a2"), {}, {}, 0, skipped="no data")
    stages[4] = StageResult("e_joint", SEED_STAGES[4].free, {}, {}, 8,
                            fitted=tuple(n for n in SEED_STAGES[4].free if n != "k_E"))
    cal = SimpleNamespace(config=CalibrationConfig(), stages=stages, observations=obs,
                          forcing=forcing, holdout_years=(2005, 2006), space=space,
                          params=space.prior_values(jnp.float64))
    s = setup_from_calibration(cal)
    # Union of the fitted parameters of the stages that ran (k_E from stage d).
    assert set(s.free) == set(SEED_STAGES[4].free) and s.events
    assert s.targets.count()["veg_cover_%"] == 6  # 8 years minus the 2 holdout years


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import regv1_jax as r
from regv1_jax.fit import CalibrationConfig, Stage
from regv1_jax.fit import make_targets
from regv1_jax.fit import make_twin, twin_forcing
from regv1_jax.analysis import ProfileSetup, profile
assert len(jax.devices()) == 2
S, E = 1999, 2004
rain = 420 + 60 * np.sin(np.arange(S, E + 1) * 1.7)
frame, meta = make_twin("LoessPlateau", "shard-synthetic", {"r_V": 0.15}, S, E, rain, 1999,
                        depth_every=None, noise={"veg_cover_%": 1.0}, seed=1)
import tempfile, pathlib
from regv1_jax.fit import write_twin
p = pathlib.Path(tempfile.mkdtemp()) / "shard_synthetic.csv"
write_twin(frame, meta, p)
obs = r.load_site(p, "shard-synthetic")
space = r.load_param_space("LoessPlateau")
forcing = twin_forcing(S, E, rain, 1999)
cfg = CalibrationConfig(stages=(Stage("joint", ("r_V", "K_V"), ("veg_cover_%",)),),
                        n_starts=1, lm_steps=8, holdout=None, method="rk4", steps_per_year=4)
setup = ProfileSetup(space, space.prior_values(jnp.float64), forcing,
                     make_targets(obs, forcing), ("r_V", "K_V"), cfg, events=False)
a = profile(setup, ("theta_star",), points=5)               # 2 sweeps over 2 devices
b = profile(setup, ("theta_star",), points=5, devices=jax.devices()[:1])
np.testing.assert_allclose(a[0].loss, b[0].loss, rtol=1e-10)
assert (a[0].status == b[0].status).all()
print("SHARDED OK")
"""


# Compiles the sweeps twice in a fresh process (~1-2 min on 2 cores): slow.
@pytest.mark.slow
def test_sharded_sweeps_equal_one_device():
    from helpers import run_on_cpu_devices

    run_on_cpu_devices(SHARDED, n=2)
