"""Sobol' indices (against SALib and analytic functions), DGSM bounds, the streaming
evaluator (chunks, resume, sharding) and the ``regv1 sobol`` command on a small study."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import run_on_cpu_devices

import regv1_jax as r
from regv1_jax.analysis import (
    ChunkStore,
    QoIContext,
    dgsm,
    evaluate,
    make_qoi,
    map_chunks,
    saltelli_base,
    saltelli_matrix,
    sobol_indices,
    sobol_study,
)

ROOT = Path(__file__).resolve().parents[1]

# Ishigami (a = 7, b = 0.1) on [-pi, pi]^3: analytic indices.
A_ISH, B_ISH = 7.0, 0.1
_V1 = 0.5 * (1 + B_ISH * math.pi**4 / 5) ** 2
_V2 = A_ISH**2 / 8
_V13 = 8 * B_ISH**2 * math.pi**8 / 225
_V = _V1 + _V2 + _V13
ISH_S1 = np.array([_V1, _V2, 0.0]) / _V
ISH_ST = np.array([_V1 + _V13, _V2, _V13]) / _V
ISH_S13 = _V13 / _V


def ishigami(x):
    return (jnp.sin(x[..., 0]) + A_ISH * jnp.sin(x[..., 1]) ** 2
            + B_ISH * x[..., 2] ** 4 * jnp.sin(x[..., 0]))


def ishigami_unit(u):
    return ishigami(-math.pi + 2 * math.pi * u)


G_A = np.array([0.0, 1.0, 4.5, 9.0, 99.0, 99.0])


def g_function(u):
    return jnp.prod((jnp.abs(4 * u - 2) + G_A) / (1 + G_A), axis=-1)


def g_indices():
    Vi = 1 / (3 * (1 + G_A) ** 2)
    V = np.prod(1 + Vi) - 1
    ST = np.array([Vi[i] * np.prod(np.delete(1 + Vi, i)) for i in range(len(G_A))]) / V
    return Vi / V, ST, np.outer(Vi, Vi) / V


def test_sample_matrix_and_indices_equal_salib():
    from SALib.analyze import sobol as sa
    from SALib.sample import sobol as ss

    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[0, 1]] * 3}
    for second in (True, False):
        X_salib = ss.sample(problem, 256, calc_second_order=second, seed=7)
        X = saltelli_matrix(saltelli_base(256, 3, seed=7), second)
        np.testing.assert_array_equal(X, X_salib)
        Y = np.asarray(ishigami_unit(jnp.asarray(X)))
        ref = sa.analyze(problem, Y, calc_second_order=second, seed=1)
        got = sobol_indices(Y, 3, second_order=second)
        np.testing.assert_allclose(got.S1, ref["S1"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got.ST, ref["ST"], rtol=0, atol=1e-10)
        if second:
            iu = np.triu_indices(3, 1)
            np.testing.assert_allclose(got.S2[iu], ref["S2"][iu], rtol=0, atol=1e-10)
            # Bootstrap half-widths: same estimator, other resamples -> same size.
            np.testing.assert_allclose(got.S1_conf, ref["S1_conf"], rtol=0.35)
        assert np.all(got.S1_lo <= got.S1) and np.all(got.S1 <= got.S1_hi)


def test_ishigami_converges_to_analytic():
    N = 1 << 14
    X = saltelli_matrix(saltelli_base(N, 3, seed=3), True)
    s = sobol_indices(ishigami_unit(jnp.asarray(X)), 3, second_order=True)
    np.testing.assert_allclose(s.S1, ISH_S1, atol=0.02)
    np.testing.assert_allclose(s.ST, ISH_ST, atol=0.02)
    assert abs(s.S2[0, 2] - ISH_S13) < 0.03
    assert abs(s.S2[0, 1]) < 0.03 and abs(s.S2[1, 2]) < 0.03
    # The 95% percentile intervals hold the truth (loosely: QMC errors are below MC's).
    assert np.all(s.ST_lo - 0.01 <= ISH_ST) and np.all(ISH_ST <= s.ST_hi + 0.01)


def test_g_function_converges_to_analytic():
    N = 1 << 14
    X = saltelli_matrix(saltelli_base(N, 6, seed=5), True)
    s = sobol_indices(g_function(jnp.asarray(X)), 6, second_order=True)
    S1, ST, S2 = g_indices()
    np.testing.assert_allclose(s.S1, S1, atol=0.02)
    np.testing.assert_allclose(s.ST, ST, atol=0.02)
    iu = np.triu_indices(6, 1)
    np.testing.assert_allclose(s.S2[iu], S2[iu], atol=0.03)


def test_failed_blocks_are_dropped():
    N = 256
    X = saltelli_matrix(saltelli_base(N, 3, seed=7), False)
    Y = np.asarray(ishigami_unit(jnp.asarray(X)))
    ok = np.ones(N, bool)
    ok[[3, 100]] = False
    Yb = Y.copy()
    Yb[3 * 5 + 2] = np.nan  # a failed row in block 3
    keep = np.repeat(ok, 5)
    ref = sobol_indices(Y[keep], 3, second_order=False)
    got = sobol_indices(np.where(np.isfinite(Yb), Yb, 0.0), 3, second_order=False, ok=ok)
    np.testing.assert_allclose(got.S1, ref.S1, atol=1e-12)
    assert got.n_blocks == N - 2
    with pytest.raises(ValueError, match="constant"):
        sobol_indices(np.ones(5 * 8), 3, second_order=False)


def test_dgsm_bounds_ishigami_total_indices():
    U = saltelli_base(4096, 3, seed=1)[:, :3]
    res = dgsm(ishigami_unit, U, np.full(3, 2 * math.pi), _V)
    rev = dgsm(ishigami_unit, U, np.full(3, 2 * math.pi), _V, mode="reverse")
    np.testing.assert_allclose(rev.nu, res.nu, rtol=1e-12)
    # nu_1 = E[cos^2 x1 (1 + b x3^4)^2] = 0.5 E[(1 + b x3^4)^2]
    nu1 = 0.5 * (1 + 2 * B_ISH * math.pi**4 / 5 + B_ISH**2 * math.pi**8 / 9)
    np.testing.assert_allclose(res.nu[0], nu1, rtol=0.02)
    assert np.all(ISH_ST <= res.bound)


@pytest.fixture(scope="module")
def loess():
    space = r.load_param_space("LoessPlateau")
    f = r.make_forcing(1995, 2005, rainfall=450.0, intensity=1.0,
                       psi_plant=r.grain_for_green(1995, 2005))
    ctx = QoIContext(1995, 2005, planting_start=1999, MAP_mm=450.0)
    return space, f, ctx


def test_qois_match_direct_definitions(loess):
    space, f, ctx = loess
    p = space.sample_prior(jax.random.PRNGKey(0), 8, dtype=jnp.float64)
    sim = r.simulate_ensemble(p, f)  # = vmap of simulate(method="rk4"): test_ensemble
    years = np.arange(1995, 2006)
    V = np.asarray(sim.V)
    for name, want in [("V:2003", V[:, 8]), ("V:2000-2004", V[:, 5:10].mean(1)),
                       ("runoff_decrease", np.asarray(sim.runoff)[:, years < 1999].mean(1)
                        - np.asarray(sim.runoff)[:, years >= 2002].mean(1))]:
        ev = evaluate(p, f, make_qoi(name, ctx), chunk=4)
        np.testing.assert_allclose(ev.values, want, rtol=1e-10, err_msg=name)
        assert np.all(ev.status == 0)
    soc = evaluate(p, f, make_qoi("soc_sequestration", ctx), chunk=4).values
    C = 10 * np.sum(np.asarray(sim.SOM_layers)[:, :, :2] * np.asarray(p.rho_b)[:, None, None]
                    * np.array([0.1, 0.1]), axis=-1) / 0.1724  # Mg C/ha, 0-20 cm
    np.testing.assert_allclose(soc, (C[:, -1] - C[:, 3]) / 7, rtol=1e-10)
    wy = evaluate(p, f, make_qoi("water_yield_decrease", ctx), chunk=4).values
    assert np.all(np.isfinite(wy))
    with pytest.raises(ValueError, match="unknown column"):
        make_qoi("X:2000", ctx)
    with pytest.raises(ValueError, match="outside the simulated years"):
        make_qoi("V:2030", ctx)
    with pytest.raises(ValueError, match="unknown quantity"):
        make_qoi("nonsense", ctx)
    assert make_qoi("V_crit", ctx).scenarios == ()  # evaluated in a slow test


@pytest.mark.slow
def test_v_crit_qoi_equals_equilibria(loess):
    space, f, ctx = loess
    p = space.sample_prior(jax.random.PRNGKey(1), 3, dtype=jnp.float64)
    ev = evaluate(p, f, make_qoi("V_crit", ctx))
    for i in range(3):
        q = jax.tree_util.tree_map(lambda x: x[i], p)
        e = r.equilibria(q, r.Climate(450.0, 1.0, 0.0), n_grid=128)
        want = float(e.V_crit)
        got = ev.values[i]
        assert (np.isnan(want) and ev.status[i] != 0) or abs(got - want) < 1e-12


def test_streaming_store_and_resume(loess, tmp_path):
    space, f, ctx = loess
    p = space.sample_prior(jax.random.PRNGKey(2), 12, dtype=jnp.float64)
    q = make_qoi("V:2005", ctx)
    full = evaluate(p, f, q, chunk=4)
    np.testing.assert_allclose(full.values, np.asarray(r.simulate_ensemble(p, f).V[:, -1]),
                               rtol=1e-12)
    store = ChunkStore(tmp_path, {"study": "t"}, 12, 4)
    a = evaluate(p, f, q, chunk=4, store=store)
    np.testing.assert_allclose(a.values, full.values, rtol=1e-12)
    assert sorted(x.name for x in tmp_path.glob("chunk_*.npz")) == [
        "chunk_000000.npz", "chunk_000001.npz", "chunk_000002.npz"]
    # Interrupted after chunk 0: the resumed run computes chunks 1, 2 only.
    (tmp_path / "chunk_000001.npz").unlink()
    (tmp_path / "chunk_000002.npz").unlink()
    calls = []

    def fn(x):
        calls.append(x)
        return jnp.zeros(1), jnp.zeros(1, jnp.int32)

    ev = map_chunks(fn, lambda lo, hi: lo, 12, chunk=4, store=store, resume=True)
    assert calls == [4, 8] and ev.chunks_resumed == 1
    np.testing.assert_allclose(ev.values[:4], full.values[:4], rtol=1e-12)
    with pytest.raises(ValueError, match="other settings"):
        ChunkStore(tmp_path, {"study": "other"}, 12, 4).open(resume=True)


def test_model_sobol_smoke_and_dgsm_bound(loess):
    space, f, ctx = loess
    s = sobol_study(space, f, make_qoi("V:2005", ctx), names=("r_V", "K_V", "theta_star"),
                    N=64, second_order=True, dtype=jnp.float64, chunk=512, dgsm_n=32)
    i = s.indices
    assert s.n_rows == 64 * 8 and s.failed_blocks == 0
    assert np.all(np.isfinite(i.S1)) and np.all(np.isfinite(i.ST))
    assert np.all(i.ST > -0.05) and np.sum(i.S1) < 1.2
    # K_V (the carrying capacity) matters for the 2005 cover.
    assert i.ST[1] > 0.05
    # DGSM bound, with slack for the small sample.
    assert np.all(i.ST <= 1.5 * s.dgsm.bound + 0.05), (i.ST, s.dgsm.bound)


SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import regv1_jax as r
from regv1_jax.analysis import QoIContext, evaluate, make_qoi
assert len(jax.devices()) == 4
space = r.load_param_space("LoessPlateau")
f = r.make_forcing(1995, 2005, rainfall=450.0, psi_plant=r.grain_for_green(1995, 2005))
q = make_qoi("runoff_decrease", QoIContext(1995, 2005, 1999, 450.0))
p = space.sample_prior(jax.random.PRNGKey(4), 2 * 4100, dtype=jnp.float64)
four = evaluate(p, f, q, chunk=4100)
one = evaluate(p, f, q, chunk=4100, devices=jax.devices()[:1])
np.testing.assert_allclose(four.values, one.values, rtol=1e-12, atol=1e-12)
np.testing.assert_array_equal(four.status, one.status)
print("SHARDED OK")
"""


