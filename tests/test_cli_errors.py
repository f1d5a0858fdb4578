"""Bad inputs to the ``regv1`` command: one clear line naming the file or option, exit code
1 or 2, never a traceback; plausibility problems: a warning and exit code 0.

Every case fails (or warns) before JAX compiles anything, except the few marked ``run``, so
the table runs in seconds.
"""

import json
import os

import pytest
from click.testing import CliRunner

from regv1_jax.cli import main

HEADER = "year,location,veg_cover_%,SOM_%,rainfall_mm,runoff_mm,erosion_t/ha"
GOOD_ROWS = ["1995,Yanhe-basin,28,,450,90,", "2000,Yanhe-basin,31,,420,84,",
             "2005,Yanhe-basin,45,,480,70,", "2010,Yanhe-basin,55,,460,58,"]


def _csv(tmp, text, name="bad.csv"):
    p = tmp / name
    p.write_text(text)
    return str(p)


def _rows(*rows, header=HEADER):
    return "\n".join([header, *rows]) + "\n"


def _json(tmp, doc, name="bad.json"):
    p = tmp / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


def sim(tmp, *extra, start="1995", end="2000"):
    return ["simulate", "--site", "Yanhe-basin", "--start", start, "--end", end,
            "--out", str(tmp / "sim.csv"), *extra]


def cal(tmp, *extra, out=None):
    return ["calibrate", "--site", "Yanhe-basin", "--out", out or str(tmp / "out"), *extra]


def cal_data(tmp, csv_text, *extra):
    return cal(tmp, "--data", _csv(tmp, csv_text), *extra)


def sim_params(tmp, doc, *extra):
    return sim(tmp, "--params", _json(tmp, doc), *extra)


def cal_config(tmp, doc, *extra):
    return cal(tmp, "--config", _json(tmp, doc, "cfg.json"), *extra)


def _user_folder(tmp):
    d = tmp / "mine"
    d.mkdir()
    (d / "params.json").write_text("{}")
    (d / "notes.txt").write_text("my notes")
    return str(d)


def _a_file(tmp):
    p = tmp / "afile"
    p.write_text("x")
    return str(p)


