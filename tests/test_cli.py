import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from regv1_jax import data_path
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
    over.write_text(json.dumps({"LoessPlateau": {"r_V": {"value": 2.5}}}))
    c = r.invoke(main, base + [str(tmp_path / "c.csv"), "--params", str(over)])
    assert c.exit_code != 0 and "outside its physical bounds" in c.output
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


# --- owned, atomic outputs; the report; sites; config; cache --------------------------------
@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch):
    """The CLI under test must not write into the user's ~/.cache."""
    monkeypatch.setenv("REGV1_NO_CACHE", "1")


TINY_CONFIG = {"stages": [{"name": "a_vegetation", "free": ["r_V", "K_V"],
                           "variables": ["veg_cover_%"]}],
               "n_starts": 2, "lm_steps": 4}


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One small CLI calibration (one stage, two starts) on the synthetic twin."""
    tmp = tmp_path_factory.mktemp("cal")
    cfg = tmp / "tiny.json"
    cfg.write_text(json.dumps(TINY_CONFIG))
    out = tmp / "twin"
    res = CliRunner().invoke(main, ["calibrate", "--site", "Yanhe-basin-synthetic", "--out",
                                    str(out), "--config", str(cfg), "--no-cache"])
    assert res.exit_code == 0, res.output
    return out, cfg, res.output


def test_calibrate_writes_an_owned_folder_with_a_manifest(calibrated):
    from regv1_jax.report import sha256

    out, cfg, _ = calibrated
    names = {p.name for p in out.iterdir()}
    assert names == {"params.json", "fit.csv", "metrics.json", "fit.png", "correlation.png",
                     "report.md", "report.html", "manifest.json"}
    man = json.loads((out / "manifest.json").read_text())
    assert man["tool"] == "regv1_jax" and man["version"] and man["dtype"] == "float64"
    assert "calibrate" in man["command"] and str(cfg) in man["command"]
    assert man["inputs"]["config"]["sha256"] == sha256(cfg)
    assert man["inputs"]["data"]["path"].endswith("yanhe_synthetic.csv")
    assert man["time_utc"].endswith("+00:00")
    assert set(man["files"]) == names - {"manifest.json"}
    assert all(man["files"][n] == sha256(out / n) for n in man["files"])
    # Nothing left beside the folder (temporary or old folders).
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".regv1")] == []


def test_the_report_names_the_optimiser_and_defines_the_metrics(calibrated):
    out, _, _ = calibrated
    md = (out / "report.md").read_text()
    assert "Levenberg-Marquardt" in md and "L-BFGS" not in md
    assert "2 start(s) per stage" in md and "a_vegetation" in md
    for term in ("**R2 (1:1)**", "**r² (corr.)**", "**RMSE**", "**rel. RMSE**", "**NSE**",
                 "Nash-Sutcliffe", "judged on the 1:1-line R2", "chi²/dof"):
        assert term in md
    metrics = json.loads((out / "metrics.json").read_text())
    assert "R2_1to1" in metrics["metrics"]["veg_cover_%"]["training"]
    for name, flags in metrics["parameter_flags"].items():  # the flags travel with metrics
        assert {"at_bound", "not_identified", "prior_dominated"} <= set(flags), name
        assert flags["CI_95"][1] > flags["CI_95"][0], name
    metrics = json.loads((out / "metrics.json").read_text())
    C = np.asarray(metrics["identifiability"]["corr"], float)
    names = metrics["identifiability"]["names"]
    flagged = {tuple(p["pair"]) for p in metrics["identifiability"]["pairs"] if p["flag"]}
    strong = {(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))
              if abs(C[i, j]) > 0.9}
    assert flagged == strong  # the table flags exactly the figure's |r| > 0.9 cells


def test_the_html_report_is_self_contained_with_valid_css(calibrated):
    out, _, _ = calibrated
    html = (out / "report.html").read_text()
    assert 'src="fit.png"' not in html and 'src="correlation.png"' not in html
    assert html.count('src="data:image/png;base64,') == 2
    assert "{{" not in html and "border-collapse: collapse" in html
    assert "blockquote {" in html and "img { max-width: 100%" in html


def test_atomic_out_dir_replaces_whole_folders_and_survives_interrupts(tmp_path):
    from regv1_jax.report import atomic_out_dir, check_out_dir, read_manifest

    out = tmp_path / "o"
    with atomic_out_dir(out, {"tool": "regv1_jax"}) as d:
        (d / "a.txt").write_text("old")
        (d / "stale.txt").write_text("old")
    assert read_manifest(out)["files"].keys() == {"a.txt", "stale.txt"}
    with pytest.raises(KeyboardInterrupt):
        with atomic_out_dir(out, {"tool": "regv1_jax"}) as d:
            (d / "a.txt").write_text("new")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old" and (out / "stale.txt").exists()
    with atomic_out_dir(out, {"tool": "regv1_jax"}) as d:
        (d / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert check_out_dir(out) == out  # a regv1 folder may be rewritten
    (out / "manifest.json").unlink()
    with pytest.raises(ValueError, match="--force"):
        check_out_dir(out)
    assert check_out_dir(out, force=True) == out


def test_atomic_files_write_all_or_nothing(tmp_path):
    from regv1_jax.report import atomic_files

    a, b = tmp_path / "a.csv", tmp_path / "b.png"
    a.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_files([a, b]) as (ta, tb):
            ta.write_text("new")
            raise RuntimeError("the figure failed")
    assert a.read_text() == "old" and not b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv"]


def test_one_year_simulation_works(tmp_path):
    out = tmp_path / "one.csv"
    res = CliRunner().invoke(main, ["simulate", "--site", "Yanhe-basin", "--start", "2000",
                                    "--end", "2000", "--out", str(out), "--no-cache"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    assert list(df["year"]) == [2000] and df["V"].notna().all()


def test_sites_lists_the_bundled_sites():
    res = CliRunner().invoke(main, ["sites"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("Yanhe-basin "))
    assert "LoessPlateau" in line and "loess_plateau_1995_2010.csv" in line
    assert "400" in line and "1999" in line
    assert "Gushanchuan" in res.output and "data folder:" in res.output


def test_show_config_prints_a_config_that_loads(tmp_path):
    from regv1_jax.fit import CONFIG_KEYS, CalibrationConfig, load_config

    res = CliRunner().invoke(main, ["calibrate", "--show-config"])
    assert res.exit_code == 0, res.output
    for key in CONFIG_KEYS:
        assert f"#   {key}: " in res.output
    doc = "\n".join(ln for ln in res.output.splitlines() if not ln.startswith("#"))
    p = tmp_path / "c.json"
    p.write_text(doc)
    assert load_config(p) == CalibrationConfig()


def test_help_says_where_the_cache_lives_and_how_to_turn_it_off():
    res = CliRunner().invoke(main, ["calibrate", "--help"])
    text = " ".join(res.output.split())
    assert "~/.cache/regv1_jax/xla" in text and "REGV1_NO_CACHE=1" in text
    assert "--no-cache" in text and "--show-config" in text and "n_starts" in text


def test_the_compiled_fit_holds_no_host_callback():
    """A host callback keeps XLA's persistent cache from storing the fit (issue 10)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from regv1_jax.cli import cacheable_traces
    from regv1_jax.fit import (
        CalibrationConfig,
        cell_weights,
        fit_staged,
        make_targets,
        staged_problem,
    )
    from regv1_jax.io import get_site, site_forcing
    from regv1_jax.model import load_param_space

    jax.clear_caches()  # no inner trace (of simulate) made earlier in raise mode
    s = get_site("Yanhe-basin")
    space = load_param_space(s.region)
    p = space.prior_values(jnp.float64)
    f = site_forcing(s, 1995, 2001)
    t = make_targets(s.observations, f, dtype=jnp.float64)
    cfg = CalibrationConfig(n_starts=2, lm_steps=2)
    prob = staged_problem(space, cfg.stages, cfg.n_starts, jax.random.PRNGKey(0))
    args = (p, prob, f, t, cell_weights(t), jnp.asarray(1.0), space, cfg.fit_settings())
    dyn, static = eqx.partition(args, eqx.is_array)
    fit = fit_staged.__wrapped__  # the function itself, not a cached trace of it
    with cacheable_traces():
        jaxpr = str(jax.make_jaxpr(lambda d: fit(*eqx.combine(d, static)))(dyn))
    assert "callback" not in jaxpr