def test_sharded_evaluation_equals_unsharded():
    run_on_cpu_devices(SHARDED)


def test_cli_sobol_writes_tables_and_rejects_bad_input(tmp_path):
    from click.testing import CliRunner

    from regv1_jax.cli import main

    out = tmp_path / "s"
    args = ["sobol", "--region", "LoessPlateau", "--qoi", "V:2005", "--params-subset",
            "K_V,theta_star", "--n", "16", "--second-order", "--start", "1995", "--end",
            "2005", "--chunk", "64", "--resamples", "20", "--quiet", "--dtype", "float64",
            "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "sobol.json").read_text())
    assert doc["model_runs"] == 16 * 6 and doc["failed_samples"] == 0
    assert doc["qoi"]["units"] == "fraction" and doc["sampling"]["K_V"]["lower"] > 0
    import pandas as pd

    t = pd.read_csv(out / "sobol.csv")
    assert list(t.columns) == ["parameter", "S1", "S1_lo", "S1_hi", "ST", "ST_lo", "ST_hi"]
    assert len(pd.read_csv(out / "sobol_s2.csv")) == 1
    assert (out / "sobol.png").exists() and (out / "manifest.json").exists()
    assert not (tmp_path / "s.chunks").exists()
    # --resume with nothing stored computes everything (resuming: test_streaming_...).
    res = CliRunner().invoke(main, args[:-1] + [str(tmp_path / "s2"), "--resume"])
    assert res.exit_code == 0, res.output
    t2 = pd.read_csv(tmp_path / "s2" / "sobol.csv")
    np.testing.assert_allclose(t2["ST"], t["ST"], rtol=1e-12)
    for bad, msg in [(["--n", "24"], "power of two"), (["--qoi", "Q:2000"], "unknown column"),
                     (["--params-subset", "K_V,nope"], "unknown parameter")]:
        a = list(args)
        a[a.index(bad[0]) + 1] = bad[1]
        res = CliRunner().invoke(main, a[:-1] + [str(tmp_path / "bad")])
        assert res.exit_code != 0 and msg in res.output and "Traceback" not in res.output
