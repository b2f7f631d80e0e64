"""The report in a real browser: headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

It opens the end-to-end run's report (tests/test_run.py builds it once per session), takes a
screenshot, checks that every figure is rendered and that the page logs no console error, that
hovering a heatmap cell shows its token and share and that the class toggles hide a series, and
that hostile prompts (``<script>alert(1)</script>``, ``<img src=x onerror=alert(1)>``) show as
text and run nothing. Skips, saying why, where no browser is installed (``make test`` installs one
when it runs as root).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from test_run import XSS_PROMPTS, tiny_run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no Chromium: install Debian's chromium and chromium-driver (make test does, as root)"),
    pytest.mark.skipif(not Path(CHROMEDRIVER).exists(),
                       reason="no ChromeDriver: install Debian's chromium-driver (make test does, as root)"),
]
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")

ALERT_TRAP = "window.__alerts = 0; window.alert = function () { window.__alerts += 1; };"


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tiny_run(lambda: tmp_path_factory.mktemp("ihs-run"))
    assert run.second.exit_code == 0, run.second.output
    return run.out / "report.html"


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="ihs-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1280,1600"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001 - an unusable browser is an environment problem, not a test failure
        shutil.rmtree(profile, ignore_errors=True)
        pytest.skip(f"Chromium could not start: {str(exc).splitlines()[0]}")
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": ALERT_TRAP})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser, report):
    browser.get(report.as_uri())
    browser.execute_script("document.querySelectorAll('details').forEach(function (d) { d.open = true; });")
    return browser


def test_screenshot_and_every_figure_rendered(page, tmp_path):
    shot = tmp_path / "report.png"
    assert page.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    images = page.execute_script("""
        return Array.from(document.images).map(function (img) {
            return {alt: img.alt, ok: img.complete && img.naturalWidth > 0, w: img.getBoundingClientRect().width};
        });""")
    assert len(images) >= 6, images
    assert all(i["ok"] and i["w"] > 0 for i in images), [i for i in images if not (i["ok"] and i["w"] > 0)]
    charts = page.execute_script("""
        return Array.from(document.querySelectorAll('svg.chart')).map(function (svg) {
            var box = svg.getBoundingClientRect();
            return {w: box.width, h: box.height, marks: svg.querySelectorAll('path, circle').length};
        });""")
    assert len(charts) >= 4, charts
    assert all(c["w"] > 200 and c["h"] > 80 and c["marks"] > 0 for c in charts), charts
    sections = page.execute_script("return Array.from(document.querySelectorAll('section.sec')).map(s => s.dataset.section);")
    assert {"summary", "data", "probe", "lens", "consistency", "generate", "jailbreak", "graft", "run"} <= set(sections)


def test_no_console_errors(page):
    errors = [e for e in page.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert errors == []


def test_hostile_prompts_show_as_text_and_run_nothing(page):
    from selenium.common.exceptions import NoAlertPresentException

    body = page.execute_script("return document.body.innerText;")
    for prompt in XSS_PROMPTS:
        assert prompt in body
    assert page.execute_script("return window.__alerts;") == 0
    with pytest.raises(NoAlertPresentException):
        page.switch_to.alert.text  # noqa: B018
    assert page.execute_script("return document.querySelectorAll('img[src=\"x\"]').length;") == 0
    assert page.execute_script("return document.scripts.length;") == 1


def test_hover_heatmap_cell_shows_token_and_share(page):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    cell = page.find_element(By.CSS_SELECTOR, "table.heat td[data-tip]")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'});", cell)
    ActionChains(page).move_to_element(cell).perform()
    tip = page.find_element(By.ID, "ihs-tip")
    assert tip.is_displayed()
    text = tip.text
    assert "layer" in text and "share" in text and "token" in text
    assert text == cell.get_attribute("data-tip")
    ActionChains(page).move_by_offset(0, -400).perform()


def test_class_toggle_hides_and_shows_a_series(page):
    from selenium.webdriver.common.by import By

    figure = page.find_element(By.CSS_SELECTOR, "[id^='trajectory-']")
    box = figure.find_element(By.CSS_SELECTOR, "input[data-dim='class'][value='malicious']")
    series = figure.find_elements(By.CSS_SELECTOR, "[data-series][data-class='malicious'][data-emotion='negative']")
    assert series and series[0].is_displayed()
    page.execute_script("arguments[0].scrollIntoView({block: 'center'});", box)
    box.click()
    assert not series[0].is_displayed()
    box.click()
    assert series[0].is_displayed()
