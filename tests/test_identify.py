"""Identifiability (``regv1_jax.analysis.identify_*``) on constructed cases with known
answers: a linear model with two collinear columns (VIF 1 / (1 - rho^2), sloppy direction
(1, -1, 0) / sqrt 2 of J^T J) and a Gaussian sample with a known covariance; and the
replicates file contract."""

import numpy as np
import pytest

import regv1_jax as r
from regv1_jax.analysis import VIF_FLAG, identify_sample, read_replicates
from regv1_jax.fit import column_vif, information_eigen
from regv1_jax.report import write_identify

RHO = 0.95
NAMES = ("c_E", "omega_E", "b_V")  # linear prior and linear transform: no rescaling


def _design(n=50, seed=0):
    """Centred orthonormal a, b, c; columns a, rho a + sqrt(1 - rho^2) b, c."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, 3))
    M -= M.mean(axis=0)
    Q, _ = np.linalg.qr(M)
    a, b, c = Q.T
    return np.column_stack([a, RHO * a + np.sqrt(1 - RHO**2) * b, c])


def test_linear_model_vif_and_sloppy_direction():
    J = _design()
    vif = column_vif(J)
    np.testing.assert_allclose(vif, [1 / (1 - RHO**2), 1 / (1 - RHO**2), 1.0], rtol=1e-10)
    # J^T J = [[1, rho, 0], [rho, 1, 0], [0, 0, 1]]: eigenvalues 1 - rho, 1, 1 + rho.
    lam, V, weak, not_id = information_eigen(J.T @ J)
    np.testing.assert_allclose(lam, [1 - RHO, 1.0, 1 + RHO], atol=1e-12)
    v = V[:, 0] * np.sign(V[0, 0])
    np.testing.assert_allclose(v, [2**-0.5, -(2**-0.5), 0.0], atol=1e-10)
    assert not weak.any() and not not_id.any()
    # Exactly collinear: infinite VIF, a zero-information direction, both not identified.
    J2 = np.column_stack([J[:, 0], 2 * J[:, 0], J[:, 2]])
    assert np.isinf(column_vif(J2)[:2]).all() and column_vif(J2)[2] == pytest.approx(1.0)
    lam, V, weak, not_id = information_eigen(J2.T @ J2)
    # Null direction (2, -1, 0) / sqrt 5: loading 0.8 on the first column (> 0.5), 0.2.
    assert weak[0] and list(not_id) == [True, False, False]


def test_sample_correlation_vif_and_sloppy_direction():
    space = r.load_param_space("LoessPlateau")
    sd = np.array([space.spec(n).prior_sd for n in NAMES])
    mean = np.array([space.spec(n).value for n in NAMES])
    S = 0.5  # sample sd = half the prior sd (keeps b_V inside its bounds)
    R = np.array([[1, RHO, 0], [RHO, 1, 0], [0, 0, 1]])
    rng = np.random.default_rng(1)
    X = mean + S * sd * (rng.standard_normal((20000, 3)) @ np.linalg.cholesky(R).T)
    ident = identify_sample(X, NAMES, space)
    assert ident.names == NAMES and ident.n == 20000
    assert ident.corr[0, 1] == pytest.approx(RHO, abs=0.005)
    np.testing.assert_allclose(ident.vif, [1 / (1 - RHO**2)] * 2 + [1.0], rtol=0.05)
    # Information in prior units = inverse of (S^2 R): smallest 1 / (S^2 (1 + rho)) along
    # (1, 1, 0) / sqrt 2 (the direction the sample spreads along).
    assert ident.information[0] == pytest.approx(1 / (S**2 * (1 + RHO)), rel=0.05)
    assert ident.information[-1] == pytest.approx(1 / (S**2 * (1 - RHO)), rel=0.05)
    top = ident.sloppy(1)[0]
    assert list(top["loadings"])[:2] == ["c_E", "omega_E"] or \
        list(top["loadings"])[:2] == ["omega_E", "c_E"]
    np.testing.assert_allclose([top["loadings"][n] for n in NAMES], [2**-0.5, 2**-0.5, 0],
                               atol=0.03)
    pairs = [p for p in ident.pairs() if p["flag"]]
    assert [p["pair"] for p in pairs] == [["c_E", "omega_E"]]
    assert ident.vif_flags() == ["c_E", "omega_E"] and 1 / (1 - RHO**2) > VIF_FLAG
    # Rows out of bounds are dropped and counted; a constant column is left out (noted).
    X2 = np.column_stack([X[:200], np.full(200, 0.3)])
    X2[0, 0] = -1.0
    ident2 = identify_sample(X2, NAMES + ("f_1",), space)
    assert ident2.n == 199 and ident2.names == NAMES
    assert any("dropped" in n for n in ident2.notes) and any("f_1" in n for n in ident2.notes)


def test_replicates_file_contract(tmp_path):
    space = r.load_param_space("LoessPlateau")
    rng = np.random.default_rng(2)
    X = np.column_stack([1.2 + 0.1 * rng.standard_normal(30), 1.1 + 0.1 *
                         rng.standard_normal(30), 0.6 + 0.05 * rng.standard_normal(30)])
    status = np.array(["ok"] * 28 + ["failed", "not_converged"])
    csv = tmp_path / "replicates.csv"
    lines = ["replicate,status," + ",".join(NAMES)]
    lines += [f"{i},{s}," + ",".join(f"{v:.17g}" for v in row)
              for i, (s, row) in enumerate(zip(status, X))]
    csv.write_text("\n".join(lines) + "\n")
    Xc, names, dropped = read_replicates(csv, space)
    assert names == list(NAMES) and dropped == 2
    np.testing.assert_allclose(Xc, X[:28], rtol=1e-15)
    npz = tmp_path / "replicates.npz"
    np.savez(npz, replicates=X, names=np.array(NAMES), status=np.r_[np.zeros(29), 1])
    Xn, names_n, dropped_n = read_replicates(npz, space)
    assert names_n == list(NAMES) and dropped_n == 1 and Xn.shape == (29, 3)
    ident = identify_sample(Xc, names, space, dropped=dropped)
    files = write_identify([ident], tmp_path, {"replicates": str(csv)})
    assert all((tmp_path / f).exists() for f in files)
    import pandas as pd

    sl = pd.read_csv(tmp_path / "sloppy.csv")
    assert list(sl.columns[:4]) == ["source", "direction", "information", "weak"]
    assert np.all(np.diff(sl["information"]) >= 0)
    bad = tmp_path / "bad.csv"
    bad.write_text("replicate,foo\n1,2\n")
    with pytest.raises(ValueError, match="at least two parameters"):
        read_replicates(bad, space)


@pytest.mark.parametrize("args,needle", [
    (["profile", "--param", "no_such"], "unknown parameter 'no_such'"),
    (["profile", "--from-calibration", "{tmp}"], "no params.json"),
    (["identify", "--replicates", "{tmp}/bad.csv"], "at least two parameters"),
    (["identify", "--from-calibration", "{tmp}", "--start", "2000", "--end", "1999"],
     "before --start"),
])
def test_cli_bad_input_is_one_line_before_computing(tmp_path, args, needle):
    from click.testing import CliRunner

    from regv1_jax.cli import main

    (tmp_path / "bad.csv").write_text("replicate,foo\n1,2\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    res = CliRunner().invoke(main, [argv[0], "--site", "Yanhe-basin", "--out",
                                    str(tmp_path / "out"), *argv[1:]])
    assert res.exit_code in (1, 2) and "Error:" in res.output, res.output
    assert "Traceback" not in res.output and needle in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "out").exists()
