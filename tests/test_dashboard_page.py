"""The dashboard page in headless Chromium against a live server without Ray (SQLite).

Runs with data are made by the inline runtime in this process, writing to the server's
database (real store code); the page reads them over REST and SSE like any run. Covers: a
URL per run, the buffer chart drawn from the run's history, the std_ratio axis showing 1,
legends with values before any hover, the stop button while a run is stopping, the message
when the server is gone, and the stress report rendered from its markdown. Skips without
chromium/chromedriver unless FALCON_LITE_REQUIRE_BROWSER=1.
"""

from __future__ import annotations

import pytest

from falcon_lite.config import RunConfig
from falcon_lite.store import runs as store_runs
from falcon_lite.store.db import make_engine, session_factory
from tests.plugins.browser import browser, click, wait  # noqa: F401 (fixture)
from tests.plugins.server import TOKEN, start_server

pytestmark = [pytest.mark.browser]

SMALL = {
    "buffer": {"min_training": 32, "max_training": 64, "prior_fraction": 0.25, "simulations_per_step": 16},
    "training": {"steps": 40, "batch_size": 16, "warmup_steps": 10, "checkpoint_every": 20},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("page")
    server = start_server(f"sqlite:///{data_dir / 'falcon-lite.db'}", data_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sessions(server):
    engine = make_engine(server.db_url)
    yield session_factory(engine)
    engine.dispose()


def make_run(sessions, name: str, train: bool = False, **sections) -> int:
    with sessions.begin() as session:
        run_id = store_runs.create_run(session, RunConfig.model_validate({"name": name, **SMALL, **sections})).id
    if train:
        import torch

        from falcon_lite.engine.inline import run_inline

        torch.set_num_threads(1)
        run_inline(sessions.kw["bind"], run_id)
    return run_id


def open_page(browser, url: str) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By

    browser.get(url)
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true", "the page")


def test_a_run_has_its_url_and_its_charts_show_its_history(browser, server, sessions):  # noqa: F811
    from selenium.webdriver.common.by import By

    first = make_run(sessions, "history-one", train=True)
    second = make_run(sessions, "history-two", train=True)
    open_page(browser, f"{server.url}/#/runs/{first}")  # opened from its URL, not by a click
    dash = "return window.falconDashboard"
    wait(browser, lambda d: d.execute_script(f"{dash}.runId") == first and
         d.execute_script(f"{dash}.streamOpen") is False, "the run's stream to end")
    assert browser.find_element(By.ID, "detail-name").text == "history-one"
    assert not browser.find_element(By.ID, "run-detail").get_attribute("hidden")

    # The buffer chart holds every step of the (finished) run, not one point per message.
    buffer = browser.execute_script("const c = window.falconDashboard.charts.buffer; return [c.data[0], c.data[1]];")
    assert buffer[0] == list(range(40))
    assert all(total > 0 for total in buffer[1][1:])  # the stack's top: every live sample
    # std_ratio's axis shows 1 whatever the data (here far above it), with a dashed line there.
    std = browser.execute_script(
        "const u = window.falconDashboard.charts.std;"
        "return [u.scales.y.min, u.scales.y.max, u.axes[1]._values, u.data[1]];")
    assert min(v for v in std[3] if v is not None) > 1.5, std[3]  # the test means something
    assert std[0] <= 1 <= std[1] and "1" in std[2], std[:3]
    # Legends show the newest values before any hover.
    legends = browser.execute_script(
        "return [...document.querySelectorAll('#run-detail .u-legend')].map("
        "l => [...l.querySelectorAll('.u-value')].map(v => v.textContent));")
    assert len(legends) == 4
    for values in legends[:3]:
        assert values[0] == "39" and all(v not in ("", "--", "–") for v in values), legends
    # The loss chart: this (Gaussian) estimator's training loss; a held-out loss it has none of.
    assert legends[3][:2] == ["39", legends[3][1]] and legends[3][1] not in ("", "--", "–") and legends[3][2] == "–"

    # Another run's row: the URL follows; the browser's Back goes to the first run again.
    click(browser, f"run-row-{second}")
    wait(browser, lambda d: d.execute_script("return location.hash") == f"#/runs/{second}", "the URL to follow")
    wait(browser, lambda d: d.find_element(By.ID, "detail-name").text == "history-two", "the second run")
    browser.back()
    wait(browser, lambda d: d.execute_script(f"{dash}.runId") == first, "Back to show the first run")
    wait(browser, lambda d: d.execute_script(f"{dash}.series.steps.length") == 40, "its charts again")


def test_a_flows_loss_chart_shows_its_held_out_loss_beside_its_training_loss(browser, server, sessions):  # noqa: F811
    """Each fresh batch's loss before any step saw it (`held_out_loss`), drawn beside the training
    loss at every step of a flow's run, as the metrics rows hold them."""
    import numpy as np

    run_id = make_run(sessions, "flow-losses", train=True, estimator={"name": "flow", "hidden": [16, 16]})
    with sessions.begin() as session:
        rows = store_runs.metrics_since(session, run_id, names=["loss", "held_out_loss"], limit=None)
    open_page(browser, f"{server.url}/#/runs/{run_id}")
    wait(browser, lambda d: d.execute_script("return window.falconDashboard.streamOpen") is False and
         d.execute_script("return window.falconDashboard.charts.loss.data[0].length") == 40, "the run's losses")
    steps, training, held_out = browser.execute_script("return window.falconDashboard.charts.loss.data;")
    assert steps == [r["step"] for r in rows] == list(range(40))
    assert np.allclose(training, [r["loss"] for r in rows]) and np.allclose(held_out, [r["held_out_loss"] for r in rows])
    assert len(set(np.round(held_out, 6))) > 10  # a value per batch, not one repeated
    legend = browser.execute_script(
        "return [...document.querySelectorAll('#chart-loss .u-legend .u-value')].map(v => v.textContent);")
    assert legend[0] == "39" and float(legend[2]) == pytest.approx(held_out[-1], rel=1e-3)


def test_the_stop_button_is_disabled_while_the_run_is_stopping(browser, server, sessions):  # noqa: F811
    from selenium.webdriver.common.by import By

    run_id = make_run(sessions, "stopping")
    with sessions.begin() as session:
        store_runs.set_status(session, run_id, "running")
    open_page(browser, f"{server.url}/")
    wait(browser, lambda d: d.find_element(By.ID, f"run-stop-{run_id}").is_enabled(), "an enabled stop button")
    with sessions.begin() as session:
        store_runs.set_status(session, run_id, "stopping")
    wait(browser, lambda d: d.find_element(By.ID, f"run-row-{run_id}").get_attribute("data-status") == "stopping",
         "the run listed as stopping")
    assert not browser.find_element(By.ID, f"run-stop-{run_id}").is_enabled()
    with sessions.begin() as session:
        store_runs.set_status(session, run_id, "stopped")


def test_stress_report_is_rendered_from_its_markdown(browser, server):  # noqa: F811
    from selenium.webdriver.common.by import By

    open_page(browser, f"{server.url}/")
    steps = browser.find_element(By.ID, "stress-steps")
    assert int(steps.get_attribute("value")) > RunConfig().training.warmup_steps  # rows past the warm-up
    assert browser.find_element(By.ID, "stress-steps-note").get_attribute("data-warn") == "false"
    token = browser.find_element(By.ID, "token")
    token.clear()
    token.send_keys(TOKEN)
    for field, value in (("stress-values", "0, 0.5"), ("stress-seeds", "1"), ("stress-steps", "20")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    assert browser.find_element(By.ID, "stress-steps-note").get_attribute("data-warn") == "true"
    browser.find_element(By.ID, "stress-submit").click()
    wait(browser, lambda d: d.find_element(By.ID, "stress-status").get_attribute("data-status") == "completed",
         "the stress job to complete", timeout=300)
    report = browser.find_element(By.ID, "stress-report")
    assert report.find_element(By.TAG_NAME, "h3").text == "Stress report"
    assert '"buffer.prior_fraction"' in report.find_element(By.TAG_NAME, "code").text  # `...` as code
    assert len(browser.find_elements(By.CSS_SELECTOR, "#stress-table tbody tr")) == 2
    assert not any(line.lstrip().startswith("|") for line in report.text.splitlines())  # no raw table
    assert "![" not in report.text and "`" not in report.text and "#" not in report.text
    wait(browser, lambda d: d.execute_script(
        "const imgs = [...document.querySelectorAll('#stress-report img')];"
        "return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0);"), "the report's plots")


def test_markdown_renderer_never_makes_html_from_the_text(browser, server):  # noqa: F811
    open_page(browser, f"{server.url}/")
    shown = browser.execute_script("""
        window.pwned = 0;
        const md = '# T <b>x</b>\\n\\n<img src=x onerror="window.pwned=1">\\n\\n' +
                   '[a](javascript:window.pwned=2) ![b](data:image/png;base64,AA) [c](https://example.org/)\\n\\n' +
                   '| h <i>1</i> | `<script>` |\\n|---|--:|\\n| **1** | _2_ |\\n\\n```\\n<b>code</b>\\n```\\n- one\\n- two';
        const box = document.createElement('div');
        box.append(renderMarkdown(md, (s) => s));
        return [box.innerHTML, box.textContent, window.pwned];""")
    html, text, pwned = shown
    assert pwned == 0
    for raw in ("<b>", "<img", "<i>", "<script>", 'href="javascript:', 'src="data:'):
        assert raw not in html, html  # unsafe addresses stay text
    assert "&lt;img src=x onerror=" in html and "&lt;b&gt;code&lt;/b&gt;" in html
    assert '<a href="https://example.org/"' in html and "<strong>1</strong>" in html and "<em>2</em>" in html
    assert '<td style="text-align: right;"><em>2</em>' in html and "<li>two</li>" in html


def test_an_unreachable_server_is_said_in_words(browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    gone = start_server(f"sqlite:///{tmp_path / 'gone.db'}", tmp_path)
    try:
        open_page(browser, f"{gone.url}/")
        wait(browser, lambda d: d.find_element(By.ID, "health").get_attribute("data-state") == "ok", "health")
    finally:
        gone.stop()
    error = browser.find_element(By.ID, "error")
    wait(browser, lambda d: error.is_displayed(), "the page to notice the server is gone", timeout=30)
    assert "does not answer" in error.text and gone.url in error.text
    browser.find_element(By.ID, "new-run-submit").click()
    wait(browser, lambda d: "POST /runs got no answer" in error.text, "the form's error")
    assert "Failed to fetch" not in error.text
