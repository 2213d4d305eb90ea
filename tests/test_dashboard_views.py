"""The dashboard's run views in headless Chromium against a live server without Ray (SQLite).

Runs are trained by the inline runtime in this process, in the server's database. Covers: the
posterior view (a corner plot of d marginals and d(d-1)/2 pair panels with the reference
overlaid, the 409 before a trained checkpoint said in words, refreshed while the run is active
and not after it ends), each run's verdict (`outcome`) in the list and on the run's page, the
new-run form's problem selector (its factory parameters, a server 422 under its field), and a
cancelled stress job that is not polled for ever. Skips without chromium/chromedriver unless
FALCON_LITE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import time

import httpx
import pytest

from falcon_lite.config import RunConfig
from falcon_lite.store import runs as store_runs
from tests.plugins.browser import browser, wait  # noqa: F401 (fixture)
from tests.plugins.server import TOKEN
from tests.test_dashboard_page import SMALL, open_page, server, sessions  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser]

# Pixels of one canvas near a colour (the corner plot's estimate and reference colours).
CANVAS_PIXELS = """
const [canvas, r, g, b] = arguments;
const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
let n = 0;
for (let i = 0; i < data.length; i += 4) {
  if (Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40 && Math.abs(data[i + 2] - b) < 40) n++;
}
return n;
"""
REFERENCE_RGB = (0xE6, 0x55, 0x0D)
ESTIMATE_RGB = (0x31, 0x82, 0xBD)
POSTERIOR = "return window.falconDashboard.posterior"


def trained(sessions, name: str, **config) -> int:
    import torch

    from falcon_lite.engine.inline import run_inline

    with sessions.begin() as session:
        run_id = store_runs.create_run(session, RunConfig.model_validate({"name": name, **SMALL, **config})).id
    torch.set_num_threads(1)
    run_inline(sessions.kw["bind"], run_id)
    return run_id


def api_get(server, path: str):
    return httpx.get(f"{server.url}{path}", timeout=60).json()


def corner(browser) -> dict:  # noqa: F811
    return browser.execute_script("""
        const panels = [...document.querySelectorAll('#posterior-plot canvas.corner-panel')];
        return {marginals: panels.filter(c => c.dataset.kind === 'marginal').map(c => c.dataset.x),
                pairs: panels.filter(c => c.dataset.kind === 'pair').map(c => [c.dataset.x, c.dataset.y]),
                labels: [...document.querySelectorAll('#posterior-plot .corner-xlabel')].map(l => l.firstChild.textContent)};
    """)


def pixels(browser, selector: str, rgb) -> list[int]:  # noqa: F811
    return [browser.execute_script(CANVAS_PIXELS, canvas, *rgb)
            for canvas in browser.find_elements("css selector", selector)]


@pytest.mark.parametrize(("problem", "names", "kind"), [
    ({"name": "two_moons"}, ["theta1", "theta2"], "samples"),
    ({"name": "gaussian", "params": {"dim": 3, "sigma_obs": 0.3}}, ["z0", "z1", "z2"], "gaussian"),
])
def test_a_trained_run_shows_its_posterior_as_a_corner_plot_with_the_reference(
        browser, server, sessions, problem, names, kind):  # noqa: F811
    from selenium.webdriver.common.by import By

    run_id = trained(sessions, f"corner-{problem['name']}", problem=problem)
    open_page(browser, f"{server.url}/#/runs/{run_id}")
    wait(browser, lambda d: d.execute_script(f"{POSTERIOR}.runId") == run_id and
         d.execute_script(f"{POSTERIOR}.state") == "shown" and
         d.find_element(By.ID, "posterior-plot").get_attribute("data-reference") == "true", "the corner plot")
    d = len(names)
    shown = corner(browser)
    assert shown["marginals"] == names  # d marginals, labelled by the parameters' names
    assert sorted(map(tuple, shown["pairs"])) == sorted((names[j], names[i]) for i in range(d) for j in range(i))
    assert shown["labels"] == names
    state = browser.execute_script(f"{POSTERIOR}")
    assert (state["marginals"], state["pairs"], state["dim"], state["step"]) == (d, d * (d - 1) // 2, d, 40)
    assert state["reference"]["kind"] == kind
    # Drawn: every panel holds the estimate, and the reference over it.
    for selector in ("#posterior-plot canvas.corner-marginal", "#posterior-plot canvas.corner-pair"):
        assert all(n > 20 for n in pixels(browser, selector, ESTIMATE_RGB)), selector
        assert all(n > 5 for n in pixels(browser, selector, REFERENCE_RGB)), selector
    message = browser.find_element(By.ID, "posterior-message").text
    assert "draws from the estimate at step 40" in message and "reference posterior" in message
    # The run has ended: the estimate is not fetched again.
    fetches = browser.execute_script(f"{POSTERIOR}.fetches")
    time.sleep(6)
    assert browser.execute_script(f"{POSTERIOR}.fetches") == fetches == 1

    # Its verdict, in the run list and on its page.
    outcome = api_get(server, f"/runs/{run_id}")["outcome"]
    assert outcome in ("calibrated", "exploded", "miscalibrated", "diverged")
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#run-row-{run_id} td.outcome")
         .get_attribute("data-outcome") == outcome, "the verdict in the run list")
    cell = browser.find_element(By.CSS_SELECTOR, f"#run-row-{run_id} td.outcome")
    assert cell.text == outcome.replace("_", " ") and cell.get_attribute("title").startswith(outcome)
    detail = browser.find_element(By.ID, "detail-outcome")
    assert detail.get_attribute("data-outcome") == outcome and detail.text == f"verdict: {outcome}"


def test_alarm_verdicts_are_shown_in_words(browser, server, sessions):  # noqa: F811
    from selenium.webdriver.common.by import By

    with sessions.begin() as session:
        run_id = store_runs.create_run(session, RunConfig.model_validate({"name": "alarmed", **SMALL})).id
        store_runs.set_status(session, run_id, "running")
        store_runs.set_status(session, run_id, "failed", reason="test", outcome="alarm_raised")
    open_page(browser, f"{server.url}/#/runs/{run_id}")
    wait(browser, lambda d: d.find_element(By.ID, "detail-outcome").get_attribute("data-outcome") == "alarm_raised",
         "the verdict on the run's page")
    assert browser.find_element(By.ID, "detail-outcome").text == "verdict: alarm raised"
    wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, f"#run-row-{run_id} td.outcome").text == "alarm raised",
         "the verdict in the run list")


def test_without_a_checkpoint_the_page_says_why_and_polls_only_while_the_run_is_active(
        browser, server, sessions):  # noqa: F811
    from selenium.webdriver.common.by import By

    with sessions.begin() as session:
        run_id = store_runs.create_run(session, RunConfig.model_validate({"name": "untrained", **SMALL})).id
        store_runs.set_status(session, run_id, "running")
    open_page(browser, f"{server.url}/#/runs/{run_id}")
    message = browser.find_element(By.ID, "posterior-message")
    wait(browser, lambda d: "no checkpoint of a trained network yet" in message.text, "the 409 in words")
    assert message.text.startswith("No posterior to show yet: ")
    assert "every 20 training steps" in message.text and "409" not in message.text
    assert browser.execute_script(f"{POSTERIOR}.state") == "none"
    assert browser.find_elements(By.CSS_SELECTOR, "#posterior-plot canvas") == []
    # Active: asked again every few seconds.
    wait(browser, lambda d: d.execute_script(f"{POSTERIOR}.fetches") >= 3, "the posterior to be asked again", timeout=30)
    with sessions.begin() as session:
        store_runs.set_status(session, run_id, "stopping")
        store_runs.set_status(session, run_id, "stopped")
    wait(browser, lambda d: d.find_element(By.ID, "detail-status").text == "stopped", "the run to be shown stopped")
    time.sleep(1.5)  # the one fetch after it ended
    fetches = browser.execute_script(f"{POSTERIOR}.fetches")
    time.sleep(9)
    assert browser.execute_script(f"{POSTERIOR}.fetches") == fetches


def set_value(browser, element_id: str, value: str) -> None:  # noqa: F811
    element = browser.find_element("id", element_id)
    element.clear()
    element.send_keys(value)


def test_the_new_run_form_offers_the_registered_problems(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, f"{server.url}/")
    set_value(browser, "token", TOKEN)
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "new-run-problem")).options) > 3, "the problems")
    listed = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "new-run-problem")).options]
    assert {"gaussian", "exp_noise", "two_moons"} <= set(listed) and listed[0] == ""  # "" = the v1 default

    # two_moons: its parameters and observations; no factory parameters; created without starting.
    Select(browser.find_element(By.ID, "new-run-problem")).select_by_value("two_moons")
    info = browser.find_element(By.ID, "new-run-problem-info").text
    assert "theta1 ~ U(-1, 1)" in info and "theta2 ~ U(-1, 1)" in info and "observations: 1, 2, 3" in info
    assert browser.find_elements(By.CSS_SELECTOR, "#new-run-params input") == []
    Select(browser.find_element(By.ID, "new-run-observation")).select_by_value("2")
    set_value(browser, "new-run-name", "moons-from-the-form")
    browser.find_element(By.ID, "new-run-start").click()  # unchecked: only create it
    browser.find_element(By.ID, "new-run-submit").click()
    wait(browser, lambda d: d.find_element(By.ID, "detail-name").text == "moons-from-the-form", "the new run")
    run_id = browser.execute_script("return window.falconDashboard.runId")
    run = api_get(server, f"/runs/{run_id}")
    assert run["status"] == "pending"
    assert run["config"]["problem"] == {"name": "two_moons", "params": {}, "observation": "2", "x_obs": None}

    # gaussian: its factory parameters as inputs; a value the factory refuses is shown where it belongs.
    Select(browser.find_element(By.ID, "new-run-problem")).select_by_value("gaussian")
    inputs = {i.get_attribute("data-param"): i for i in browser.find_elements(By.CSS_SELECTOR, "#new-run-params input")}
    assert {"dim", "sigma_obs", "z_true", "prior"} <= set(inputs)
    assert inputs["dim"].get_attribute("type") == "number" and inputs["dim"].get_attribute("value") == "1"
    assert inputs["prior"].get_attribute("value") == "normal"
    before = api_get(server, "/runs?limit=1")["count"]
    set_value(browser, "new-run-param-prior", "cauchy")
    browser.find_element(By.ID, "new-run-submit").click()
    box = browser.find_element(By.ID, "new-run-params-error")
    wait(browser, lambda d: "prior must be 'normal' or 'uniform', got 'cauchy'" in box.text, "the server's message")
    assert api_get(server, "/runs?limit=1")["count"] == before
    assert not browser.find_element(By.ID, "error").is_displayed()  # under its field, not in the banner
    # z_true is JSON text: one that does not parse is said under it, and nothing is sent.
    set_value(browser, "new-run-param-prior", "normal")
    set_value(browser, "new-run-param-z_true", "[0.1,")
    browser.find_element(By.ID, "new-run-submit").click()
    assert "not JSON" in browser.find_element(By.ID, "new-run-error-param-z_true").text
    set_value(browser, "new-run-param-z_true", "[0.1, 0.2]")  # 2 values, dim 1: the server says so
    browser.find_element(By.ID, "new-run-submit").click()
    wait(browser, lambda d: "z_true has 2 values, dim is 1" in box.text, "the server's message")
    assert browser.find_element(By.ID, "new-run-error-param-z_true").text == ""
    assert api_get(server, "/runs?limit=1")["count"] == before


def test_a_cancelled_stress_job_is_shown_and_not_polled_again(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    with server.client() as http:
        job = http.post("/stress", json={"grid": {"buffer.prior_fraction": [0, 0.5]}, "seeds": 2, "steps": 50_000})
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        assert http.delete(f"/stress/{job_id}").json()["status"] == "cancelled"
    open_page(browser, f"{server.url}/")
    set_value(browser, "stress-job", job_id)
    browser.find_element(By.ID, "stress-submit").click()
    status = browser.find_element(By.ID, "stress-status")
    wait(browser, lambda d: status.get_attribute("data-status") == "cancelled", "the job shown cancelled")
    assert "no run had finished, so there is no report" in status.text
    polls = browser.execute_script("return window.falconDashboard.stressPolls")
    time.sleep(4)
    assert browser.execute_script("return window.falconDashboard.stressPolls") == polls == 1
