"""The live progress page in a real headless Chromium (Debian's, driven by Selenium)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from typing import Any

import httpx
import pytest

from holmes_stream.auth import hash_key
from holmes_stream.settings import ApiKey, AuthSettings
from tests.conftest import ARTIFACTS, ROOT, fresh, load_fixture, make_settings

CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1200,1400",
]


@pytest.fixture(scope="module")
def browser_binaries() -> tuple[str, str]:
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        subprocess.run(["bash", str(ROOT / "scripts" / "install-browser.sh")], check=False)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.geteuid() != 0:
            pytest.skip("chromium/chromedriver missing; run scripts/install-browser.sh as root")
        pytest.fail("scripts/install-browser.sh did not install chromium and chromedriver")
    return chromium, driver


def drive(chromium: str, driver_path: str, url: str, screenshot: str) -> dict[str, Any]:
    """Open the page, wait for the rendered analysis, read what it shows (runs in a thread)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="hs-chrome-")
    for flag in [*CHROME_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(url)
        WebDriverWait(browser, 60).until(
            lambda b: b.find_element(By.ID, "analysis").get_attribute("data-rendered") == "true"
        )
        WebDriverWait(browser, 10).until(
            lambda b: b.find_element(By.ID, "stream-state").text == "finished"
        )
        browser.save_screenshot(screenshot)
        return {
            "status": browser.find_element(By.ID, "status").text,
            "events": [
                li.get_attribute("data-type")
                for li in browser.find_elements(By.CSS_SELECTOR, "#events li")
            ],
            "seqs": [
                int(li.get_attribute("data-seq") or 0)
                for li in browser.find_elements(By.CSS_SELECTOR, "#events li")
            ],
            "h2": [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#analysis h2")],
            "h3": [h.text for h in browser.find_elements(By.CSS_SELECTOR, "#analysis h3")],
            "code_blocks": len(browser.find_elements(By.CSS_SELECTOR, "#analysis pre code")),
            "labels": browser.find_element(By.ID, "alert-labels").text,
            "address": browser.current_url,
            "console": [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"],
        }
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def test_progress_page_shows_events_and_rendered_analysis(
    stack, uid: str, start_worker, start_api, browser_binaries
) -> None:
    settings = make_settings(stack, uid)
    settings.auth = AuthSettings(
        mode="required", api_keys=[ApiKey(name="ui", sha256=hash_key("ui-key"), tenant="acme")]
    )
    runtime = await start_worker(settings)
    api = await start_api(settings, runtime)
    headers = {"X-API-Key": "ui-key"}
    async with httpx.AsyncClient(base_url=api, timeout=30) as client:
        submitted = await client.post(
            "/api/v1/investigations",
            json=fresh(load_fixture("single-alert.json"), uid),
            headers=headers,
        )
        inv = submitted.json()["investigations"][0]["id"]
        page = (
            await client.post(f"/api/v1/investigations/{inv}/access-token", headers=headers)
        ).json()
        # Without a token the page loads but its data does not.
        assert (await client.get(f"/api/v1/investigations/{inv}")).status_code == 401

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "ui-progress.png"
    seen = await asyncio.to_thread(drive, *browser_binaries, page["page_url"], str(screenshot))

    assert seen["status"] == "completed", seen
    assert seen["events"][0] == "started" and seen["events"][-1] == "completed", seen
    assert {"start_tool_calling", "tool_calling_result", "ai_answer_end"} <= set(seen["events"])
    assert seen["seqs"] == sorted(set(seen["seqs"])), seen
    assert seen["h2"] == ["Analysis of KubePodCrashLooping"], seen
    assert seen["h3"] == ["Evidence from investigation_history"] and seen["code_blocks"] == 1
    assert "payment-api" in seen["labels"]
    assert "access_token" not in seen["address"]  # the page drops the token from the address bar
    assert seen["console"] == [], seen["console"]  # no CSP violations, no script errors
    assert screenshot.stat().st_size > 10_000
