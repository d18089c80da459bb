"""`covidct serve` in a real browser: Debian's headless Chromium, driven by selenium, uploads a
synthetic DICOM zip through the page of a `covidct serve` process (token from COVIDCT_TOKEN)
and checks the probabilities and the heat map appear, under the server's
Content-Security-Policy, with no policy violation reported in the console.

Skips when chromium or chromedriver is not installed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _serve_fixtures import dicom_zip, serve_models_dir, serve_process  # noqa: F401
from covidct.constants import DISCLAIMER

pytestmark = pytest.mark.xdist_group("serve")

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and Path(p).exists()), None)
DRIVER = next((p for p in ("/usr/bin/chromedriver", shutil.which("chromedriver") or "") if p and Path(p).exists()), None)
TOKEN = "browser-test-token"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1250")


@pytest.fixture
def server(tmp_path, serve_models_dir, browser):
    """`covidct serve` with its token in COVIDCT_TOKEN, on a free loopback port; its base URL."""
    process = serve_process(serve_models_dir, tmp_path / "data", env={"COVIDCT_TOKEN": TOKEN})
    try:
        yield process.url
    finally:
        process.stop()


def _policy_violations(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]]


@pytest.fixture
def browser(tmp_path):
    if not CHROMIUM or not DRIVER:
        pytest.skip("the browser test needs Chromium and chromedriver (Debian: apt-get install "
                    "chromium chromium-driver); not found")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_in_the_browser_shows_probabilities_and_overlay(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    scan = dicom_zip(tmp_path / "scan.zip", seed=5)
    browser.get(server + "/")
    assert browser.find_element(By.ID, "disclaimer").text == DISCLAIMER
    wait = WebDriverWait(browser, 90)
    # The server has a token: the page asks for it and sends it with every request.
    token_box = browser.find_element(By.ID, "token")
    assert token_box.is_displayed()
    token_box.send_keys(TOKEN + "\t")
    # A refused upload says why on the page.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a scan")
    browser.find_element(By.ID, "file-input").send_keys(str(notes))
    wait.until(lambda d: "Refused (422)" in d.find_element(By.ID, "status").text)
    assert "is not accepted" in browser.find_element(By.ID, "status").text
    browser.find_element(By.ID, "file-input").send_keys(str(scan))
    wait.until(ec.visibility_of_element_located((By.ID, "result")))
    wait.until(lambda d: d.execute_script(
        "const o = document.getElementById('overlay-img'), b = document.getElementById('base-img');"
        "return !o.hidden && o.complete && o.naturalWidth > 0 && b.naturalWidth > 0;"))
    bars = browser.find_elements(By.CSS_SELECTOR, ".prob-bar")
    assert {b.get_attribute("data-method") for b in bars} == {"bit", "covidctnet"}
    assert len(bars) == 6
    # The bars show what the API returns for the same job.
    import json
    import urllib.request

    job_id = browser.execute_script("return result.id")
    request = urllib.request.Request(f"{server}/api/scans/{job_id}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as answer:
        api = json.load(answer)["result"]
    for bar in bars:
        expected = api["methods"][bar.get_attribute("data-method")]["probabilities"][bar.get_attribute("data-cls")]
        assert abs(float(bar.get_attribute("data-p")) - expected) < 1e-9
        assert bar.text.endswith(f"{100 * expected:.1f}%")
    assert browser.find_element(By.ID, "synthetic-banner").is_displayed()
    assert browser.find_element(By.ID, "disclaimer").is_displayed()
    assert browser.find_element(By.ID, "overlay-select").get_attribute("value") == "gradcam"
    assert "Patient-level call" in browser.find_element(By.ID, "call").text
    # Moving through slices and switching to the infection map keep the viewer drawing.
    slider = browser.find_element(By.ID, "slice-slider")
    browser.execute_script("arguments[0].value = 2; arguments[0].dispatchEvent(new Event('input'))", slider)
    browser.execute_script("const s = document.getElementById('overlay-select'); s.value = 'infection';"
                           "s.dispatchEvent(new Event('change'))")
    wait.until(lambda d: d.find_element(By.ID, "slice-label").text.startswith("slice 3 / 12"))
    wait.until(lambda d: d.execute_script("return document.getElementById('overlay-img').naturalWidth > 0"))
    assert "Slice picture" not in browser.find_element(By.ID, "status").text
    shot = tmp_path / "covidct-serve-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert _policy_violations(browser) == []
    # The API documentation is styled under the same policy.
    browser.get(server + "/docs")
    assert "HTTP API" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('.verb')).color") == "rgb(255, 255, 255)"
    assert _policy_violations(browser) == []


def test_the_policy_blocks_what_the_page_does_not_declare(server, browser):
    """The check above could pass with a policy that allows everything: show it does not."""
    browser.get(server + "/")
    browser.execute_script("const s = document.createElement('script');"
                           "s.textContent = 'window.injected = 1'; document.body.appendChild(s);")
    assert browser.execute_script("return window.injected === undefined")
    assert any("script-src" in v for v in _policy_violations(browser))
