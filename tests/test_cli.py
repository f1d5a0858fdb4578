import json

import pandas as pd
import pytest
from click.testing import CliRunner

from regv1_jax.cli import SIM_COLUMNS, main


def test_simulate_writes_one_row_per_year_with_closed_water_balance(tmp_path):
    out, png = tmp_path / "sim.csv", tmp_path / "sim.png"
    res = CliRunner().invoke(main, ["simulate", "--site", "Yanhe-basin", "--start", "1995",
                                    "--end", "2010", "--out", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert tuple(df.columns) == SIM_COLUMNS
    assert list(df["year"]) == list(range(1995, 2011))
    # Rainfall comes from the site's CSV where present (1995: 450 mm), else MAP (400 mm).
    assert df.loc[0, "rainfall_mm"] == 450 and df.loc[1, "rainfall_mm"] == 400
    resid = (df["rainfall_mm"] - df["runoff_mm"] - df["ET_mm"] - df["drainage_mm"]
             - df["storage_change_mm"])
    assert resid.abs().max() < 1e-3  # CSV keeps 6 significant digits
    assert df["veg_cover_%"].iloc[-1] > df["veg_cover_%"].iloc[0]
    assert png.stat().st_size > 10_000


def test_simulate_params_override_and_errors(tmp_path):
    over = tmp_path / "p.json"
    over.write_text(json.dumps({"LoessPlateau": {"r_V": {"value": 0.2, "units": "yr^-1"}}}))
    r = CliRunner()
    base = ["simulate", "--site", "Yanhe-basin", "--start", "1995", "--end", "2000", "--out"]
    a = r.invoke(main, base + [str(tmp_path / "a.csv")])
    b = r.invoke(main, base + [str(tmp_path / "b.csv"), "--params", str(over)])
    assert a.exit_code == 0 and b.exit_code == 0
    va = pd.read_csv(tmp_path / "a.csv")["V"].iloc[-1]
    vb = pd.read_csv(tmp_path / "b.csv")["V"].iloc[-1]
    assert vb > va
    over.write_text(json.dumps({"LoessPlateau": {"r_V": {"value": 2.0}}}))
    c = r.invoke(main, base + [str(tmp_path / "c.csv"), "--params", str(over)])
    assert c.exit_code != 0 and "outside its CI_95" in c.output
    d = r.invoke(main, ["simulate", "--site", "Atlantis", "--start", "1995", "--end", "2000",
                        "--out", str(tmp_path / "d.csv")])
    assert d.exit_code != 0 and "unknown site 'Atlantis'" in d.output
    e = r.invoke(main, ["calibrate", "--site", "Gushanchuan", "--out", str(tmp_path / "e")])
    assert e.exit_code != 0 and "no bundled data" in e.output


@pytest.mark.slow
def test_main_job_calibrates_the_bundled_data(tmp_path):
    res = CliRunner().invoke(main, ["calibrate", "--site", "Yanhe-basin", "--out",
                                    str(tmp_path / "yanhe")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "yanhe" / "report.md").read_text()
    assert "scaffold rows, not field data" in md
