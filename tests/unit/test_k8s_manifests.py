"""deploy/k8s/base against the Kubernetes JSON schemas (offline, ``kubernetes-validate``), and
what the deployment relies on: probes, grace period, GPUs, secrets, the migration Job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"
KUBERNETES = "1.30.0"  # the oldest release still maintained by a major cloud, at the time


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((BASE / "kustomization.yaml").read_text())


def _manifests() -> dict[str, dict[str, Any]]:
    docs = [
        yaml.safe_load(path.read_text())
        for path in sorted(BASE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    ]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _pod(name: str) -> dict[str, Any]:
    kind = "Job" if name == "hpo-migrate" else "Deployment"
    return _manifests()[f"{kind}/{name}"]["spec"]["template"]["spec"]


def test_kustomize_lists_every_file() -> None:
    files = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    listed = _kustomization()["resources"]
    assert sorted(listed) == sorted(files) and len(listed) == len(set(listed))


@pytest.mark.parametrize("name", sorted(_manifests()))
def test_manifest_matches_the_schema(name: str) -> None:
    kubernetes_validate.validate(_manifests()[name], KUBERNETES, strict=True)


def test_the_api_is_probed_and_does_not_migrate() -> None:
    (api,) = _pod("hpo-api")["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["command"][:2] == ["hpo", "serve"] and "--no-migrate" in api["command"]
    assert _pod("hpo-migrate")["containers"][0]["command"] == ["hpo", "db", "upgrade"]
    service = _manifests()["Service/hpo-api"]["spec"]
    assert service["selector"] == {"app.kubernetes.io/name": "hpo-api"}


def test_workers_get_a_gpu_each_and_time_to_requeue() -> None:
    pod = _pod("hpo-worker")
    assert pod["terminationGracePeriodSeconds"] >= 60
    (worker,) = pod["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["command"] == ["hpo", "worker", "--gpus", "all"]


def test_every_pod_reads_the_secret_and_config_that_exist() -> None:
    manifests = _manifests()
    secret = manifests["Secret/hpo"]["stringData"]
    assert {"HPO_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret)
    assert manifests["ConfigMap/hpo"]["data"]["HPO_ARTIFACT_STORE"].startswith("s3://")
    images = {i["name"] for i in _kustomization()["images"]}
    for name in ("hpo-api", "hpo-worker", "hpo-migrate"):
        (container,) = _pod(name)["containers"]
        assert container["envFrom"] == [
            {"secretRef": {"name": "hpo"}},
            {"configMapRef": {"name": "hpo"}},
        ]
        assert container["image"] in images