def _headless_chrome():
    """A headless Chromium through selenium, or a skip stating what is missing."""
    import shutil

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless browser: install chromium and chromedriver "
                    "(Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--allow-file-access-from-files"):
        opts.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(driver), options=opts)
    except Exception as err:  # a browser that cannot start is an environment problem
        pytest.skip(f"headless chromium did not start: {str(err).splitlines()[0]}")


@pytest.mark.browser
def test_the_html_report_renders_in_a_real_browser(calibrated, tmp_path):
    out, _, _ = calibrated
    # A copy alone in a folder: the page must not need anything beside it.
    page = tmp_path / "alone.html"
    page.write_text((out / "report.html").read_text())
    drv = _headless_chrome()
    try:
        for width in (1280, 800):
            drv.set_window_size(width, 900)
            drv.get(page.as_uri())
            imgs = drv.execute_script(
                "return Array.from(document.images).map(i => [i.complete, i.naturalWidth,"
                " i.getBoundingClientRect().right]);")
            assert len(imgs) == 2
            view = drv.execute_script("return document.documentElement.clientWidth;")
            for complete, natural, right in imgs:
                assert complete and natural > 0
                assert right <= view + 1
            scroll = drv.execute_script("return document.documentElement.scrollWidth;")
            assert scroll <= view, f"page overflows horizontally at {width}px: {scroll} > {view}"
            borders = drv.execute_script(
                "return getComputedStyle(document.querySelector('td')).borderTopStyle;")
            assert borders == "solid"  # the CSS after the first rule applies
    finally:
        drv.quit()


def test_equilibria_command_writes_table_json_and_figure(tmp_path):
    out = tmp_path / "eq"
    # The sweep of test_model_v2 (one compilation serves both).
    res = CliRunner().invoke(main, [
        "equilibria", "--region", "LoessPlateau", "--map", "400", "--sweep", "200:700:21",
        "--params", str(data_path("parameter_sets/loess_bistable.json")), "--out", str(out)])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "equilibria.csv")
    assert np.allclose(sorted(set(table["rainfall_mm"])), np.linspace(200, 700, 21))
    summary = json.loads((out / "equilibria.json").read_text())
    at = summary["at_map"]
    assert [q["stable"] for q in at["equilibria"]] == [True, False, True]
    assert at["V_crit"] == pytest.approx(at["equilibria"][1]["V"])
    assert 300 < summary["P_veg_mm"] < 400 < summary["P_bare_unstable_mm"]
    assert (out / "bifurcation.png").stat().st_size > 10_000
    assert (out / "manifest.json").exists()
    bad = CliRunner().invoke(main, ["equilibria", "--region", "LoessPlateau", "--sweep", "9",
                                    "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "--sweep" in bad.output and "Traceback" not in bad.output
