"""The docker-compose ``milvus`` profile (Milvus standalone for ``--index-backend milvus``), checked statically
like the rest of the compose file (tests/test_deploy_static.py): as written, and as Debian's
``docker-compose config`` resolves it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_the_milvus_profile_is_the_official_standalone_layout(compose: dict) -> None:
    services = compose["services"]
    milvus, etcd, minio = services["milvus"], services["milvus-etcd"], services["milvus-minio"]
    for service in (milvus, etcd, minio):
        assert service["profiles"] == ["milvus"], "Milvus starts only when asked for"
        assert service["healthcheck"]["test"][0] == "CMD"
    assert re.fullmatch(r"milvusdb/milvus:v2\.\d+\.\d+", milvus["image"]), "the official image, pinned"
    assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.\d+\.\d+", etcd["image"])
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9T-]+Z", minio["image"])
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "milvus-etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "milvus-minio:9000"
    assert {name: c["condition"] for name, c in milvus["depends_on"].items()} == {
        "milvus-etcd": "service_healthy", "milvus-minio": "service_healthy"}
    assert "ports" not in milvus and milvus["expose"] == ["19530"], "reached on the compose network only"
    assert milvus["deploy"]["resources"]["limits"]["memory"]
    for volume in ("milvus-etcd", "milvus-minio", "milvus-data"):
        assert volume in compose["volumes"]
    # the jobs get the URI to write collections to; the service reads it from each manifest
    assert "MD2PR_MILVUS_URI" in services["index"]["environment"]
    assert "MD2PR_MILVUS_URI" not in services["service"]["environment"]


def test_docker_compose_config_accepts_the_milvus_profile(tmp_path: Path) -> None:
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose not installed (apt-get install docker-compose; .ci/run does)")
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MD2PR_", "COMPOSE_"))}
    env["MD2PR_ADMIN_API_KEY"] = "test-key"
    result = subprocess.run(
        [docker_compose, "--env-file", str(empty_env), "--file", str(COMPOSE_FILE), "--profile", "milvus", "config"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["milvus"]["environment"]["MINIO_ACCESS_KEY_ID"] == services["milvus-minio"]["environment"]["MINIO_ACCESS_KEY"]
    assert services["index"]["environment"]["MD2PR_MILVUS_URI"] == ""
