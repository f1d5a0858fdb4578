"""Tests of the synthetic twin generator (regv1_jax._synthetic) and of data/synthetic/."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import regv1_jax as r
from regv1_jax.fit import (
    COLUMNS,
    DEFAULT_NOISE,
    SOLVER,
    SOURCE_TEXT,
    make_twin,
    synthetic_rainfall,
    twin_forcing,
    write_twin,
)
from regv1_jax.io import DEPTHS, load_sites_registry, read_observations
from regv1_jax.model import ParameterError

REPO = Path(__file__).resolve().parent.parent
SYN = REPO / "data" / "synthetic"
STEMS = ("yanhe", "gushanchuan", "jornada")
LOCATIONS = {
    "yanhe": ("Yanhe-basin-synthetic", "LoessPlateau"),
    "gushanchuan": ("Gushanchuan-synthetic", "LoessPlateau"),
    "jornada": ("Jornada-plot-synthetic", "ChihuahuanDesert"),
}

# A small twin (9 years) for the in-memory tests.
START, END = 1995, 2003
OVERRIDES = {"r_V": 0.10, "K_V": 0.72, "a1": 0.20, "a2": 0.040, "eta1": 6.0, "k_E": 6.0}


def _small(noise=DEFAULT_NOISE, seed=7, depth_every=3):
    rain = synthetic_rainfall(400.0, START, END, seed)
    return make_twin("LoessPlateau", "tiny-twin", OVERRIDES, START, END, rain, 1999,
                     noise=noise, seed=seed, depth_every=depth_every)


@pytest.fixture(scope="module")
def small_pair():
    return _small(), _small()


def test_reproducible_from_seed(small_pair):
    (a, meta_a), (b, meta_b) = small_pair
    pd.testing.assert_frame_equal(a, b)
    assert meta_a == meta_b
    c, _ = _small(seed=8)
    assert not a["veg_cover_%"].equals(c["veg_cover_%"])
    assert list(a.columns) == list(COLUMNS)


def test_noisefree_equals_simulation():
    frame, meta = _small(noise=None)
    assert meta["noise"] is None and meta["synthetic"] is True
    space = r.load_param_space("LoessPlateau")
    p = space.prior_values(jnp.float64).replace(
        **{k: jnp.asarray(v, jnp.float64) for k, v in OVERRIDES.items()})
    f = twin_forcing(START, END, synthetic_rainfall(400.0, START, END, 7), 1999)
    sim = r.simulate(p, f, rtol=SOLVER["rtol"], atol=SOLVER["atol"],
                     max_steps=SOLVER["max_steps"])
    main = frame[frame["depth_cm"] == ""]
    assert list(main["year"]) == list(range(START, END + 1))
    np.testing.assert_array_equal(main["veg_cover_%"].to_numpy(), 100.0 * np.asarray(sim.V))
    np.testing.assert_array_equal(main["SOM_%"].to_numpy(), np.asarray(sim.SOM))
    np.testing.assert_array_equal(main["runoff_mm"].to_numpy(), np.asarray(sim.runoff))
    np.testing.assert_array_equal(main["erosion_t/ha"].to_numpy(), np.asarray(sim.erosion))
    np.testing.assert_array_equal(main["theta_m3/m3"].to_numpy(), np.asarray(sim.theta))
    np.testing.assert_array_equal(main["rainfall_mm"].to_numpy(), np.asarray(f.rainfall))
    layers = np.asarray(sim.SOM_layers)
    for j, depth in enumerate(DEPTHS):
        rows = frame[frame["depth_cm"] == depth]
        assert list(rows["year"]) == [1995, 1998, 2001]
        idx = rows["year"].to_numpy() - START
        np.testing.assert_array_equal(rows["SOM_%"].to_numpy(), layers[idx, j])
        assert rows[["veg_cover_%", "runoff_mm", "erosion_t/ha"]].isna().all().all()


def test_noise_is_as_stated(small_pair):
    (noisy, _), _ = small_pair
    clean, _ = _small(noise=None)
    z = np.random.default_rng(7).standard_normal((END - START + 1, 8))
    m_n, m_c = noisy["depth_cm"] == "", clean["depth_cm"] == ""
    cover = np.clip(clean.loc[m_c, "veg_cover_%"].to_numpy() + 2.0 * z[:, 0], 0, 100)
    np.testing.assert_allclose(noisy.loc[m_n, "veg_cover_%"].to_numpy(), cover, rtol=1e-15)
    runoff = clean.loc[m_c, "runoff_mm"].to_numpy() * np.exp(0.10 * z[:, 5])
    np.testing.assert_allclose(noisy.loc[m_n, "runoff_mm"].to_numpy(), runoff, rtol=1e-15)
    assert (noisy["source"] == SOURCE_TEXT).all()


def test_written_twin_round_trips(tmp_path, small_pair):
    (frame, meta), _ = small_pair
    csv, js = tmp_path / "t.csv", tmp_path / "t.json"
    write_twin(frame, meta, csv, js)
    obs = read_observations(csv)["tiny-twin"]
    main = frame[frame["depth_cm"] == ""]
    np.testing.assert_array_equal(obs.values["veg_cover_%"], main["veg_cover_%"].to_numpy())
    np.testing.assert_array_equal(obs.values["SOM_%"], main["SOM_%"].to_numpy())
    assert obs.count()["SOM_0-10_%"] == 3
    assert json.loads(js.read_text())["true_params"] == meta["true_params"]


def test_true_value_outside_bounds_rejected():
    with pytest.raises(ParameterError, match="physical bounds"):
        make_twin("LoessPlateau", "x", {"r_V": 5.0}, START, END, 400.0, 1999)
    with pytest.raises(ParameterError, match="unknown"):
        make_twin("LoessPlateau", "x", {"nope": 1.0}, START, END, 400.0, 1999)


# --- the bundled files -------------------------------------------------------------------


@pytest.mark.parametrize("stem", STEMS)
def test_files_load_and_metadata(stem):
    location, region = LOCATIONS[stem]
    meta = json.loads((SYN / f"{stem}_synthetic.json").read_text(encoding="utf-8"))
    assert meta["synthetic"] is True
    assert meta["region"] == region and meta["location"] == location
    assert set(meta["true_params"]) == set(r.PARAM_NAMES)
    assert meta["noise"] is not None and "seed" in meta and "generator_command" in meta
    space = r.load_param_space(region)
    for name, value in meta["true_params"].items():
        spec = space.spec(name)
        assert spec.lower <= value <= spec.upper, (stem, name, value)
        if name not in meta["true_params_offsets"]:
            assert value == spec.value
    assert len(meta["true_params_offsets"]) >= 6
    for name in (f"{stem}_synthetic.csv", f"{stem}_synthetic_noisefree.csv"):
        obs = read_observations(SYN / name)
        assert list(obs) == [location]
        o = obs[location]
        assert list(o.years) == list(range(1995, 2016))
        np.testing.assert_array_equal(o.values["rainfall_mm"], meta["forcing"]["rainfall_mm"])
        for key in ("veg_cover_%", "SOM_%", "runoff_mm", "erosion_t/ha", "theta_m3/m3"):
            assert o.masks[key].all(), (name, key)
        assert o.count()["SOM_20-40_%"] == 7
        assert all("synthetic" in s and "not field data" in s for s in o.sources)


def test_noisefree_file_regenerates_from_metadata():
    """The noise-free Yanhe file is the model output of the metadata's truth and forcing."""
    meta = json.loads((SYN / "yanhe_synthetic.json").read_text(encoding="utf-8"))
    fc = meta["forcing"]
    frame, _ = make_twin(meta["region"], meta["location"], {
        k: v["true"] for k, v in meta["true_params_offsets"].items()},
        1995, 2015, np.array(fc["rainfall_mm"]), fc["planting_start"],
        psi_plant=np.array(fc["psi_plant"]), noise=None, seed=meta["seed"])
    obs = read_observations(SYN / "yanhe_synthetic_noisefree.csv")[meta["location"]]
    main = frame[frame["depth_cm"] == ""]
    for key in ("veg_cover_%", "SOM_%", "runoff_mm", "erosion_t/ha", "theta_m3/m3"):
        np.testing.assert_allclose(obs.values[key], main[key].to_numpy(), rtol=1e-8)


