"""Kubernetes manifests: strict schema validation against the schemas shipped in kubernetes-validate
(offline, no cluster), plus the wiring the schemas cannot see (selectors, probes, references)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from infra_common import INFRA

K8S = INFRA / "k8s"
# Oldest and newest Kubernetes minor versions we claim to support.
K8S_VERSIONS = ["1.29.0", "1.37.0"]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                docs.append((f"{path.name}#{i}:{doc.get('kind')}", doc))
    return docs


MANIFESTS = manifests()


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in MANIFESTS if d["kind"] == kind]


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[n for n, _ in MANIFESTS])
def test_manifest_is_valid_strict(name: str, doc: dict[str, Any], version: str) -> None:
    # strict: unknown fields (typos such as "livenesProbe") are errors, as with kubectl --validate=strict.
    kubernetes_validate.validate(doc, version, strict=True)


def test_validator_rejects_a_typo() -> None:
    """The validator must not accept everything: a misspelled field is an error."""
    doc = yaml.safe_load((K8S / "ingest.yaml").read_text().split("---")[0])
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root + unshare")
def test_validation_works_without_network(tmp_path: Path) -> None:
    """Run the CLI in a network namespace with no interfaces: proves no schema is fetched."""
    cli = Path(sys.executable).with_name("kubernetes-validate")
    files = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    res = subprocess.run(
        ["unshare", "--net", str(cli), "--strict", "-k", K8S_VERSIONS[-1], *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "INFO" in res.stdout and "ERROR" not in res.stdout


def test_kustomization_lists_existing_files_and_not_the_secret_template() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    assert "secret.template.yaml" not in kust["resources"]
    listed = {K8S / r for r in kust["resources"]}
    assert {p for p in K8S.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.template.yaml")} == listed


def workloads() -> list[dict[str, Any]]:
    """Deployments (api) and StatefulSets (ingest: a stable ordinal is the worker index)."""
    return by_kind("Deployment") + by_kind("StatefulSet")


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def test_deployments_have_probes_resources_and_scrape_annotations() -> None:
    deps = {d["metadata"]["name"]: d for d in workloads()}
    assert set(deps) == {"lineguard-ingest", "lineguard-api"}
    ingest = deps["lineguard-ingest"]
    # Worker i of N = the pod's ordinal: N (--workers) equals replicas, the index comes from the pod-index label.
    assert ingest["kind"] == "StatefulSet" and ingest["spec"]["replicas"] == 2
    assert _container(ingest)["args"] == ["ingest", "--workers", str(ingest["spec"]["replicas"])]
    (index,) = [e for e in _container(ingest)["env"] if e["name"] == "LINEGUARD_INGEST_INDEX"]
    assert index["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert _container(deps["lineguard-api"])["args"] == ["api"]
    for name, dep in deps.items():
        c = _container(dep)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name} {kind}"
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/path"] == "/metrics"
        ports = {p["containerPort"] for p in c["ports"]}
        assert int(ann["prometheus.io/port"]) in ports
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_selectors_match() -> None:
    pod_labels = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in workloads()}

    def matches(sel: dict[str, str]) -> list[str]:
        return [n for n, labels in pod_labels.items() if sel.items() <= labels.items()]

    for dep in workloads():
        assert matches(dep["spec"]["selector"]["matchLabels"]) == [dep["metadata"]["name"]]
    pdbs = by_kind("PodDisruptionBudget")
    assert {tuple(matches(p["spec"]["selector"]["matchLabels"])) for p in pdbs} == {
        ("lineguard-ingest",),
        ("lineguard-api",),
    }
    for p in pdbs:
        assert p["spec"]["minAvailable"] == 1
    (svc,) = by_kind("Service")
    assert matches(svc["spec"]["selector"]) == ["lineguard-api"]


def test_config_and_secret_references_exist() -> None:
    configmaps = {d["metadata"]["name"]: d for d in by_kind("ConfigMap")}
    (secret,) = by_kind("Secret")
    secret_keys = set(secret["stringData"])
    assert all("REPLACE_ME" in v for v in secret["stringData"].values()), "template must hold no real secret"
    for dep in workloads():
        c = _container(dep)
        for src in c.get("envFrom", []):
            assert src["configMapRef"]["name"] in configmaps
        for env in c.get("env", []):
            if "value" in env or "fieldRef" in env.get("valueFrom", {}):  # a plain setting, not a secret
                assert "PASSWORD" not in env["name"] and "TOKEN" not in env["name"], env["name"]
                continue
            ref = env["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret_keys
        for vol in dep["spec"]["template"]["spec"]["volumes"]:
            if "configMap" in vol:
                assert vol["configMap"]["name"] in configmaps
    from line_agent.config import parse_line_config

    line = parse_line_config(yaml.safe_load(configmaps["lineguard-line"]["data"]["line.yaml"]), "configmap")
    assert line.line == "line-1"
    # Every key in the env ConfigMap is a LINEGUARD_* setting (envFrom would inject anything).
    assert all(k.startswith("LINEGUARD_") for k in configmaps["lineguard-env"]["data"])
