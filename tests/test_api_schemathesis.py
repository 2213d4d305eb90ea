"""Schemathesis against the live server's /openapi.json: no generated request gets a 5xx.

Bounded to a few dozen examples per operation (about a minute). The server has a token and
this test sends it, so requests reach validation and the database, with three limits that
keep the run free of Ray and of long jobs (those paths are tested in test_api_live.py and
test_api.py): new runs are created with ``"start": false``; start/resume/posterior/events
name a run id that does not exist; ``POST /stress`` goes without the token (401).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.plugins.server import TOKEN, start_server

MISSING_RUN = 2**31 - 1
EXAMPLES = 25


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("api-fuzz")
    server = start_server(f"sqlite:///{data_dir / 'falcon-lite.db'}", data_dir)
    try:
        yield server
    finally:
        server.stop()


def operations(url: str):
    for result in schemathesis.openapi.from_url(f"{url}/openapi.json").get_all_operations():
        yield result.ok()


def prepare(case) -> dict:
    """Apply the limits of the module doc to one generated case; return its headers."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    path, method = case.operation.path, case.method.upper()
    if method == "POST" and path == "/runs" and isinstance(case.body, dict):
        case.body["start"] = False
    if any(path.endswith(tail) for tail in ("/start", "/resume", "/posterior", "/events")):
        case.path_parameters = {**(case.path_parameters or {}), "run_id": MISSING_RUN}
    if method == "POST" and path == "/stress":
        headers = {}
    return headers


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors(fuzz_server, mode):
    failures: list[str] = []
    tested = 0
    for operation in operations(fuzz_server.url):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def fuzz(case):
            headers = prepare(case)
            try:
                case.call_and_validate(base_url=fuzz_server.url, headers=headers,
                                       checks=[not_a_server_error], timeout=30)
            except AssertionError as exc:  # schemathesis' failure groups are AssertionErrors
                failures.append(f"{operation.label}: {exc}"[:2000])
                raise

        try:
            fuzz()
        except AssertionError:
            pass  # recorded above; go on with the other operations
        except Unsatisfiable:
            continue  # no negative input exists for an operation without parameters
        tested += 1
    assert tested >= 8
    assert not failures, "\n\n".join(failures)
