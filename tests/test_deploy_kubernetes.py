"""The Kubernetes manifests (deploy/kubernetes/, kustomize): rendered with `kubectl kustomize`, every object
checked against the Kubernetes schemas (kubernetes-validate, offline), and the KEDA ScaledObject (a CRD, so
checked here by hand) scaling the worker Deployment on the very RQ lists the workers consume.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import redis
import yaml
from rq import Queue

from lipsync.contract.settings import Settings
from lipsync.queue.dispatch import worker_queue_names

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]  # the oldest still common, and the newest
VARIANTS = ["base", "scale-to-zero", "external-redis"]


def render(variant: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        message = "kubectl (with kustomize) is not installed"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    done = subprocess.run([kubectl, "kustomize", str(KUBE / variant)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"].startswith(name))]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def settings_of(docs: list[dict]) -> dict[str, str]:
    return one(docs, "ConfigMap", "lipsync-settings")["data"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_render_and_match_the_kubernetes_schemas(variant, version):
    for doc in render(variant):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: not in the schemas (checked below)
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"].get("namespace", "lipsync") == "lipsync" or doc["kind"] == "Namespace"


def test_settings_are_lipsync_settings_and_secrets_stay_out_of_the_repo():
    docs = render("base")
    fields = {f"LIPSYNC_{name.upper()}" for name in Settings.model_fields}
    assert set(settings_of(docs)) <= fields, set(settings_of(docs)) - fields
    assert not [d for d in docs if d["kind"] == "Secret"]  # made by the operator (docs/deploy.md)
    for name in ("lipsync-api", "lipsync-worker"):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        sources = spec["containers"][0]["envFrom"]
        assert sources[0]["configMapRef"]["name"] == one(docs, "ConfigMap", "lipsync-settings")["metadata"]["name"]
        assert sources[1]["secretRef"]["name"] == "lipsync-secrets"
        assert spec["securityContext"]["runAsNonRoot"] is True
    assert settings_of(docs)["LIPSYNC_STORAGE_BACKEND"] == "s3"  # pods on many nodes share no filesystem


def test_workers_take_one_gpu_each_and_outlive_their_longest_job():
    docs = render("base")
    worker = one(docs, "Deployment", "lipsync-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["args"] == ["worker"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    # SIGTERM (the kubelet's default) is RQ's warm shutdown: the job finishes within the grace period.
    assert worker["terminationGracePeriodSeconds"] > int(settings_of(docs)["LIPSYNC_JOB_TIMEOUT_S"])
    assert "healthcheck.py" in " ".join(container["livenessProbe"]["exec"]["command"])
    api = one(docs, "Deployment", "lipsync-api")
    assert api["spec"]["replicas"] >= 2 and "nvidia.com/gpu" not in str(api)
    assert api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_redis_keeps_an_append_only_file_on_a_volume():
    redis = one(render("base"), "StatefulSet", "lipsync-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert not [d for d in render("external-redis") if d["kind"] in ("StatefulSet", "Service") and "redis" in str(d)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_keda_scales_the_workers_on_the_rq_lists_they_consume(variant):
    docs = render(variant)
    scaled = one(docs, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment", "lipsync-worker")["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == (0 if variant == "scale-to-zero" else 1)
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    assert "LIPSYNC_APPS" not in settings_of(docs)  # the workers serve the default apps
    lists = [Queue(name, connection=redis.Redis()).key for name in worker_queue_names(Settings())]  # no I/O
    assert [t["metadata"]["listName"] for t in triggers] == lists == ["rq:queue:lipsync", "rq:queue:lipsync-low"]
    # The Redis KEDA polls is the one the workers use, named so that KEDA's own namespace resolves it.
    redis_url = urlparse(settings_of(docs)["LIPSYNC_REDIS_URL"])
    for trigger in triggers:
        host, port = trigger["metadata"]["address"].rsplit(":", 1)
        assert int(port) == (redis_url.port or 6379)
        if variant == "external-redis":
            assert host == redis_url.hostname
        else:
            service = one(docs, "Service", "lipsync-redis")["metadata"]
            assert redis_url.hostname == service["name"]
            assert host == f"{service['name']}.{service['namespace']}.svc.cluster.local"
