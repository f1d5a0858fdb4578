"""Tests of the bundled data files and of the CSV / JSON readers in regv1_jax._data."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest

from regv1_jax import data_dir, data_path
from regv1_jax.io import (
    OBSERVED,
    REQUIRED_COLUMNS,
    DataError,
    Observations,
    load_site,
    load_sites_registry,
    parse_range,
    read_observations,
    read_validation_sites,
)

REPO = Path(__file__).resolve().parent.parent
SEED_NAME = "000_a37f77e0c963f8f2.txt"
HEADER = ",".join(REQUIRED_COLUMNS)

EXTRA_NAMES = (
    "tau_VS tau_SH s_plant Z_r theta_fc theta_wp ET_p e_s c_R gamma omega b_V b_eng k_L c_L "
    "k_E m_E c_E omega_E e_C rho_b f_0 f_1 f_2 m_1 m_2 i_ref m_D k_I V0 SOM0"
).split()
SEED_NAMES = "r_V K_V lambda1 lambda2 theta_star SOM_star a1 a2 eta1".split()


def _seed_text() -> str | None:
    candidates = [
        os.environ.get("REGV1_SEED", ""),
        REPO / "seed" / SEED_NAME,
        REPO / "shared" / "seed" / SEED_NAME,
        REPO.parent / "shared" / "seed" / SEED_NAME,
    ]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c).read_text(encoding="utf-8")
    return None


def _seed_block(text: str, heading: str, lang: str) -> str:
    start = text.index(heading)
    match = re.search(rf"```{lang}\n(.*?)```", text[start:], re.S)
    assert match is not None
    return match.group(1)


def _write(tmp_path: Path, body: str, name: str = "bad_obs.csv") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def _expect_error(path: Path, line: int, column: str) -> DataError:
    with pytest.raises(DataError) as info:
        read_observations(path)
    msg = str(info.value)
    assert path.name in msg
    assert f"line {line}" in msg
    assert column in msg
    return info.value


# --------------------------------------------------------------------------- bundled files


def test_paths():
    assert data_dir() == REPO / "data"
    assert data_path("sites.json").is_file()
    with pytest.raises(FileNotFoundError, match="no_such_file"):
        data_path("no_such_file.csv")


def test_yanhe_round_trip():
    obs = load_site(data_path("loess_plateau_1995_2010.csv"), "Yanhe-basin")
    assert isinstance(obs, Observations)
    np.testing.assert_array_equal(obs.years, [1995, 2000, 2005, 2010])
    assert obs.years.dtype == np.int64
    np.testing.assert_array_equal(obs.values["veg_cover_%"], [28, 31, 45, 55])
    np.testing.assert_array_equal(obs.values["rainfall_mm"], [450, 420, 480, 460])
    np.testing.assert_array_equal(obs.values["runoff_mm"], [90, 84, 70, 58])
    assert not obs.masks["SOM_%"].any() and np.isnan(obs.values["SOM_%"]).all()
    assert not obs.masks["erosion_t/ha"].any() and np.isnan(obs.values["erosion_t/ha"]).all()
    assert set(obs.values) == set(OBSERVED) == set(obs.masks)
    for key in OBSERVED:
        assert obs.values[key].dtype == np.float64 and obs.masks[key].dtype == bool
    assert obs.count()["veg_cover_%"] == 4 and obs.count()["SOM_%"] == 0
    assert obs.location == "Yanhe-basin" and obs.sources == ("",) * 4
    sub = obs.restrict(2000, 2005)
    np.testing.assert_array_equal(sub.years, [2000, 2005])
    np.testing.assert_array_equal(sub.values["veg_cover_%"], [31, 45])
    assert sub.restrict(2020, 2030).years.shape == (0,)
    # a pytree: arrays are leaves, the strings are static
    leaves = jax.tree_util.tree_leaves(obs)
    assert len(leaves) == 1 + 2 * len(OBSERVED)


def test_jornada_round_trip_and_bare_name_lookup():
    table = read_observations("johnson_soil_carbon.csv")  # bare name -> bundled folder
    assert list(table) == ["Jornada-plot"]
    obs = table["Jornada-plot"]
    np.testing.assert_array_equal(obs.years, [2008, 2012, 2016])
    np.testing.assert_array_equal(obs.values["SOM_%"], [0.4, 0.7, 1.0])
    np.testing.assert_array_equal(obs.values["veg_cover_%"], [12, 18, 24])
    assert not obs.masks["runoff_mm"].any()


def test_validation_sites():
    df = read_validation_sites(data_path("validation_sites.csv"))
    assert list(df["site"]) == ["Yanhe", "Gushanchuan"]
    yan = df.iloc[0]
    assert (yan["V_crit_est_%_low"], yan["V_crit_est_%_high"]) == (35.0, 45.0)
    assert (yan["SOM_star_est_%_low"], yan["SOM_star_est_%_high"]) == (1.0, 1.5)
    assert (yan["theta_star_est_low"], yan["theta_star_est_high"]) == (0.16, 0.18)
    assert (int(yan["years_low"]), int(yan["years_high"])) == (1995, 2010)
    assert df["years_low"].dtype == np.int64
    assert list(df["MAP_mm"]) == [400.0, 420.0]
    assert "years" not in df.columns


def test_validation_sites_keep_en_dash():
    raw = data_path("validation_sites.csv").read_text(encoding="utf-8")
    assert "35\u201345" in raw


def test_validation_sites_bad_range(tmp_path):
    path = _write(
        tmp_path,
        "site,MAP_mm,years,V_crit_est_%\nA,400,1995\u20132010,45\u201335\n",
        name="bad_sites.csv",
    )
    with pytest.raises(DataError) as info:
        read_validation_sites(path)
    msg = str(info.value)
    assert "bad_sites.csv" in msg and "line 2" in msg and "V_crit_est_%" in msg


def test_sites_registry():
    sites = load_sites_registry()
    assert "_meta" not in sites
    assert set(sites) == {"Yanhe-basin", "Gushanchuan", "Jornada-plot", "Wuding-Baijiachuan",
                          "Kuye-Wenjiachuan"}
    yan = sites["Yanhe-basin"]
    assert yan["region"] == "LoessPlateau" and yan["MAP_mm"] == 400
    assert yan["area_km2"] == 5891 and yan["planting_start"] == 1999
    assert sites["Jornada-plot"]["region"] == "ChihuahuanDesert"
    # every bundled data file named in the registry holds the site as a location
    for name, site in sites.items():
        if site["data_file"] is not None:
            assert name in read_observations(data_path(site["data_file"]))
    vs = set(read_validation_sites(data_path("validation_sites.csv"))["site"])
    for site in sites.values():
        assert site["validation_site"] is None or site["validation_site"] in vs


def test_priors_seed_is_verbatim():
    text = _seed_text()
    if text is None:
        pytest.skip("seed document not found (set REGV1_SEED)")
    block = _seed_block(text, "## Updated Parameter JSON", "json")
    raw = data_path("priors_seed.json").read_text(encoding="utf-8")
    assert raw == block
    with open(data_path("priors_seed.json"), encoding="utf-8") as fh:
        assert json.load(fh) == json.loads(block)


@pytest.mark.parametrize(
    "name", ["loess_plateau_1995_2010.csv", "johnson_soil_carbon.csv", "validation_sites.csv"]
)
def test_csvs_are_verbatim(name):
    text = _seed_text()
    if text is None:
        pytest.skip("seed document not found (set REGV1_SEED)")
    assert data_path(name).read_text(encoding="utf-8") == _seed_block(text, f"### {name}", "csv")


def test_priors_seed_content():
    with open(data_path("priors_seed.json"), encoding="utf-8") as fh:
        seed = json.load(fh)
    assert set(seed) == {"LoessPlateau", "ChihuahuanDesert", "Universal"}
    for region in ("LoessPlateau", "ChihuahuanDesert"):
        assert set(seed[region]) == set(SEED_NAMES)
        for entry in seed[region].values():
            lo, hi = entry["CI_95"]
            assert lo <= entry["value"] <= hi
    assert seed["LoessPlateau"]["r_V"]["value"] == 0.12
    assert seed["ChihuahuanDesert"]["eta1"]["value"] == 7.0


def test_priors_extra():
    with open(data_path("priors_extra.json"), encoding="utf-8") as fh:
        extra = json.load(fh)
    regions = {k for k in extra if not k.startswith("_")}
    assert regions == {"LoessPlateau", "ChihuahuanDesert"}
    assert "_meta" in extra
    for region in regions:
        assert list(extra[region]) == EXTRA_NAMES
        for name, entry in extra[region].items():
            lo, hi = entry["CI_95"]
            assert lo <= entry["value"] <= hi, (region, name)
            assert lo < hi, (region, name)
            assert isinstance(entry["units"], str) and entry["units"]
            assert entry.get("source") or entry.get("note"), (region, name)
            assert entry["units"] == extra["LoessPlateau"][name]["units"]
    lp = extra["LoessPlateau"]
    assert lp["c_E"]["value"] == pytest.approx(np.log(3.28), abs=0.01)
    assert lp["V0"]["value"] == 0.28 and extra["ChihuahuanDesert"]["SOM0"]["value"] == 0.4
    assert lp["f_0"]["value"] + lp["f_1"]["value"] + lp["f_2"]["value"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- readers


def test_empty_cell_is_masked_not_zero(tmp_path):
    path = _write(tmp_path, f"{HEADER}\n2000,A,,1.0,400,,\n2001,A,30,,0,0,0\n", name="ok.csv")
    obs = load_site(path, "A")
    assert np.isnan(obs.values["veg_cover_%"][0]) and not obs.masks["veg_cover_%"][0]
    assert obs.values["veg_cover_%"][1] == 30 and obs.masks["veg_cover_%"][1]
    # an explicit 0 is an observation, a blank is not
    assert obs.masks["runoff_mm"].tolist() == [False, True]
    assert obs.values["runoff_mm"][1] == 0.0


def test_optional_columns_and_depths(tmp_path):
    body = (
        "year,location,veg_cover_%,SOM_%,rainfall_mm,runoff_mm,erosion_t/ha,depth_cm,"
        "theta_m3/m3,source\n"
        "2000,A,30,0.9,400,20,5,,0.15,survey X\n"
        "2000,A,,1.2,,,,0-10,,survey X\n"
        "2000,A,30,0.8,400,,,10\u201320,,survey Y\n"
        "2000,A,,0.5,,,,20-40,,\n"
        "2003,A,35,,410,,,,,\n"
        "2003,A,,1.4,,,,0-10,,\n"
    )
    obs = load_site(_write(tmp_path, body, name="depths.csv"), "A")
    np.testing.assert_array_equal(obs.years, [2000, 2003])
    assert obs.values["SOM_%"][0] == 0.9 and not obs.masks["SOM_%"][1]
    np.testing.assert_array_equal(obs.values["SOM_0-10_%"], [1.2, 1.4])
    assert obs.values["SOM_10-20_%"][0] == 0.8 and obs.values["SOM_20-40_%"][0] == 0.5
    assert obs.masks["SOM_10-20_%"].tolist() == [True, False]
    assert obs.values["theta_m3/m3"][0] == 0.15
    assert obs.values["rainfall_mm"].tolist() == [400, 410]
    assert obs.sources == ("survey X; survey Y", "")


def test_depth_row_conflict(tmp_path):
    body = (
        f"{HEADER},depth_cm\n"
        "2000,A,30,0.9,400,20,5,\n"
        "2000,A,30,1.2,450,,,0-10\n"
    )
    err = _expect_error(_write(tmp_path, body), 3, "rainfall_mm")
    assert "line 2" in str(err)


def test_bad_depth(tmp_path):
    _expect_error(_write(tmp_path, f"{HEADER},depth_cm\n2000,A,30,0.9,400,20,5,0-30\n"), 2,
                  "depth_cm")


def test_several_locations_and_blank_lines(tmp_path):
    body = f"{HEADER}\n2000,A,30,,400,,\n\n2000,B,10,,200,,\n2001,A,31,,400,,\n2001,B,11,,x,,\n"
    path = _write(tmp_path, body)
    # blank line 3 is skipped but counted: the bad cell is on line 6
    _expect_error(path, 6, "rainfall_mm")


def test_load_site_unknown_location(tmp_path):
    path = _write(tmp_path, f"{HEADER}\n2000,A,30,,400,,\n2000,B,10,,200,,\n", name="two.csv")
    with pytest.raises(DataError) as info:
        load_site(path, "C")
    msg = str(info.value)
    assert "two.csv" in msg and "'A'" in msg and "'B'" in msg and "'C'" in msg


def test_unknown_column(tmp_path):
    _expect_error(_write(tmp_path, f"{HEADER},colour\n2000,A,30,,400,,,red\n"), 1, "colour")


def test_missing_required_column(tmp_path):
    header = HEADER.replace(",erosion_t/ha", "")
    _expect_error(_write(tmp_path, f"{header}\n2000,A,30,,400,\n"), 1, "erosion_t/ha")


def test_non_numeric(tmp_path):
    _expect_error(_write(tmp_path, f"{HEADER}\n2000,A,30,,400,,\n2001,A,abc,,400,,\n"), 3,
                  "veg_cover_%")


@pytest.mark.parametrize("literal", ["nan", "NaN", "inf", "-inf", "Infinity"])
def test_nan_inf_literals_are_errors(tmp_path, literal):
    err = _expect_error(_write(tmp_path, f"{HEADER}\n2000,A,30,,400,{literal},\n"), 2,
                        "runoff_mm")
    assert literal in str(err)


@pytest.mark.parametrize("column", ["rainfall_mm", "runoff_mm", "erosion_t/ha"])
def test_negative_fluxes(tmp_path, column):
    cells = dict.fromkeys(REQUIRED_COLUMNS, "")
    cells.update({"year": "2000", "location": "A", column: "-1"})
    _expect_error(_write(tmp_path, f"{HEADER}\n{','.join(cells.values())}\n"), 2, column)


@pytest.mark.parametrize(
    ("column", "value"),
    [("veg_cover_%", "100.5"), ("veg_cover_%", "-2"), ("SOM_%", "101"), ("SOM_%", "-0.1")],
)
def test_percent_out_of_range(tmp_path, column, value):
    cells = dict.fromkeys(REQUIRED_COLUMNS, "")
    cells.update({"year": "2000", "location": "A", column: value})
    _expect_error(_write(tmp_path, f"{HEADER}\n{','.join(cells.values())}\n"), 2, column)


@pytest.mark.parametrize("value", ["1.2", "-0.01"])
def test_theta_out_of_range(tmp_path, value):
    body = f"{HEADER},theta_m3/m3\n2000,A,30,,400,,,0.2\n2001,A,30,,400,,,{value}\n"
    _expect_error(_write(tmp_path, body), 3, "theta_m3/m3")


@pytest.mark.parametrize("value", ["1995.5", "mid-90s", ""])
def test_bad_year(tmp_path, value):
    _expect_error(_write(tmp_path, f"{HEADER}\n{value},A,30,,400,,\n"), 2, "year")


def test_duplicate_rows(tmp_path):
    body = f"{HEADER}\n2000,A,30,,400,,\n2000,B,30,,400,,\n2000,A,31,,400,,\n"
    err = _expect_error(_write(tmp_path, body), 4, "year")
    assert "duplicate" in str(err) and "line 2" in str(err)


def test_duplicate_depth_rows(tmp_path):
    body = f"{HEADER},depth_cm\n2000,A,,1.0,,,,0-10\n2000,A,,1.1,,,,0\u201310\n"
    err = _expect_error(_write(tmp_path, body), 3, "year")
    assert "duplicate" in str(err)


def test_years_out_of_order(tmp_path):
    body = f"{HEADER}\n2000,A,30,,400,,\n2005,A,30,,400,,\n2003,A,30,,400,,\n"
    err = _expect_error(_write(tmp_path, body), 4, "year")
    assert "2005" in str(err)


def test_empty_location(tmp_path):
    _expect_error(_write(tmp_path, f"{HEADER}\n2000,,30,,400,,\n"), 2, "location")


# --------------------------------------------------------------------------- parse_range


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("35\u201345", (35.0, 45.0)),
        ("35-45", (35.0, 45.0)),
        ("0.16\u20130.18", (0.16, 0.18)),
        ("1.0 \u2013 1.5", (1.0, 1.5)),
        ("400", (400.0, 400.0)),
        ("1995\u20132010", (1995.0, 2010.0)),
    ],
)
def test_parse_range(text, expected):
    assert parse_range(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "35\u2013", "35\u201345\u201350", "45\u201335", "nan"])
def test_parse_range_errors(text):
    with pytest.raises(DataError):
        parse_range(text)