# (id, args(tmp) -> list, expected: "error" | "warn" | "ok", substrings of the output)
CASES = [
    # --- CSV data ---------------------------------------------------------------------
    ("csv-empty-file", lambda t: cal_data(t, ""), "error", ["bad.csv", "empty"]),
    ("csv-header-only", lambda t: cal_data(t, HEADER + "\n"), "error", ["bad.csv"]),
    ("csv-missing-column", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,28,,450", header="year,location,veg_cover_%,SOM_%,rainfall_mm")),
        "error", ["bad.csv", "runoff_mm"]),
    ("csv-missing-year-column", lambda t: cal_data(t, _rows(
        "Yanhe-basin,28,,450,90,", header=HEADER.replace("year,", ""))), "error",
        ["bad.csv", "year"]),
    ("csv-non-numeric-cover", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,lots,,450,90,", *GOOD_ROWS[1:])), "error",
        ["bad.csv", "line 2", "veg_cover_%"]),
    ("csv-non-numeric-year", lambda t: cal_data(t, _rows(
        "nineteen,Yanhe-basin,28,,450,90,", *GOOD_ROWS[1:])), "error", ["bad.csv", "year"]),
    ("csv-fractional-year", lambda t: cal_data(t, _rows(
        "1995.5,Yanhe-basin,28,,450,90,", *GOOD_ROWS[1:])), "error", ["bad.csv", "year"]),
    ("csv-duplicate-year", lambda t: cal_data(t, _rows(
        GOOD_ROWS[0], GOOD_ROWS[0], *GOOD_ROWS[1:])), "error", ["bad.csv", "1995"]),
    ("csv-years-decreasing", lambda t: cal_data(t, _rows(*GOOD_ROWS[::-1])), "error",
        ["bad.csv"]),
    ("csv-cover-above-100", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,280,,450,90,", *GOOD_ROWS[1:])), "error",
        ["bad.csv", "veg_cover_%"]),
    ("csv-negative-runoff", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,28,,450,-90,", *GOOD_ROWS[1:])), "error",
        ["bad.csv", "runoff_mm"]),
    ("csv-theta-as-percent", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,28,,450,90,,18", *[r + "," for r in GOOD_ROWS[1:]],
        header=HEADER + ",theta_m3/m3")), "error", ["bad.csv", "theta_m3/m3"]),
    ("csv-bad-depth", lambda t: cal_data(t, _rows(
        "1995,Yanhe-basin,28,1.0,450,90,,0-15", header=HEADER + ",depth_cm")), "error",
        ["bad.csv", "depth_cm"]),
    ("csv-site-not-in-file", lambda t: cal(t, "--data", _csv(t, _rows(*[
        r.replace("Yanhe-basin", "Elsewhere") for r in GOOD_ROWS])), "--site", "Yanhe-basin"),
        "error", ["Yanhe-basin"]),
    ("csv-not-utf8", lambda t: cal(t, "--data", _bytes(t, b"year,location\n\xff\xfe1995,\xff\n")),
        "error", ["bad.csv"]),
    ("csv-ragged-row", lambda t: cal_data(t, _rows("1995,Yanhe-basin,28,,450,90,,,,,9",
                                                   *GOOD_ROWS[1:])), "error", ["bad.csv"]),
    ("csv-missing-file", lambda t: cal(t, "--data", str(t / "nope.csv")), "error",
        ["--data", "nope.csv"]),
    ("csv-cover-as-fractions", lambda t: cal_data(t, _rows(*[
        r.replace(",28,", ",0.28,").replace(",31,", ",0.31,").replace(",45,", ",0.45,")
        .replace(",55,", ",0.55,") for r in GOOD_ROWS]), "--dry-run"), "warn",
        ["bad.csv", "veg_cover_%", "percent"]),
    ("csv-runoff-above-rainfall", lambda t: cal_data(t, _rows(*[
        r.replace(",450,", ",0.45,") for r in GOOD_ROWS]), "--dry-run"), "warn",
        ["bad.csv", "runoff_mm exceeds rainfall_mm", "1995"]),
    # --- JSON parameters ----------------------------------------------------------------
    ("params-not-json", lambda t: sim_params(t, "{not json"), "error",
        ["bad.json", "not valid JSON"]),
    ("params-a-list", lambda t: sim_params(t, "[1, 2]"), "error", ["bad.json"]),
    ("params-unknown-name", lambda t: sim_params(t, {"LoessPlateau": {"r_W": {"value": 1}}}),
        "error", ["bad.json", "r_W"]),
    ("params-out-of-range", lambda t: sim_params(t, {"LoessPlateau": {"r_V": {"value": 5.0}}}),
        "error", ["r_V", "outside its physical bounds", "[0.001, 2.0]"]),
    ("params-outside-prior-ci", lambda t: sim_params(
        t, {"LoessPlateau": {"r_V": {"value": 0.5}}}, "--dry-run"), "warn",
        ["r_V", "outside its prior CI_95", "accepted"]),
    ("params-wrong-units", lambda t: sim_params(
        t, {"LoessPlateau": {"r_V": {"value": 0.2, "units": "day^-1"}}}), "error",
        ["r_V", "units"]),
    ("params-non-numeric", lambda t: sim_params(t, {"LoessPlateau": {"r_V": {"value": "fast"}}}),
        "error", ["r_V", "number"]),
    ("params-other-region", lambda t: sim_params(t, {"Sahara": {"r_V": {"value": 0.2}}}),
        "error", ["bad.json", "Sahara"]),
    ("params-empty-object", lambda t: sim_params(t, {}, "--dry-run"), "warn",
        ["bad.json", "sets no parameter"]),
    ("params-value-as-text", lambda t: sim_params(
        t, {"LoessPlateau": {"r_V": {"value": "0.2"}}}, "--dry-run"), "warn",
        ["bad.json", "r_V", "read as a number"]),
    ("params-missing-file", lambda t: sim(t, "--params", str(t / "nope.json")), "error",
        ["--params", "nope.json"]),
    # --- calibration config -------------------------------------------------------------
    ("config-not-json", lambda t: cal_config(t, "n_starts: 3"), "error",
        ["cfg.json", "not valid JSON"]),
    ("config-a-list", lambda t: cal_config(t, "[]"), "error", ["cfg.json", "JSON object"]),
    ("config-starts-text", lambda t: cal_config(t, {"n_starts": "many"}), "error",
        ["cfg.json", "n_starts", "integer"]),
    ("config-starts-negative", lambda t: cal_config(t, {"n_starts": -3}), "error",
        ["cfg.json", "n_starts"]),
    ("config-unknown-key", lambda t: cal_config(t, {"n_start": 3}), "error",
        ["cfg.json", "n_start"]),
    ("config-bad-optimizer", lambda t: cal_config(t, {"optimizer": "newton"}), "error",
        ["cfg.json", "optimizer"]),
    ("config-negative-tolerance", lambda t: cal_config(t, {"rtol": -1e-6}), "error",
        ["cfg.json", "rtol"]),
    ("config-holdout-reversed", lambda t: cal_config(t, {"holdout": [2015, 2011]}), "error",
        ["cfg.json", "holdout"]),
    ("config-odd-steps", lambda t: cal_config(t, {"steps_per_year": 5}), "error",
        ["cfg.json", "steps_per_year"]),
    ("config-stage-without-free", lambda t: cal_config(t, {"stages": [{"name": "x"}]}),
        "error", ["cfg.json", "stage 0"]),
    ("config-stage-unknown-parameter", lambda t: cal_config(
        t, {"stages": [{"name": "x", "free": ["r_W"], "variables": ["veg_cover_%"]}]}),
        "error", ["r_W"]),
    ("config-bool-as-int", lambda t: cal_config(t, {"lm_steps": True}), "error",
        ["cfg.json", "lm_steps"]),
    # --- options ------------------------------------------------------------------------
    ("opt-starts-negative", lambda t: cal(t, "--starts", "-3"), "error", ["--starts"]),
    ("opt-starts-zero", lambda t: cal(t, "--starts", "0"), "error", ["--starts"]),
    ("opt-seed-negative", lambda t: cal(t, "--seed", "-1"), "error", ["--seed"]),
    ("opt-start-not-int", lambda t: sim(t, start="1995.5"), "error", ["--start"]),
    ("opt-end-before-start", lambda t: sim(t, start="2000", end="1995"), "error",
        ["--end 1995 is before --start 2000"]),
    ("opt-calibrate-end-before-start", lambda t: cal(t, "--start", "2005", "--end", "2000"),
        "error", ["--end"]),
    ("opt-calibrate-one-year", lambda t: cal(t, "--start", "2000", "--end", "2000"), "error",
        ["at least 2"]),
    ("opt-too-many-years", lambda t: sim(t, start="1000", end="3000"), "error", ["at most"]),
    ("opt-plot-unknown-type", lambda t: sim(t, "--plot", str(t / "fig.xyz")), "error",
        ["--plot", "fig.xyz", ".png"]),
    ("opt-plot-same-as-out", lambda t: sim(t, "--plot", str(t / "sim.csv")), "error",
        ["--plot"]),
    ("opt-unknown-site", lambda t: ["simulate", "--site", "Atlantis", "--start", "1995",
                                    "--end", "2000", "--out", str(t / "s.csv")], "error",
        ["unknown site 'Atlantis'"]),
    ("opt-unknown-region", lambda t: sim(t, "--region", "Mars"), "error", ["Mars"]),
    ("opt-unknown-method", lambda t: sim(t, "--method", "euler"), "error", ["--method"]),
    ("opt-site-without-data", lambda t: ["calibrate", "--site", "Gushanchuan", "--out",
                                         str(t / "o")], "error", ["no bundled data"]),
    ("opt-calibrate-years-without-data", lambda t: cal(t, "--start", "1800", "--end", "1810"),
        "error", ["loess_plateau_1995_2010.csv", "no data rows", "1800-1810"]),
    ("opt-calibrate-years-beyond-data", lambda t: cal(t, "--start", "1995", "--end", "2030",
                                                      "--dry-run"), "warn",
        ["beyond the data"]),
    ("opt-years-far-outside-data", lambda t: sim(t, "--dry-run", start="1800", end="1810"),
        "warn", ["1800-1810", "outside the data", "loess_plateau_1995_2010.csv"]),
    # --- paths --------------------------------------------------------------------------
    ("path-out-in-sys", lambda t: cal(t, out="/sys/regv1_test_out"), "error",
        ["--out", "/sys"]),
    ("path-sim-out-in-proc", lambda t: ["simulate", "--site", "Yanhe-basin", "--start", "1995",
                                        "--end", "2000", "--out", "/proc/regv1.csv"], "error",
        ["--out", "/proc"]),
    ("path-out-is-a-file", lambda t: cal(t, out=_a_file(t)), "error",
        ["--out", "afile", "is a file"]),
    ("path-out-below-a-file", lambda t: cal(t, out=os.path.join(_a_file(t), "sub")), "error",
        ["--out", "afile"]),
    ("path-sim-out-is-a-folder", lambda t: ["simulate", "--site", "Yanhe-basin", "--start",
                                            "1995", "--end", "2000", "--out", str(t)], "error",
        ["--out", "is a folder"]),
    ("path-out-holds-user-files", lambda t: cal(t, out=_user_folder(t)), "error",
        ["--out", "mine", "manifest.json", "--force"]),
    ("path-config-missing", lambda t: cal(t, "--config", str(t / "nope.json")), "error",
        ["--config", "nope.json"]),
    ("path-data-is-a-folder", lambda t: cal(t, "--data", str(t)), "error", ["--data"]),
]


def _bytes(tmp, data: bytes, name="bad.csv"):
    p = tmp / name
    p.write_bytes(data)
    return str(p)


def test_the_table_is_big_enough():
    assert len(CASES) >= 41
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_line_not_a_traceback(case, tmp_path):
    _, build, expected, needles = case
    res = CliRunner().invoke(main, build(tmp_path))
    text = res.output
    assert "Traceback" not in text
    # Unhandled exceptions surface in res.exception (not SystemExit): none allowed.
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    if expected == "error":
        assert res.exit_code in (1, 2), text
        assert "Error:" in text, text
    else:
        assert res.exit_code == 0, text
        assert "warning:" in text, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in:\n{text}"
    assert not (tmp_path / "out").exists()  # nothing written by a failed or dry run


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write into a read-only folder")
def test_read_only_out_fails_before_computing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        res = CliRunner().invoke(main, cal(tmp_path, out=str(ro / "out")))
    finally:
        ro.chmod(0o700)
    assert res.exit_code == 1 and "--out" in res.output and "cannot write" in res.output
    assert "Traceback" not in res.output
