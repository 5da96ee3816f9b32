"""deploy/: the Kubernetes manifests and the Grafana dashboard, checked offline.

Matrix. Kubernetes: every document of deploy/kubernetes/*.yaml validates strictly against the
schemas bundled by kubernetes-validate, for the oldest version with gRPC probes (1.27) and the
newest bundled, and a broken copy fails (a misspelled field, a string port); the Service is
headless and selects the StatefulSet's pods, whose serviceName it is; the pods run non-root as
the image's uid with a read-only root, no privilege escalation and no capability; readiness,
liveness and startup probes are gRPC probes on the container's gRPC port, which is node.toml's
listen port; the datasets volume is mounted read-only at node.toml's data_root, the per-node
state and outputs claims at its state_dir and output_root, the ConfigMap at /config where the
args read it; CPU and memory have requests and limits; the cache size is not pinned, so the
node sizes it from the memory limit, to less than half of it.
The ConfigMap's node.toml, its container paths made temp dirs, starts a real node that answers
the probes' request (grpc.health.v1 Check, service "") with SERVING and serves /metrics.
Grafana: the dashboard is valid JSON with unique panel ids on a 24-column grid, has a panel for
each of throughput per dataset, stall, queue depth, cache hit rate, read amplification, job
states and worker pool use; every PromQL expression (targets and template variables) names
only metrics that node's /metrics scrape exports, and the extraction of names is itself tested.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
import urllib.request
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from data_node.config import LimitsConfig, load
from data_node.demo import make_disks
from data_node.resources import auto_cache_bytes
from data_node.server import build_server

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "data-node.json"
# gRPC probes are GA from 1.27; the newest version the validator bundles is checked too.
KUBERNETES_VERSIONS = ["1.27.0", str(kubernetes_validate.latest_version())]


def manifests():
    """Every document of deploy/kubernetes/*.yaml, in file order."""
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return documents


def by_kind(kind):
    (document,) = [doc for doc in manifests() if doc["kind"] == kind]
    return document


def node_toml():
    return tomllib.loads(by_kind("ConfigMap")["data"]["node.toml"])


def pod_spec():
    return by_kind("StatefulSet")["spec"]["template"]["spec"]


def container():
    (only,) = pod_spec()["containers"]
    return only


def test_the_manifests_are_a_configmap_a_headless_service_and_a_statefulset():
    assert sorted(doc["kind"] for doc in manifests()) == ["ConfigMap", "Service", "StatefulSet"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    for document in manifests():
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda c: c.update(readinesProbe=c.pop("readinessProbe")), id="misspelled"),
        pytest.param(lambda c: c["livenessProbe"]["grpc"].update(port="grpc"), id="string port"),
    ],
)
def test_a_broken_statefulset_fails_validation(break_it):
    statefulset = copy.deepcopy(by_kind("StatefulSet"))
    break_it(statefulset["spec"]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_service_is_headless_and_selects_the_statefulset_pods():
    service, statefulset = by_kind("Service"), by_kind("StatefulSet")
    assert service["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    for port in service["spec"]["ports"]:
        assert ports[port["targetPort"]] == port["port"]


def test_the_probes_ask_the_nodes_grpc_health_on_its_listen_port():
    listen_port = int(node_toml()["node"]["listen"].rpartition(":")[2])
    ports = {port["name"]: port["containerPort"] for port in container()["ports"]}
    assert ports["grpc"] == listen_port
    assert ports["metrics"] == int(node_toml()["metrics"]["listen"].rpartition(":")[2])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container()[probe]["grpc"] == {"port": listen_port}, probe


def test_the_pods_run_as_the_images_non_root_user():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    uid, gid = map(int, re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE).groups())
    pod = pod_spec()["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
    own = container()["securityContext"]
    assert own["allowPrivilegeEscalation"] is False
    assert own["readOnlyRootFilesystem"] is True
    assert own["capabilities"]["drop"] == ["ALL"]


def test_data_is_read_only_and_state_and_outputs_are_per_node_claims():
    node = node_toml()["node"]
    mounts = {mount["mountPath"]: mount for mount in container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
    claims = {t["metadata"]["name"] for t in by_kind("StatefulSet")["spec"]["volumeClaimTemplates"]}
    data = mounts[node["data_root"]]
    assert data["readOnly"] is True
    assert volumes[data["name"]]["persistentVolumeClaim"]["readOnly"] is True
    for key in ("state_dir", "output_root"):
        mount = mounts[node[key]]
        assert mount["name"] in claims, key
        assert not mount.get("readOnly", False), key
    config = mounts["/config"]
    assert config["readOnly"] is True
    configmap = by_kind("ConfigMap")["metadata"]["name"]
    assert volumes[config["name"]]["configMap"]["name"] == configmap
    assert container()["args"] == ["serve", "--config", "/config/node.toml"]


def quantity(value):
    """A Kubernetes memory quantity in bytes ("8Gi", "512Mi", "1G")."""
    number, unit = re.fullmatch(r"(\d+)([KMGT]i?)?", value).groups()
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    return int(number) * ((1024 if unit.endswith("i") else 1000) ** powers[unit[0]] if unit else 1)


def test_cpu_and_memory_have_requests_and_limits_above_the_cache(tmp_path):
    resources = container()["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind
    limit = quantity(resources["limits"]["memory"])
    assert quantity(resources["requests"]["memory"]) <= limit
    # No pinned size: the node sizes its cache from the pod's memory limit, its cgroup's.
    assert "max_bytes" not in node_toml().get("cache", {})
    cgroup = tmp_path / "sys/fs/cgroup/memory.max"
    cgroup.parent.mkdir(parents=True)
    cgroup.write_text(f"{limit}\n")
    budget = node_toml()["limits"].get("max_memory_bytes", LimitsConfig.max_memory_bytes)
    cache_bytes, how = auto_cache_bytes(budget, root=tmp_path)
    assert "cgroup v2" in how
    assert cache_bytes < limit / 2


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """The /metrics text of a node started from the ConfigMap's node.toml (paths made local)."""
    root = tmp_path_factory.mktemp("pod")
    text = by_kind("ConfigMap")["data"]["node.toml"]
    for path in ("/data", "/state", "/outputs"):
        text = text.replace(f'"{path}"', f'"{root / path.lstrip("/")}"')
    text = text.replace('"0.0.0.0:9400"', '"127.0.0.1:0"')
    (root / "data").mkdir()
    # The dataset `data-node demo-data /data` writes, as the ConfigMap's comment says.
    make_disks(root / "data" / "disks.h5", 16, 16)
    (root / "node.toml").write_text(text)
    config = load(root / "node.toml")
    node, port = build_server(config, "127.0.0.1:0")
    node.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            # What a Kubernetes gRPC probe without a `service` field sends.
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        url = f"http://127.0.0.1:{node.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            yield response.read().decode()
    finally:
        node.stop(None)


def exported_names(text):
    """Every series name a scrape can show, also of families with no series yet."""
    names = set()
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "histogram_quantile",
    "clamp_min", "clamp_max", "label_values",
}  # fmt: skip


def metric_names(expr):
    """The metric names in a PromQL expression (or a Grafana ``label_values(metric, label)``)."""
    expr = re.sub(r"label_values\((\w+),\s*\w+\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # strings
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", expr)  # label matchers, ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?", "", expr)  # numbers
    return set(re.findall(r"[A-Za-z_:][\w:]*", expr)) - PROMQL_WORDS


def test_metric_names_are_read_out_of_promql():
    expr = (
        'histogram_quantile(0.95, sum by (le, stage) (rate(a_bucket{dataset=~"$dataset",'
        ' x="y}"}[$__rate_interval]))) / clamp_min(sum(b_total) + c, 1e-9)'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("label_values(data_node_batches_total, dataset)") == {
        "data_node_batches_total"
    }


def dashboard():
    return json.loads(DASHBOARD.read_text())


def expressions():
    """Every PromQL expression of the dashboard: panel targets and template variables."""
    targets = [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]
    variables = dashboard()["templating"]["list"]
    return targets + [v["query"]["query"] for v in variables if v["type"] == "query"]


def test_every_dashboard_query_names_only_metrics_the_node_exports(scraped):
    exported = exported_names(scraped)
    assert "data_node_stage_seconds_bucket" in exported  # a real scrape
    queried = set()
    for expr in expressions():
        names = metric_names(expr)
        assert names, expr
        queried |= names
    assert queried <= exported, sorted(queried - exported)


def test_the_dashboard_has_the_panels_asked_for():
    board = dashboard()
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    titles = " | ".join(panel["title"].lower() for panel in panels)
    for topic in (
        "throughput per dataset",
        "stall",
        "queue depth",
        "cache hit rate",
        "read amplification",
        "jobs by state",
        "worker pool use",
    ):
        assert topic in titles, topic
    queried = set().union(*map(metric_names, expressions()))
    for metric in (
        "data_node_batches_total",
        "data_node_stage_seconds_bucket",
        "data_node_stream_queue_depth",
        "data_node_cache_hits_total",
        "data_node_read_amplification",
        "data_node_decoded_bytes_total",
        "data_node_delivered_bytes_total",
        "data_node_jobs",
        "data_node_pool_workers",
        "data_node_pool_busy_workers",
    ):
        assert metric in queried, metric