def test_sites_registry():
    sites = load_sites_registry(SYN / "sites_synthetic.json")
    assert set(sites) == {loc for loc, _ in LOCATIONS.values()}
    for stem, (loc, region) in LOCATIONS.items():
        entry = sites[loc]
        assert entry["synthetic"] is True and entry["region"] == region
        assert (SYN / entry["data_file"]).is_file()
    assert sites["Yanhe-basin-synthetic"]["area_km2"] == 5891
    assert sites["Gushanchuan-synthetic"]["area_km2"] is None
    assert sites["Jornada-plot-synthetic"]["planting_start"] is None
    # The real registry is untouched by the twins.
    assert not set(load_sites_registry()) & set(sites)


def test_long_record_twin_has_gaps_irregular_sampling_and_an_exact_forcing(tmp_path):
    """``long_record_twin``: 110 years, cover surveys 1-6 years apart with the first year
    unobserved and none inside the two survey gaps, a rainfall gap whose years carry the mean
    of the others in the twin's forcing (so a calibration that fills missing rainfall with the
    observed mean sees the twin's own forcing), only cover and rainfall columns, labelled
    synthetic; it reads back through the CSV loader."""
    from regv1_jax.fit import long_record_twin

    frame, meta = long_record_twin()
    cover = meta["sampling"]["cover_years"]
    assert meta["years"] == [1901, 2010] and meta["synthetic"] is True
    assert cover[0] > 1901 and set(np.diff(cover)) <= set(range(1, 22))
    assert len(set(np.diff(cover))) > 2  # irregular
    for a, b in meta["sampling"]["cover_gaps"]:
        assert not any(a <= y <= b for y in cover) and b - a >= 11
    g0, g1 = meta["sampling"]["rainfall_gap"]
    rain = np.asarray(meta["forcing"]["rainfall_mm"])
    years = np.arange(1901, 2011)
    gap = (years >= g0) & (years <= g1)
    np.testing.assert_allclose(rain[gap], np.mean(rain[~gap]), rtol=1e-12)
    assert frame.loc[frame["year"].between(g0, g1), "rainfall_mm"].isna().all()
    for col in ("SOM_%", "runoff_mm", "erosion_t/ha", "theta_m3/m3"):
        assert frame[col].isna().all()
    assert frame["source"].str.contains("synthetic").all()
    path = tmp_path / "long_synthetic.csv"
    write_twin(frame, meta, path)
    obs = read_observations(path)["Desert110-synthetic"]
    assert list(obs.years[obs.masks["veg_cover_%"]]) == cover
    assert np.isclose(np.mean(obs.values["rainfall_mm"][obs.masks["rainfall_mm"]]),
                      np.mean(rain[~gap]))
