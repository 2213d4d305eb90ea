"""The dashboard in headless Chromium against a live server on the session's Ray.

The page loads; a run started from its form appears in the runs list; its charts draw
data from the SSE stream (series lengths, and the line's colour in the canvas pixels);
its stop button stops it. Skips when chromium/chromedriver are missing, unless
FALCON_LITE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import re

import pytest

from falcon_lite.client import Client
from tests.plugins.browser import COLOUR_PIXELS, browser, click, wait  # noqa: F401 (fixture)
from tests.plugins.server import TOKEN, ray_server  # noqa: F401 (fixture)

pytestmark = [pytest.mark.browser, pytest.mark.ray]


def test_dashboard_start_watch_stop(browser, ray_server):  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(ray_server.url + "/")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    wait(browser, lambda d: d.find_element(By.ID, "health").get_attribute("data-state") == "ok", "health")
    assert browser.execute_script("return typeof uPlot") == "function"  # served locally, no CDN

    token = browser.find_element(By.ID, "token")
    token.send_keys(TOKEN)
    name = browser.find_element(By.ID, "new-run-name")
    name.clear()
    name.send_keys("from-the-browser")
    fraction = browser.find_element(By.ID, "new-run-prior-fraction")
    fraction.clear()
    fraction.send_keys("0.25")
    steps = browser.find_element(By.ID, "new-run-steps")
    steps.clear()
    steps.send_keys("100000")
    browser.find_element(By.ID, "new-run-submit").click()

    run_id = int(wait(browser, lambda d: next((r.get_attribute("data-run-id")
                                               for r in d.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run-id]")
                                               if "from-the-browser" in r.text), None), "the new run's row"))
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None, browser.find_element(By.ID, "error").text
    wait(browser, lambda d: d.find_element(By.ID, f"run-row-{run_id}").get_attribute("data-status") == "running",
         "the run to be listed as running")

    # Charts fill from the SSE stream.
    series = lambda: browser.execute_script(  # noqa: E731
        "const s = window.falconDashboard.series;"
        "return [window.falconDashboard.runId, s.steps.length, s.std_ratio.filter(v => v !== null).length,"
        " s.bias.filter(v => v !== null).length, s.trainable_prior.filter(v => v !== null).length];"
    )
    wait(browser, lambda d: series()[1] >= 10 and series()[4] >= 2, "10 diagnostics rows in the charts")
    shown_run, n_steps, n_ratio, n_bias, n_buffer = series()
    assert shown_run == run_id and n_ratio > 0 and n_bias > 0
    chart_lengths = browser.execute_script(
        "const c = window.falconDashboard.charts;"
        "return [c.std.data[0].length, c.bias.data[0].length, c.buffer.data[0].length, c.buffer.data[1].at(-1)];"
    )
    assert chart_lengths[0] > 0 and chart_lengths[1] > 0 and chart_lengths[2] > 0
    assert chart_lengths[3] > 0  # the stack's top layer = all live samples
    assert browser.execute_script(COLOUR_PIXELS, "#chart-std-ratio", 0x22, 0x77, 0xAA) > 20
    assert browser.execute_script(COLOUR_PIXELS, "#chart-bias", 0xCC, 0x55, 0x22) > 20
    # a Ray run's rows carry the trainer's waiting share, shown beside the step
    assert re.fullmatch(r"step \d+ · trainer waits \d+ %", browser.find_element(By.ID, "detail-step").text)

    click(browser, f"run-stop-{run_id}")
    wait(browser, lambda d: d.find_element(By.ID, f"run-row-{run_id}").get_attribute("data-status") == "stopped",
         "the run to be listed as stopped")
    wait(browser, lambda d: d.find_element(By.ID, "detail-status").get_attribute("data-status") == "stopped",
         "the live status to say stopped")
    # Resume from the page: the charts go on from where they were, without replaying the run.
    shown_before = series()[1]
    click(browser, f"run-resume-{run_id}")
    wait(browser, lambda d: series()[1] >= shown_before + 5, "more diagnostics after resume")
    steps = browser.execute_script("return window.falconDashboard.series.steps;")
    assert all(a < b for a, b in zip(steps, steps[1:])), "a step was drawn twice"
    click(browser, f"run-stop-{run_id}")
    wait(browser, lambda d: d.find_element(By.ID, f"run-row-{run_id}").get_attribute("data-status") == "stopped",
         "the run to be listed as stopped again")
    with Client(ray_server.url, token=TOKEN) as api:
        assert api.get_run(run_id)["status"] == "stopped"
        api.delete(run_id)


def test_dashboard_stress_view(browser, ray_server):  # noqa: F811
    """A stress matrix launched from the page: report.md's table and the plots appear (the
    rendering of the markdown itself: test_dashboard_page.py)."""
    from selenium.webdriver.common.by import By

    browser.get(ray_server.url + "/")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN)
    for field, value in (("stress-key", "buffer.prior_fraction"), ("stress-values", "0, 0.5"),
                         ("stress-seeds", "1"), ("stress-steps", "20")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "stress-submit").click()
    wait(browser, lambda d: d.find_element(By.ID, "stress-status").get_attribute("data-status") == "completed",
         "the stress job to complete", timeout=300)
    rows = browser.find_elements(By.CSS_SELECTOR, "#stress-table tr")
    assert len(rows) >= 3, browser.find_element(By.ID, "stress-report").text  # header + one row per grid point
    assert "0.5" in browser.find_element(By.ID, "stress-table").text
    wait(browser, lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#stress-report img, #stress-plots img')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"), "the plots to load")
