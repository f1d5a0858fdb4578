"""Block bootstrap (``regv1_jax.analysis._bootstrap``): resampling properties, the
automatic block length, percentile and BCa intervals against scipy on the same resamples,
failed replicates excluded and counted, ``map_chunks`` with columns; the batched staged
refits, sharding and the CLI are slow-marked (they compile the staged fit)."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from regv1_jax.analysis import (
    bca_interval,
    bootstrap_intervals,
    jackknife_counts,
    map_chunks,
    moving_block_indices,
    percentile_interval,
    politis_white,
    replicate_status,
    resample_counts,
    stationary_indices,
    year_weights,
)
from regv1_jax.fit import STAGE_CODES
from regv1_jax.status import code

jax.config.update("jax_enable_x64", True)


@pytest.mark.parametrize("scheme", ["moving", "stationary"])
def test_counts_sum_to_n_and_are_reproducible(scheme):
    c = np.asarray(resample_counts(jax.random.PRNGKey(1), 17, 500, 4, scheme))
    assert c.shape == (500, 17) and np.all(c.sum(axis=1) == 17) and np.all(c >= 0)
    c2 = np.asarray(resample_counts(jax.random.PRNGKey(1), 17, 500, 4, scheme))
    np.testing.assert_array_equal(c, c2)
    assert not np.array_equal(c, np.asarray(resample_counts(jax.random.PRNGKey(2), 17, 500,
                                                            4, scheme)))
    # Every year is drawn about equally often (moving blocks under-sample the two ends).
    share = c.mean(axis=0)
    assert np.all(share[4:-4] > 0.8) and np.all(share[4:-4] < 1.25)


def test_moving_blocks_are_runs_of_consecutive_years():
    n, L = 20, 5
    keys = jax.random.split(jax.random.PRNGKey(0), 200)
    idx = np.asarray(jax.vmap(lambda k: moving_block_indices(k, n, L))(keys))
    blocks = idx.reshape(200, n // L, L)
    assert np.all(np.diff(blocks, axis=-1) == 1)  # each block: L consecutive years
    assert idx.min() >= 0 and idx.max() <= n - 1
    assert len(np.unique(blocks[:, :, 0])) == n - L + 1  # every start used


def test_stationary_block_lengths_are_geometric_with_mean_L():
    n, L = 400, 4.0
    keys = jax.random.split(jax.random.PRNGKey(3), 50)
    idx = np.asarray(jax.vmap(lambda k: stationary_indices(k, n, L))(keys))
    lengths = []
    for row in idx:
        cont = (row[1:] == (row[:-1] + 1) % n)
        run = 1
        for c in cont[:-1]:  # drop the last, censored block
            if c:
                run += 1
            else:
                lengths.append(run)
                run = 1
    lengths = np.asarray(lengths)
    # A new block that happens to start right after the last year merges with it: rare (1/n).
    assert abs(lengths.mean() - L) < 0.25
    assert abs(np.mean(lengths == 1) - 1 / L) < 0.03  # geometric: P(length 1) = p


def test_jackknife_and_year_weights():
    J = jackknife_counts(6, 2)
    assert J.shape == (5, 6) and np.all(J.sum(axis=1) == 4)
    assert np.array_equal(J[1], [1, 0, 0, 1, 1, 1])
    w = np.asarray(year_weights(np.array([[2, 0, 1]]), np.array([0, 2, 3]), 5, n_vars=2))
    np.testing.assert_array_equal(w, [[2, 0, 0, 1, 0, 2, 0, 0, 1, 0]])


def test_politis_white_short_for_white_noise_long_for_ar1():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(400)
    ar = np.zeros(400)
    for t in range(1, 400):
        ar[t] = 0.8 * ar[t - 1] + x[t]
    sb_w, cb_w = politis_white(x)
    sb_a, cb_a = politis_white(ar)
    assert sb_w < 3 and cb_w < 3
    assert sb_a > 8 and cb_a > sb_a  # circular/moving block longer than stationary's mean


def test_bca_and_percentile_equal_scipy_on_the_same_resamples():
    x = np.random.default_rng(4).lognormal(size=40)  # skewed: z0 and a are not 0
    res = stats.bootstrap((x,), np.mean, method="BCa", n_resamples=4000, random_state=0,
                          vectorized=True)
    reps = res.bootstrap_distribution
    ok = np.ones(reps.size, bool)
    jack = np.array([np.mean(np.delete(x, i)) for i in range(x.size)])
    lo, hi, z0, a = bca_interval(jnp.asarray(x.mean()), jnp.asarray(reps), jnp.asarray(ok),
                                 jnp.asarray(jack), jnp.ones(x.size, bool))
    assert float(a) > 0.01 and abs(float(z0)) > 0.01
    np.testing.assert_allclose([float(lo), float(hi)], [res.confidence_interval.low,
                                                        res.confidence_interval.high],
                               rtol=1e-10)
    pres = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=4000,
                           random_state=0, vectorized=True)
    plo, phi = percentile_interval(jnp.asarray(reps), jnp.asarray(ok))
    np.testing.assert_allclose([float(plo), float(phi)], [pres.confidence_interval.low,
                                                          pres.confidence_interval.high],
                               rtol=1e-10)


def test_failed_replicates_are_excluded_and_counted():
    rng = np.random.default_rng(5)
    reps = rng.normal(size=(300, 1))
    status = np.zeros(300, np.int32)
    status[:30] = code("failed")  # their (absurd) values must not move the interval
    reps[:30] = 1e6
    codes = np.zeros((300, 2), int)
    codes[30:40, 1] = STAGE_CODES["skipped"]  # the resample dropped stage 2's data
    codes[40:50, 0] = STAGE_CODES["not_converged"]
    status[40:50] = code("not_converged")
    st = replicate_status(status, codes, np.array([0, 0]))
    assert np.sum(st == code("failed")) == 30 and np.sum(st == code("newly_skipped")) == 10 \
        and np.sum(st == code("not_converged")) == 10
    # A stage the point fit skipped too is no reason to drop a replicate.
    st2 = replicate_status(status, codes, np.array([0, STAGE_CODES["skipped"]]))
    assert np.sum(st2 == code("newly_skipped")) == 0
    assert np.sum(replicate_status(status, codes, np.array([0, 0]), False)
                  == code("not_converged")) == 0
    out = bootstrap_intervals(np.zeros(1), reps, st == 0, reps[:20], np.ones(20, bool),
                              ["x"])
    assert out["x"]["n_used"] == 250 and out["x"]["point_inside_percentile"]
    lo, hi = out["x"]["percentile"]
    np.testing.assert_allclose([lo, hi], np.quantile(reps[st == 0, 0], [0.025, 0.975]))
    assert hi < 5
    none = bootstrap_intervals(np.zeros(1), reps, np.zeros(300, bool), reps[:20],
                               np.ones(20, bool), ["x"])
    assert none["x"]["n_used"] == 0 and np.isnan(none["x"]["BCa"][0])


def test_map_chunks_keeps_columns_and_resumes(tmp_path):
    from regv1_jax.analysis import ChunkStore

    def fn(x):
        return np.stack([x, 2 * x], axis=1), (x > 6).astype(np.int32)

    store = ChunkStore(tmp_path / "s", {"k": 1}, 10, 4)
    ev = map_chunks(fn, lambda lo, hi: np.arange(lo, hi, dtype=float), 10, chunk=4,
                    store=store)
    assert ev.values.shape == (10, 2) and np.array_equal(ev.values[:, 1], 2 * np.arange(10))
    assert ev.n_failed == 3
    ev2 = map_chunks(lambda x: pytest.fail("recomputed"), None, 10, chunk=4,
                     store=ChunkStore(tmp_path / "s", {"k": 1}, 10, 4), resume=True)
    np.testing.assert_array_equal(ev2.values, ev.values)
    assert ev2.chunks_resumed == 3


def test_cli_bad_bootstrap_input_is_one_line_before_computing(tmp_path):
    from click.testing import CliRunner

    from regv1_jax.cli import main

    for args in (["bootstrap", "--site", "Yanhe-basin", "--block-length", "0"],
                 ["calibrate", "--site", "Yanhe-basin", "--uncertainty", "--block-length",
                  "x"],
                 ["bootstrap", "--site", "no-such-site"],
                 ["bootstrap", "--site", "Yanhe-basin", "--B", "1"]):
        res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o")])
        assert res.exit_code in (1, 2), res.output
        assert "Traceback" not in res.output and "Error" in res.output
        assert not (tmp_path / "o").exists()


# --- batched staged refits (compile the staged fit: slow) -------------------------------------
START, END, PS = 1995, 2012, 1999
RAIN = 420 + 60 * np.sin(np.arange(START, END + 1) * 1.7)


def tiny_problem(tmp, noise_seed=3):
    import regv1_jax as r
    from regv1_jax.fit import (
        SEED_STAGES,
        CalibrationConfig,
        make_targets,
        make_twin,
        twin_forcing,
        write_twin,
    )

    stages = (dataclasses.replace(SEED_STAGES[0], events=False),)
    cfg = CalibrationConfig(stages=stages, n_starts=1, lm_steps=15, prior_weight=0.0,
                            holdout=None, method="rk4", steps_per_year=4)
    frame, meta = make_twin("LoessPlateau", "bs-synthetic", {"r_V": 0.15}, START, END, RAIN,
                            PS, noise={"veg_cover_%": 2.0}, seed=noise_seed,
                            depth_every=None)
    path = tmp / "bs_synthetic.csv"
    write_twin(frame, meta, path)
    obs = r.load_site(path, "bs-synthetic")
    space = r.load_param_space("LoessPlateau")
    forcing = twin_forcing(START, END, RAIN, PS)
    return space, forcing, make_targets(obs, forcing), cfg, path


@pytest.mark.slow
def test_bootstrap_study_tiny_twin(tmp_path):
    from regv1_jax.analysis import bootstrap_study

    space, forcing, targets, cfg, _ = tiny_problem(tmp_path)
    p0 = space.prior_values(jnp.float64).replace(r_V=jnp.asarray(0.15))
    res = bootstrap_study(space, p0, forcing, targets, cfg, ["r_V", "K_V"], B=48, chunk=32,
                          planting_start=PS, block_length=2)
    assert res.replicates.shape == (48, 5) and res.series.shape[0] == 48
    assert res.point_refit_codes == [STAGE_CODES["ok"]]
    assert res.status_counts.get(0, 0) >= 40
    lo, hi = res.intervals["r_V"]["percentile"]
    assert lo < 0.15 < hi
    blo, bhi = res.intervals["r_V"]["BCa"]
    assert np.isfinite(blo) and blo < bhi
    band_lo, band_hi = res.band()
    assert np.all(band_lo[0] <= res.point_series[0] + 1e-9)


@pytest.mark.slow
def test_sharded_equals_unsharded(tmp_path):
    """The same study split over 4 host devices (a subprocess: the flag must precede jax)
    equals the one-device study of this process (the shapes of the tiny-twin test, so its
    compiled batch is reused when both run)."""
    from helpers import run_on_cpu_devices

    from regv1_jax.analysis import bootstrap_study

    space, forcing, targets, cfg, path = tiny_problem(tmp_path)
    p0 = space.prior_values(jnp.float64).replace(r_V=jnp.asarray(0.15))
    kw = dict(B=48, chunk=32, planting_start=PS, block_length=2)
    out = tmp_path / "sharded.npz"
    code = f"""
