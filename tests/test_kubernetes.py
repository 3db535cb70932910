"""deploy/kubernetes/, checked offline: schemas, the references between objects, and the config.

There is no cluster here. kubernetes-validate (PyPI) bundles the API schemas of every Kubernetes
release, so each manifest is checked strictly (unknown fields are errors) against the oldest
release the manifests need (1.30: the native preStop `sleep`) and the newest one bundled. What a
schema cannot see (a Service port naming a container port that does not exist, an HPA aimed at
another name, a config SafeGate would refuse) is asserted here directly, and the ConfigMap's
gateway.yaml and policy are run through `safegate check` as the pod's init container does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
CONFIGMAP_LIMIT = 1024 * 1024      # bytes of data a ConfigMap may hold


def _objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for _, o in _objects()
             if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _lists_configmap() -> dict[str, Any]:
    """What `kubectl create configmap safegate-lists --from-file=blocklists/` makes."""
    files = {p.name: p.read_text() for p in sorted((ROOT / "blocklists").iterdir())
             if p.is_file() and p.name != "README.md"}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "safegate-lists", "namespace": "safegate"}, "data": files}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_strictly(version: str) -> None:
    objects = [*_objects(), ("(kubectl create) safegate-lists", _lists_configmap())]
    kinds = sorted({o["kind"] for _, o in objects})
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Namespace",
                     "PodDisruptionBudget", "Service"]
    for name, obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize(("mutate", "where"), [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        containerPort="fifty-three"), "containerPort"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        readinesProbe={"httpGet": {"path": "/readyz", "port": "metrics"}}), "readinesProbe"),
])
def test_the_schema_check_catches_a_broken_deployment(mutate: Any, where: str) -> None:
    """The validation above can fail: a wrong type and a misspelt field are both caught."""
    broken = _one("Deployment", "safegate")
    mutate(broken)
    with pytest.raises(kubernetes_validate.ValidationError) as exc:
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    assert where in str(exc.value.message) + ".".join(str(p) for p in exc.value.path)


def test_the_lists_configmap_fits() -> None:
    data = _lists_configmap()["data"]
    assert "lists.yaml" in data
    assert sum(len(v.encode()) for v in data.values()) < CONFIGMAP_LIMIT


def test_objects_refer_to_each_other_correctly() -> None:
    dep = _one("Deployment", "safegate")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports["dns"] == (53, "UDP") and ports["dns-tcp"] == (53, "TCP")

    for svc in (o for _, o in _objects() if o["kind"] == "Service"):
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
            assert ports[p["targetPort"]][1] == p["protocol"]
    dns_svc = _one("Service", "safegate-dns")
    assert sorted((p["port"], p["protocol"]) for p in dns_svc["spec"]["ports"]) == [
        (53, "TCP"), (53, "UDP")]
    # The subscriber's own address must reach the pod: it selects their policy.
    assert dns_svc["spec"]["externalTrafficPolicy"] == "Local"

    hpa = _one("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "safegate"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in container["resources"]["requests"]     # the HPA's percentage needs it
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]

    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}

    config = _one("ConfigMap", "safegate-config")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert {i["key"] for i in volumes["config"]["configMap"]["items"]} <= config["data"].keys()
    assert volumes["lists"]["configMap"]["name"] == "safegate-lists"
    for c in [*pod["spec"]["initContainers"], container]:
        assert {m["name"] for m in c["volumeMounts"]} <= volumes.keys()
        assert c["image"] == container["image"]


def test_pods_run_unprivileged() -> None:
    pod = _one("Deployment", "safegate")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in [*pod["initContainers"], *pod["containers"]]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["capabilities"].get("add", ["NET_BIND_SERVICE"]) == ["NET_BIND_SERVICE"]


def test_the_configmap_passes_safegate_check(tmp_path: Path) -> None:
    """The files land where the pod's volumes put them; `safegate check` must accept them."""
    pod = _one("Deployment", "safegate")["spec"]["template"]["spec"]
    config = _one("ConfigMap", "safegate-config")["data"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    etc = tmp_path / mounts["config"].lstrip("/")
    lists_dir = tmp_path / mounts["lists"].lstrip("/")
    for vol in pod["volumes"]:
        if vol["name"] == "config":
            for item in vol["configMap"]["items"]:
                (etc / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (etc / item["path"]).write_text(config[item["key"]])
    lists_dir.mkdir(parents=True)
    for name, text in _lists_configmap()["data"].items():
        (lists_dir / name).write_text(text)
    # Absolute paths in gateway.yaml point into the pod's mounts: move them under tmp_path.
    gw = yaml.safe_load((etc / "gateway.yaml").read_text())
    assert gw["blocklists"].startswith(mounts["lists"] + "/")
    assert gw["state_dir"] == mounts["state"]
    gw["blocklists"] = str(tmp_path / gw["blocklists"].lstrip("/"))
    gw["state_dir"] = str(tmp_path / "state")
    (etc / "gateway.yaml").write_text(yaml.safe_dump(gw))
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "-c",
                          str(etc / "gateway.yaml")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stdout + out.stderr

    # And the same check fails on a subscribers file naming a tier that does not exist.
    (etc / "subscribers.csv").write_text("prefix,tier\n100.64.1.0/24,no-such-tier\n")
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "-c",
                          str(etc / "gateway.yaml")], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=False)
    assert out.returncode != 0
    assert "no-such-tier" in out.stdout + out.stderr
