"""A small client of the falcon-lite REST API (v1), one method per endpoint.

>>> with Client("http://127.0.0.1:8000", token=None) as api:   # doctest: +SKIP
...     run = api.create_run({"name": "f20", "buffer": {"prior_fraction": 0.2}})
...     api.metrics(run["id"], since_step=100, names=["std_ratio"])

Errors come back as `ApiError` carrying the status code and the server's ``detail``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def describe_errors(errors: list[dict]) -> str:
    """Pydantic's (and a 422's) ``[{"loc", "msg", ...}]`` as one readable line per error:
    ``  buffer.prior_fraction: Input should be less than or equal to 1``."""
    lines = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path") and len(loc) > 1:
            loc = loc[1:] if loc[0] == "body" else [f"{loc[0]} parameter {'.'.join(loc[1:])}"]
        where = ".".join(loc) or "(the whole body)"
        lines.append(f"  {where}: {error.get('msg', error)}")
    return "\n".join(lines)


def _is_error_list(detail: Any) -> bool:
    return isinstance(detail, list) and bool(detail) and all(isinstance(e, dict) and "msg" in e for e in detail)


class ApiError(RuntimeError):
    """The server answered 4xx/5xx; ``status`` and ``detail`` say what it said (``detail``
    as the server sent it; the message puts a 422's list of errors one per line)."""

    def __init__(self, status: int, detail: Any, method: str, url: str) -> None:
        self.status, self.detail = status, detail
        text = f"\n{describe_errors(detail)}" if _is_error_list(detail) else f" {detail}"
        super().__init__(f"{method} {url} -> {status}:{text}")


class Client:
    """REST client; ``token`` is sent as a bearer token (needed for mutating calls when set).

    ``token=None`` uses ``FALCON_LITE_API_TOKEN`` (through the settings); ``""`` sends none.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        if token is None:
            from falcon_lite.settings import get_settings

            token = get_settings().api_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except (ValueError, AttributeError):
                detail = response.text
            raise ApiError(response.status_code, detail, method, path)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # system
    def health(self) -> dict:
        return self._call("GET", "/health")

    def prometheus(self) -> str:
        response = self.http.get("/metrics")
        response.raise_for_status()
        return response.text

    # runs
    def list_runs(self, offset: int = 0, limit: int = 50) -> dict:
        return self._call("GET", "/runs", params={"offset": offset, "limit": limit})

    def get_run(self, run_id: int) -> dict:
        return self._call("GET", f"/runs/{run_id}")

    def create_run(self, config: dict | None = None, start: bool = True) -> dict:
        """POST /runs with a RunConfig as JSON (a dict, or a pydantic model)."""
        if hasattr(config, "model_dump"):
            config = config.model_dump(mode="json")
        return self._call("POST", "/runs", json={**(config or {}), "start": start})

    def start(self, run_id: int) -> dict:
        return self._call("POST", f"/runs/{run_id}/start")

    def stop(self, run_id: int) -> dict:
        return self._call("POST", f"/runs/{run_id}/stop")

    def resume(self, run_id: int) -> dict:
        return self._call("POST", f"/runs/{run_id}/resume")

    def delete(self, run_id: int) -> None:
        self._call("DELETE", f"/runs/{run_id}")

    def buffer(self, run_id: int) -> dict:
        return self._call("GET", f"/runs/{run_id}/buffer")

    def metrics(self, run_id: int, since_step: int | None = None, names: list[str] | None = None,
                limit: int | None = None) -> list[dict]:
        params: dict[str, Any] = {}
        if since_step is not None:
            params["since_step"] = since_step
        if names:
            params["names"] = ",".join(names)
        if limit is not None:
            params["limit"] = limit
        return self._call("GET", f"/runs/{run_id}/metrics", params=params)

    def posterior(self, run_id: int, n: int = 1000) -> dict:
        return self._call("GET", f"/runs/{run_id}/posterior", params={"n": n})

    def reference(self, run_id: int, n: int = 1000) -> dict:
        return self._call("GET", f"/runs/{run_id}/reference", params={"n": n})

    def events(self, run_id: int, last_event_id: str | None = None,
               timeout: float | None = None) -> Iterator[tuple[str, dict, str | None]]:
        """Yield ``(event, data, id)`` from the run's SSE stream until the server ends it."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        with self.http.stream("GET", f"/runs/{run_id}/events", headers=headers,
                              timeout=httpx.Timeout(timeout, connect=10.0)) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.json().get("detail"), "GET",
                               f"/runs/{run_id}/events")
            event, data, eid = "message", [], None
            for line in response.iter_lines():
                if line == "":
                    if data:
                        yield event, json.loads("\n".join(data)), eid
                    event, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
                    elif field == "id":
                        eid = value

    # stress
    def stress(self, grid: dict[str, list], seeds: int = 1, steps: int = 1000,
               base: dict | None = None) -> dict:
        body: dict[str, Any] = {"grid": grid, "seeds": seeds, "steps": steps}
        if base is not None:
            body["base"] = base
        return self._call("POST", "/stress", json=body)

    def stress_status(self, job_id: str) -> dict:
        return self._call("GET", f"/stress/{job_id}")

    def cancel_stress(self, job_id: str) -> dict:
        """DELETE /stress/{id}: end the job's worker, keeping the runs that finished."""
        return self._call("DELETE", f"/stress/{job_id}")

    def wait_stress(self, job_id: str, timeout: float = 3600.0, poll: float = 1.0) -> dict:
        """Poll a stress job until it completes, fails or is cancelled (raises TimeoutError after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.stress_status(job_id)
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"stress job {job_id} still {job['status']} after {timeout} s")
            time.sleep(poll)

    def stress_and_wait(self, grid: dict[str, list], seeds: int = 1, steps: int = 1000, base=None,
                        out_dir: str | Path | None = None, timeout: float = 24 * 3600.0) -> dict:
        """Run a stress matrix on the server, wait for it, and return its results.json.

        With `out_dir`, results.json, report.md and the plots are written there as
        `falcon-lite stress` would write them locally. A failed or cancelled job raises
        `ApiError`; Ctrl-C (KeyboardInterrupt) while waiting cancels the job on the server.
        """
        if hasattr(base, "model_dump"):
            base = base.model_dump(mode="json")
        job_id = self.stress(grid, seeds, steps, base)["id"]
        try:
            job = self.wait_stress(job_id, timeout=timeout)
        except KeyboardInterrupt:
            self.cancel_stress(job_id)
            raise
        if job["status"] != "completed":
            raise ApiError(500, f"stress job {job['id']} {job['status']}: {job.get('error')}", "GET",
                           f"/stress/{job['id']}")
        if out_dir is not None:
            out = Path(out_dir)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(job["results"], indent=2))
            (out / "report.md").write_text(job["report"])
            for url in job["plots"]:
                (out / url.rsplit("/", 1)[-1]).write_bytes(self.download(url))
        return job["results"]

    def download(self, path: str) -> bytes:
        """GET a file the API links to (e.g. a stress plot URL)."""
        response = self.http.get(path)
        response.raise_for_status()
        return response.content