import sys, jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, "{Path(__file__).resolve().parent}")
import numpy as np, jax.numpy as jnp
from pathlib import Path
from test_bootstrap import tiny_problem, PS
from regv1_jax.cli import enable_cache
from regv1_jax.analysis import bootstrap_study
enable_cache()
assert len(jax.devices()) == 4
space, forcing, t, cfg, _ = tiny_problem(Path("{tmp_path}"))
p0 = space.prior_values(jnp.float64).replace(r_V=jnp.asarray(0.15))
a = bootstrap_study(space, p0, forcing, t, cfg, ["r_V", "K_V"], devices=jax.devices(),
                    {", ".join(f"{k}={v!r}" for k, v in kw.items())})
np.savez("{out}", reps=a.replicates, status=a.status, series=a.series)
print("SHARDED OK")
"""
    run_on_cpu_devices(code)
    b = bootstrap_study(space, p0, forcing, targets, cfg, ["r_V", "K_V"],
                        devices=jax.devices()[:1], **kw)
    with np.load(out) as z:
        np.testing.assert_allclose(z["reps"], b.replicates, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(z["series"], b.series, rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(z["status"], b.status)


@pytest.mark.slow
def test_cli_bootstrap_end_to_end(tmp_path):
    from click.testing import CliRunner

    from regv1_jax.cli import main

    _, _, _, cfg, path = tiny_problem(tmp_path)
    conf = tmp_path / "cfg.json"
    # the tiny problem of the library tests above (r_V and K_V in one stage): no global
    # search, so no basin stage of 12 parameters that 15 LM steps would not converge
    conf.write_text(json.dumps({"stages": [{"name": "a", "free": ["r_V", "K_V"],
                                            "variables": ["veg_cover_%"]}],
                                "n_starts": 1, "lm_steps": 15, "prior_weight": 0.0,
                                "method": "rk4", "steps_per_year": 4, "holdout": None,
                                "screen": 0}))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["bootstrap", "--site", "bs-synthetic", "--data", str(path),
                                    "--region", "LoessPlateau", "--config", str(conf),
                                    "--out", str(out), "--B", "24", "--block-length", "2",
                                    "--chunk", "32"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "bootstrap.json").read_text())
    assert doc["B"] == 24 and "r_V" in doc["intervals"]
    assert (out / "bootstrap_params.csv").exists() and (out / "bootstrap_bands.png").exists()
    # The main job with --uncertainty: bootstrap CI_95 beside the local one, bands, report.
    out2 = tmp_path / "cal"
    res = CliRunner().invoke(main, ["calibrate", "--site", "bs-synthetic", "--data", str(path),
                                    "--region", "LoessPlateau", "--config", str(conf),
                                    "--out", str(out2), "--uncertainty", "--B", "24",
                                    "--block-length", "2", "--chunk", "32"])
    assert res.exit_code == 0, res.output
    pj = json.loads((out2 / "params.json").read_text())["LoessPlateau"]["r_V"]
    assert "CI_95_local" in pj and "bootstrap" in pj["CI_method"]
    assert pj["CI_95"] == pj["CI_95_bootstrap_BCa"] or pj["CI_95"] == pj[
        "CI_95_bootstrap_percentile"]
    fit = (out2 / "fit.csv").read_text().splitlines()[0]
    assert "boot_lo_2.5" in fit and "boot_hi_97.5" in fit
    html = (out2 / "report.html").read_text()
    assert "Bootstrap uncertainty" in html and "data:image/png;base64" in html
    assert (out2 / "bootstrap.json").exists()
    assert not (tmp_path / "cal.bootstrap_chunks").exists()
    # ... and the profiles of the thresholds and the identifiability (data rows, replicates).
    prof = json.loads((out2 / "profile" / "profile.json").read_text())
    assert [p["name"] for p in prof["profiles"]] == ["theta_star", "SOM_star"]
    ident = json.loads((out2 / "identify" / "identify.json").read_text())
    assert len(ident["results"]) == 2, ident.keys()
    assert "Profile likelihood" in html and "Identifiability" in html
    bad = CliRunner().invoke(main, ["bootstrap", "--site", "bs-synthetic", "--data",
                                    str(path), "--region", "LoessPlateau", "--out",
                                    str(tmp_path / "o2"), "--block-length", "zero"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
