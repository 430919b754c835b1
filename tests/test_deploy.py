"""Offline validation of the shipping artifacts: Containerfile, compose.yaml, deploy/.

No container engine or cluster is needed. External validators come from
``scripts/install-validators.sh`` (registries only, cached in
``~/.cache/holmes-stream/tools``). A check whose validator is missing is skipped only
when the install script recorded that installing it failed; if the script never ran,
the check fails and says how to install.

The metric-name checks compare the PrometheusRule and the Grafana dashboard with the
service's metrics. By default the names come from ``holmes_stream.metrics``; a live
service can supply its ``/metrics`` text by overriding the ``metrics_text`` fixture
(e.g. in a conftest.py) to return the exposition text instead of ``None``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
TOOLS = Path(
    os.environ.get("HOLMES_STREAM_TOOLS_DIR", Path.home() / ".cache" / "holmes-stream" / "tools")
)
INSTALL_CMD = "bash scripts/install-validators.sh"
KUSTOMIZATIONS = ["base", "overlays/dev", "overlays/production"]
# Oldest and newest Kubernetes minor the manifests are validated against.
K8S_VERSIONS = ["1.29.0", "1.37.0"]
CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")
# Alerts partitions the compose stack creates and the ScaledObject is sized for.
ALERTS_PARTITIONS = 6
# Metric names allowed in rules/dashboards that the service does not export itself.
FOREIGN_METRICS = {"up"}


# --------------------------------------------------------------------------- tools


def tool(name: str, path: Path) -> Path:
    """Return the installed validator or skip/fail according to the install status."""
    if path.exists():
        return path
    status_file = TOOLS / "status" / name
    status = status_file.read_text().strip() if status_file.exists() else ""
    if status.startswith("failed"):
        pytest.skip(f"{name} could not be installed by {INSTALL_CMD}: {status}")
    pytest.fail(
        f"{name} not found at {path}; run `{INSTALL_CMD}` first (status: {status or 'none'})"
    )


def run(cmd: list[str | Path], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=False, **kw
    )


def kustomize() -> Path:
    return tool("kustomize", TOOLS / "bin" / "kustomize")


def promtool() -> Path:
    return tool("promtool", TOOLS / "bin" / "promtool")


# --------------------------------------------------------------------------- renders

_RENDERS: dict[str, list[dict[str, Any]]] = {}


def render(name: str) -> list[dict[str, Any]]:
    if name not in _RENDERS:
        res = run([kustomize(), "build", DEPLOY / name])
        assert res.returncode == 0, f"kustomize build {name} failed:\n{res.stderr}"
        _RENDERS[name] = [d for d in yaml.safe_load_all(res.stdout) if d]
    return _RENDERS[name]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def is_crd(doc: dict[str, Any]) -> bool:
    return doc["apiVersion"].split("/")[0] in CRD_GROUPS


# --------------------------------------------------------------------------- kustomize + schemas


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kustomize_builds(name: str) -> None:
    docs = render(name)
    kinds = {d["kind"] for d in docs}
    for kind in (
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "ScaledObject",
        "PodDisruptionBudget",
        "ConfigMap",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ):
        assert kind in kinds, f"{name}: no {kind}"
    for d in docs:
        assert d["apiVersion"] and d["kind"] and d["metadata"].get("name"), d
        if name == "base":
            assert "namespace" not in d["metadata"], "base must stay namespace-agnostic"
        else:
            assert d["metadata"].get("namespace"), f"{name}: {d['kind']} without namespace"


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubernetes_schemas(name: str, k8s_version: str, tmp_path: Path) -> None:
    validator = tool("kubernetes-validate", TOOLS / "venv" / "bin" / "kubernetes-validate")
    native = [d for d in render(name) if not is_crd(d)]
    manifest = tmp_path / "native.yaml"
    manifest.write_text(yaml.safe_dump_all(native, sort_keys=False))
    res = run([validator, "--strict", "--quiet", "-k", k8s_version, manifest])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ERROR" not in res.stdout + res.stderr, res.stdout + res.stderr


_CRD_VALIDATOR = r"""
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { join } from "node:path";
const [modulesDir, docsFile] = process.argv.slice(2);
const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js",
  "monitoring.coreos.com/v1/ServiceMonitor":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule":
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
};
let failed = 0;
for (const doc of JSON.parse(readFileSync(docsFile, "utf8"))) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const id = `${key} ${doc.metadata?.name}`;
  if (!MODELS[key]) { console.log(`FAIL ${id}: no schema known`); failed++; continue; }
  const mod = await import(pathToFileURL(join(modulesDir, MODELS[key])).href);
  try { new mod[doc.kind](doc).validate(); console.log(`ok ${id}`); }
  catch (e) { console.log(`FAIL ${id}: ${e.message}`); failed++; }
}
process.exit(failed ? 1 : 0);
"""


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_crd_schemas(name: str, tmp_path: Path) -> None:
    """ScaledObject, ServiceMonitor, PrometheusRule against the CRDs' JSON schemas."""
    modules = tool("crd-schemas", TOOLS / "npm" / "node_modules" / "@kubernetes-models")
    node = shutil.which("node")
    assert node, "node not on PATH"
    crds = [d for d in render(name) if is_crd(d)]
    assert {d["kind"] for d in crds} == {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
    (tmp_path / "crds.json").write_text(json.dumps(crds))
    (tmp_path / "validate.mjs").write_text(_CRD_VALIDATOR)
    res = run([node, tmp_path / "validate.mjs", modules.parent, tmp_path / "crds.json"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("ok ") == len(crds), res.stdout


# --------------------------------------------------------------------------- manifest policy


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in find(docs, "Deployment")}


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_pod_security(name: str) -> None:
    for dep, spec in pod_specs(render(name)).items():
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True, dep
        assert psc["seccompProfile"]["type"] == "RuntimeDefault", dep
        assert spec.get("automountServiceAccountToken") is False, dep
        mounts_by_volume = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, (dep, c["name"])
            assert sc["allowPrivilegeEscalation"] is False, (dep, c["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (dep, c["name"])
            assert "add" not in sc["capabilities"], (dep, c["name"])
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", (dep, c["name"])
            assert "limits" in c["resources"] and "requests" in c["resources"], (dep, c["name"])
            mounted = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            for path in ("/tmp", "/home/holmes"):
                assert path in mounted, f"{dep}/{c['name']}: {path} not writable"
                assert "emptyDir" in mounts_by_volume[mounted[path]], (dep, path)
            assert c.get("livenessProbe") and c.get("readinessProbe"), (dep, c["name"])


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_roles_probes_and_grace(name: str) -> None:
    docs = render(name)
    specs = pod_specs(docs)
    api = specs["holmes-stream-api"]["containers"][0]
    assert api["args"] == ["api"]
    assert {"name": "http", "containerPort": 18000, "protocol": "TCP"} in api["ports"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"

    worker_spec = specs["holmes-stream-worker"]
    worker = worker_spec["containers"][0]
    assert worker["args"] == ["worker"]
    assert {"name": "metrics", "containerPort": 18001, "protocol": "TCP"} in worker["ports"]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}

    config = one(docs, "ConfigMap", "holmes-stream-config")["data"]
    grace = float(config["HOLMES_STREAM_WORKER__SHUTDOWN_GRACE_SECONDS"])
    assert grace >= 30
    assert worker_spec["terminationGracePeriodSeconds"] > grace
    for c in (api, worker):
        env_from = {next(iter(e)): next(iter(e.values()))["name"] for e in c["envFrom"]}
        assert env_from == {
            "configMapRef": "holmes-stream-config",
            "secretRef": "holmes-stream-secrets",
        }
    # Every HOLMES_STREAM_* key of the ConfigMap names an existing setting.
    from holmes_stream.settings import Settings

    for key in config:
        if key.startswith("HOLMES_STREAM_") and "__" in key:
            group, field = key.removeprefix("HOLMES_STREAM_").lower().split("__", 1)
            assert group in Settings.model_fields, key
            model = Settings.model_fields[group].annotation
            assert field in model.model_fields, key  # type: ignore[union-attr]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_autoscaling(name: str) -> None:
    docs = render(name)
    hpa = one(docs, "HorizontalPodAutoscaler", "holmes-stream-api")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "holmes-stream-api"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    so = one(docs, "ScaledObject", "holmes-stream-worker")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    assert so["spec"]["scaleTargetRef"]["name"] == "holmes-stream-worker"
    partitions = int(so["metadata"]["annotations"]["holmes-stream.io/alerts-partitions"])
    assert partitions == ALERTS_PARTITIONS
    assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"] <= partitions
    (trigger,) = [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]
    meta = trigger["metadata"]
    config = one(docs, "ConfigMap", "holmes-stream-config")["data"]
    assert meta["bootstrapServers"] == config["HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["HOLMES_STREAM_KAFKA__GROUP_ID"] == "holmes-stream"
    assert meta["topic"] == config["HOLMES_STREAM_KAFKA__ALERTS_TOPIC"] == "alerts"
    assert int(meta["lagThreshold"]) > 0

    for pdb_name in ("holmes-stream-api", "holmes-stream-worker"):
        pdb = one(docs, "PodDisruptionBudget", pdb_name)
        dep = one(docs, "Deployment", pdb_name)
        assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_services_and_monitors_select_pods(name: str) -> None:
    docs = render(name)
    deployments = find(docs, "Deployment")
    for svc in find(docs, "Service"):
        sel = svc["spec"]["selector"]
        targets = [
            d
            for d in deployments
            if sel.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert targets, f"Service {svc['metadata']['name']} selects no pods"
        port_names = {
            p["name"]
            for d in targets
            for c in d["spec"]["template"]["spec"]["containers"]
            for p in c["ports"]
        }
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in port_names, (svc["metadata"]["name"], p)
    for sm in find(docs, "ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        svcs = [s for s in find(docs, "Service") if sel.items() <= s["metadata"]["labels"].items()]
        assert svcs, f"ServiceMonitor {sm['metadata']['name']} selects no Service"
        for ep in sm["spec"]["endpoints"]:
            assert any(ep["port"] in {p["name"] for p in s["spec"]["ports"]} for s in svcs)
            assert ep["path"] == "/metrics"


def test_secret_is_template_only() -> None:
    base = one(render("base"), "Secret", "holmes-stream-secrets")
    for key in base["stringData"]:
        assert key.startswith("HOLMES_STREAM_"), key
    assert base["stringData"]["HOLMES_STREAM_LLM__API_KEY"] == "REPLACE_ME"
    assert not find(render("overlays/production"), "Secret"), "production must not ship a Secret"


# --------------------------------------------------------------------------- Prometheus rules


def prometheus_rule_groups(name: str = "base") -> dict[str, Any]:
    rule = one(render(name), "PrometheusRule", "holmes-stream")
    return rule["spec"]


def test_promtool_check_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(prometheus_rule_groups(), sort_keys=False))
    res = run([promtool(), "check", "rules", rules])
    assert res.returncode == 0, res.stdout + res.stderr
    alerts = {
        r["alert"] for g in prometheus_rule_groups()["groups"] for r in g["rules"] if "alert" in r
    }
    for required in (
        "HolmesStreamConsumerLagHigh",
        "HolmesStreamDeadLetters",
        "HolmesStreamLLMErrors",
        "HolmesStreamBudgetExhausted",
        "HolmesStreamNoProgress",
    ):
        assert required in alerts


def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(prometheus_rule_groups(), sort_keys=False))
    shutil.copy(DEPLOY / "tests" / "prometheusrule-tests.yaml", tmp_path / "tests.yaml")
    res = run([promtool(), "test", "rules", tmp_path / "tests.yaml"])
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- Grafana dashboard

DASHBOARD = DEPLOY / "grafana" / "holmes-stream-dashboard.json"
_GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    return exprs


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    text = " ".join(dashboard_exprs())
    for metric in (
        "holmes_stream_alerts_consumed_total",
        "holmes_stream_alerts_processed_total",
        "holmes_stream_investigations_in_flight",
        "holmes_stream_investigation_duration_seconds_bucket",
        "holmes_stream_llm_tokens_total",
        "holmes_stream_llm_cost_dollars_total",
        "holmes_stream_alerts_dead_lettered_total",
        "holmes_stream_consumer_lag_messages",
        "holmes_stream_sse_clients",
        "holmes_stream_http_requests_total",
    ):
        assert metric in text, f"dashboard does not chart {metric}"
    assert "histogram_quantile(0.50" in text and "histogram_quantile(0.95" in text


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses each panel query, wrapped as a recording rule."""
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in _GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        expr = re.sub(r"\$\{?(\w+)\}?", r".*", expr)  # $namespace, ${model} -> regex
        rules.append({"record": f"dashboard:panel_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = run([promtool(), "check", "rules", path])
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- metric names

_PROMQL_WORDS = {
    # functions, aggregations, keywords that look like identifiers
    "sum", "max", "min", "avg", "count", "rate", "irate", "increase", "by", "without",
    "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
    "histogram_quantile", "clamp_min", "clamp_max", "abs", "absent", "topk", "bottomk",
    "label_values", "bool", "time", "vector", "scalar", "delta", "deriv", "avg_over_time",
    "max_over_time", "min_over_time", "sum_over_time", "humanize", "le", "inf", "nan",
}  # fmt: skip


def metric_names_in(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {n for n in names if n.lower() not in _PROMQL_WORDS and ":" not in n}


def exposed_sample_names(text: str) -> set[str]:
    """Sample names a Prometheus text exposition can carry, including families that
    have HELP/TYPE lines but no samples yet (labelled metrics before first use)."""
    names: set[str] = set()
    suffixes = {
        "counter": ["", "_total", "_created"],
        "histogram": ["_bucket", "_sum", "_count", "_created"],
        "summary": ["", "_sum", "_count", "_created"],
        "gauge": [""],
        "untyped": [""],
        "unknown": [""],
    }
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + s for s in suffixes.get(kind, [""]))
            if kind == "counter":
                names.add(family)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


@pytest.fixture
def metrics_text() -> str | None:
    """Override (e.g. in conftest.py) to return a live service's /metrics text."""
    return None


@pytest.fixture
def service_metric_names(metrics_text: str | None) -> set[str]:
    if metrics_text is None:
        from prometheus_client import generate_latest

        import holmes_stream.metrics as metrics

        metrics_text = generate_latest(metrics.registry).decode()
    names = {n for n in exposed_sample_names(metrics_text) if n.startswith("holmes_stream_")}
    assert names, "no holmes_stream_* metrics in the exposition"
    return names


def test_metrics_in_rules_exist(service_metric_names: set[str]) -> None:
    used = set()
    for group in prometheus_rule_groups()["groups"]:
        for rule in group["rules"]:
            used |= metric_names_in(rule["expr"])
    missing = sorted(used - service_metric_names - FOREIGN_METRICS)
    assert not missing, f"PrometheusRule uses metrics the service does not expose: {missing}"
    assert any(n.startswith("holmes_stream_") for n in used)


def test_metrics_in_dashboard_exist(service_metric_names: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs() + [
        v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        for v in dash["templating"]["list"]
        if v.get("type") == "query"
    ]
    used = set()
    for expr in exprs:
        expr = re.sub(r"\$\{?\w+\}?", "", expr)
        expr = re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", expr)
        used |= metric_names_in(expr)
    missing = sorted(used - service_metric_names - FOREIGN_METRICS)
    assert not missing, f"dashboard uses metrics the service does not expose: {missing}"


def test_metric_name_extraction() -> None:
    expr = (
        "sum by (namespace, topic) (max by (topic, partition) "
        '(holmes_stream_consumer_lag_messages{topic="alerts"})) > 5 unless on (namespace) '
        "histogram_quantile(0.95, sum by (le) (rate(holmes_stream_x_bucket[5m])))"
    )
    assert metric_names_in(expr) == {
        "holmes_stream_consumer_lag_messages",
        "holmes_stream_x_bucket",
    }
    text = "# HELP a_total x\n# TYPE a_total counter\n# TYPE h histogram\nh_count 1.0\n"
    assert {"a_total", "h_bucket", "h_sum", "h_count"} <= exposed_sample_names(text)


# --------------------------------------------------------------------------- compose


COMPOSE = ROOT / "compose.yaml"


def test_compose_schema() -> None:
    checker = tool("check-jsonschema", TOOLS / "venv" / "bin" / "check-jsonschema")
    res = run([checker, "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_stack() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"kafka", "redis", "worker", "api", "scripted-llm"} <= services.keys()
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--appendonly" in services["redis"]["command"]
    assert services["scripted-llm"]["profiles"] == ["demo"]
    assert services["scripted-llm"]["entrypoint"][:3] == [
        "python", "-m", "holmes_stream.devstack.scripted_llm",
    ]  # fmt: skip
    for name, svc in services.items():
        if name != "kafka-init":
            assert "healthcheck" in svc, f"{name} has no healthcheck"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            if dep in ("kafka", "redis", "scripted-llm"):
                assert cond["condition"] == "service_healthy", (name, dep)
            if "profiles" in services[dep] and "profiles" not in svc:
                assert cond.get("required") is False, f"{name} hard-depends on optional {dep}"
    for role in ("worker", "api"):
        svc = services[role]
        assert svc["build"]["dockerfile"] == "Containerfile"
        assert svc["command"] == [role]
        env = svc["environment"]
        assert env["HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["HOLMES_STREAM_REDIS__URL"].startswith("redis://redis:")
    assert services["api"]["environment"]["HOLMES_STREAM_API__HOST"] == "0.0.0.0"
    # Worker stop grace above the service's 30 s shutdown grace.
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > 30
    init = " ".join(services["kafka-init"]["command"])
    assert f"alerts:{ALERTS_PARTITIONS}" in init


# --------------------------------------------------------------------------- Containerfile

CONTAINERFILE = ROOT / "Containerfile"


def test_hadolint() -> None:
    hadolint = tool("hadolint", TOOLS / "venv" / "bin" / "hadolint")
    res = run([hadolint, "--no-color", "--failure-threshold", "info", CONTAINERFILE])
    assert res.returncode == 0, res.stdout + res.stderr


def containerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined) per build stage."""
    lines: list[str] = []
    current = ""
    for raw in CONTAINERFILE.read_text().splitlines():
        if raw.strip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            if current.strip():
                lines.append(current.strip())
            current = ""
    stages: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_containerfile_policy() -> None:
    stages = containerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    assert "registry.access.redhat.com/ubi9/python-311" in stages[0][0]
    final = stages[-1]
    assert re.search(r"registry\.access\.redhat\.com/ubi9/(ubi-minimal|python-311)", final[0])
    text = "\n".join(final)
    # Only the venv comes from the builder.
    copies = [line for line in final if line.startswith("COPY --from")]
    assert copies and all("/opt/venv" in c for c in copies), copies
    for compiler in ("gcc", "g++", "make ", "-devel", "cmake"):
        assert compiler not in text, f"final stage installs {compiler!r}"
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] == "1001"
    assert any(line.startswith("HEALTHCHECK") and "/health" in line for line in final)
    assert 'ENTRYPOINT ["holmes-stream"]' in text and 'CMD ["api"]' in text
    assert re.search(r"^EXPOSE .*\b18000\b", text, re.M)
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in text
    for label in (
        "name=",
        "vendor=",
        "version=",
        "release=",
        "summary=",
        "description=",
        "io.k8s.description=",
        "io.k8s.display-name=",
        "io.openshift.tags=",
        "com.redhat.component=",
    ):
        assert label in text, f"missing label {label}"


def test_build_context() -> None:
    """Files the Containerfile copies exist and are not excluded by the ignore files."""
    assert (ROOT / ".containerignore").read_text() == (ROOT / ".dockerignore").read_text()
    ignored = {
        line.strip()
        for line in (ROOT / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for stage in containerfile_stages():
        for line in stage:
            if line.startswith("COPY ") and "--from" not in line:
                sources = [a for a in line.split()[1:-1] if not a.startswith("--")]
                for src in sources:
                    assert (ROOT / src).exists(), f"Containerfile copies missing {src}"
                    assert src not in ignored, f"{src} is excluded from the build context"
