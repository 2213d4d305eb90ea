"""A headless Chromium for the page's tests (selenium + Debian's chromium and chromium-driver).

`browser` skips when chromium/chromedriver are missing, unless FALCON_LITE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
WAIT_S = 300  # generous: the machine may be shared and heavily loaded


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        message = "headless browser test needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("FALCON_LITE_REQUIRE_BROWSER", "") not in ("", "0"):
            pytest.fail(f"{message} (FALCON_LITE_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="flr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, predicate, what: str, timeout: float = WAIT_S):
    """Poll `predicate` until it returns a truthy value. The runs table is drawn anew every 2 s:
    an element found in one drawing and read in the next is stale, and is looked up again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.3,
                         ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: predicate(d), message=f"timed out waiting for {what}"
    )


def click(driver, element_id: str) -> None:
    """Click the element with this id (looked up again if the table was redrawn meanwhile)."""
    from selenium.webdriver.common.by import By

    wait(driver, lambda d: d.find_element(By.ID, element_id).click() or True, f"#{element_id} to be clicked")


# Count the pixels of one chart's canvas that have the series' stroke colour.
COLOUR_PIXELS = """
const [selector, r, g, b] = arguments;
const canvas = document.querySelector(selector + ' canvas');
if (!canvas) return -1;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - r) < 30 && Math.abs(data[i + 1] - g) < 30 && Math.abs(data[i + 2] - b) < 30 && data[i + 3] > 0) n++;
}
return n;
"""
