import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regv1_jax as r
from regv1_jax import data_path


@pytest.mark.parametrize("region", ["LoessPlateau", "ChihuahuanDesert"])
def test_prior_values_come_from_the_json(region):
    space = r.load_param_space(region)
    seed = json.loads(data_path("priors_seed.json").read_text())[region]
    extra = json.loads(data_path("priors_extra.json").read_text())[region]
    p = space.prior_values()
    for name in r.PARAM_NAMES:
        entry = seed.get(name) or extra[name]
        assert float(getattr(p, name)) == pytest.approx(entry["value"])
        spec = space.spec(name)
        assert (spec.lower, spec.upper) == tuple(entry["CI_95"])
    assert set(r.SEED_PARAM_NAMES) == set(seed)


def test_transform_round_trip_and_bounds():
    space = r.load_param_space("LoessPlateau")
    draws = space.sample_prior(jax.random.PRNGKey(3), 500, dtype=jnp.float64)
    back = space.to_constrained(space.to_unconstrained(draws))
    for name in r.PARAM_NAMES:
        x, y = np.asarray(getattr(draws, name)), np.asarray(getattr(back, name))
        spec = space.spec(name)
        assert np.all((x >= spec.lower) & (x <= spec.upper)), name
        np.testing.assert_allclose(y, x, rtol=1e-9)
    # Any real vector maps inside the bounds.
    u = jax.tree_util.tree_map(lambda x: 50.0 * jnp.sign(x - jnp.mean(x)),
                               space.to_unconstrained(draws))
    far = space.to_constrained(u)
    for name in r.PARAM_NAMES:
        spec = space.spec(name)
        x = np.asarray(getattr(far, name))
        assert np.all((x >= spec.bound_lower) & (x <= spec.bound_upper)), name
    # The transform reaches well outside the prior CI_95 (bounds are physical, not the CI).
    assert float(np.max(np.asarray(far.K_V))) > 0.99
    assert float(np.max(np.asarray(far.r_V))) > 1.5


@pytest.mark.parametrize("region", ["LoessPlateau", "ChihuahuanDesert"])
def test_physical_bounds_stated_with_reason_and_contain_the_prior(region):
    space = r.load_param_space(region)
    for spec in space.specs:
        assert spec.bounds_reason, spec.name
        assert spec.bound_lower <= spec.lower < spec.upper <= spec.bound_upper, spec.name
    assert space.spec("K_V").bounds[1] == 1.0 and space.spec("K_V").bounds[0] > 0
    for share in ("b_V", "b_eng", "e_s", "f_0", "V0"):
        assert space.spec(share).bounds == (0.0, 1.0), share


def test_override_outside_ci_warns_outside_bounds_errors(tmp_path):
    space = r.load_param_space("LoessPlateau")
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"K_V": {"value": 0.9}}))
    with pytest.warns(r.ParameterWarning, match="outside its prior CI_95"):
        p = space.override(f)
    assert float(p.K_V) == pytest.approx(0.9)
    f.write_text(json.dumps({"K_V": {"value": 1.2}}))
    with pytest.raises(r.ParameterError, match=r"physical bounds \[0.01, 1.0\]"):
        space.override(f)


def test_scales_log_for_wide_positive_intervals():
    space = r.load_param_space("LoessPlateau")
    assert space.spec("k_E").scale == "log"  # [1, 20]
    assert space.spec("K_V").scale == "linear"  # [0.6, 0.8]


def test_log_prior_peaks_at_the_value():
    space = r.load_param_space("LoessPlateau")
    p = space.prior_values()
    lp0 = space.log_prior(p)
    assert float(lp0) == pytest.approx(0.0, abs=1e-12)
    spec = space.spec("r_V")
    q = p.replace(r_V=spec.upper)
    # The CI_95 edge is 1.96 sd away on the parameter's scale (mean at value, not the centre).
    assert float(space.log_prior(q)) < 0.0


def test_select_pack_unpack_freezes_the_rest():
    space = r.load_param_space("LoessPlateau")
    p = space.prior_values(jnp.float64)
    free = space.select("r_V", "K_V")
    u = free.pack(p)
    assert u.shape == (2,)
    q = free.unpack(u + 0.3, p)
    assert float(q.r_V) != pytest.approx(float(p.r_V))
    for name in r.PARAM_NAMES:
        if name not in ("r_V", "K_V"):
            assert float(getattr(q, name)) == float(getattr(p, name))
    np.testing.assert_allclose(free.pack(free.unpack(u, p)), u, rtol=1e-10)

    def f(vec, base):
        q = free.unpack(vec, base)
        return q.r_V * q.K_V + q.a1

    g_vec, g_base = jax.grad(f, argnums=(0, 1))(u, p)
    assert np.all(np.asarray(g_vec) != 0)
    assert float(g_base.a1) == 0.0  # frozen: gradient stopped


def test_select_unknown_or_repeated_parameter():
    space = r.load_param_space("LoessPlateau")
    with pytest.raises(r.ParameterError, match="unknown parameter 'r_X'"):
        space.select("r_X")
    with pytest.raises(r.ParameterError, match="twice"):
        space.select("r_V", "r_V")


def _write(tmp_path, region_block, name="bad.json", region="LoessPlateau"):
    seed = json.loads(data_path("priors_seed.json").read_text())
    extra = json.loads(data_path("priors_extra.json").read_text())
    seed[region] = region_block(seed[region])
    path = tmp_path / name
    path.write_text(json.dumps(seed))
    extra_path = tmp_path / "extra.json"
    extra_path.write_text(json.dumps(extra))
    return [path, extra_path]


def _drop(block, key):
    block = dict(block)
    block.pop(key)
    return block


def _set(block, key, **kw):
    block = dict(block)
    block[key] = {**block[key], **kw}
    return block


@pytest.mark.parametrize(
    "edit, pattern",
    [
        (lambda b: _drop(b, "lambda1"),
         r"region 'LoessPlateau': missing parameter\(s\) \['lambda1'\]"),
        (lambda b: _set(b, "a2", value=0.5),
         r"'a2' in bad.json: value 0.5 lies outside its CI_95"),
        (lambda b: _set(b, "K_V", CI_95=[0.8, 0.6]),
         r"'K_V' in bad.json: CI_95 low \(0.8\) must be below high"),
        (lambda b: _set(b, "K_V", CI_95=[0.7, 0.7], value=0.7), r"'K_V' in bad.json: CI_95 low"),
        (lambda b: _set(b, "r_V", units="day^-1"), r"'r_V' in bad.json: unknown units 'day\^-1'"),
        (lambda b: _set(b, "r_V", value="fast"),
         r"'r_V' in bad.json: value and CI_95 must be numbers"),
        (lambda b: {**b, "r_W": {"value": 1, "units": "yr^-1", "CI_95": [0, 2]}},
         r"'r_W' in bad.json: unknown parameter"),
        (lambda b: _set(b, "K_V", bounds=[0.65, 1.0]),
         r"'K_V' in bad.json: CI_95 \[0.6, 0.8\] must lie inside the bounds"),
        (lambda b: _set(b, "K_V", bounds="wide"), r"'K_V' in bad.json.*bounds must be two"),
    ],
)
def test_bad_prior_files_raise_clear_errors(tmp_path, edit, pattern):
    files = _write(tmp_path, edit)
    with pytest.raises(r.ParameterError, match=pattern) as info:
        r.load_param_space("LoessPlateau", files)
    assert "LoessPlateau" in str(info.value)


def test_unknown_and_partial_regions():
    with pytest.raises(r.ParameterError, match="unknown region 'Sahel'"):
        r.load_param_space("Sahel")
    with pytest.raises(r.ParameterError, match="'Universal' holds cross-site priors only"):
        r.load_param_space("Universal")


def test_override_file(tmp_path):
    space = r.load_param_space("LoessPlateau")
    path = tmp_path / "over.json"
    path.write_text(json.dumps({"LoessPlateau": {"r_V": {"value": 0.15, "units": "yr^-1"}}}))
    p = space.override(path)
    assert float(p.r_V) == pytest.approx(0.15)
    assert float(p.K_V) == pytest.approx(0.70)
    path.write_text(json.dumps({"r_V": {"value": 5.0}}))
    with pytest.raises(r.ParameterError, match=r"'r_V' in over.json: value 5.0 lies outside"):
        space.override(path)
    path.write_text(json.dumps({"ChihuahuanDesert": {"r_V": {"value": 0.05}}}))
    with pytest.raises(r.ParameterError, match="region 'LoessPlateau' not found"):
        space.override(path)
