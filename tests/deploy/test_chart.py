"""The Helm chart: lint and render over ci/, offline schema validation, and what the pods get."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart_tools import CHART, FAILING, NAMESPACE, PASSING, RELEASE, find_tool, helm_template, only, run
from tests.deploy.promql import TARGET_LABELS, metric_table, names_and_labels, series_names

CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "ScaledObject"}
FULLNAME = f"{RELEASE}-circuit-serve"


def container(docs: list[dict]) -> dict:
    (c,) = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def flag(args: list[str], name: str) -> str | None:
    """The value following a flag in the container args (None when absent)."""
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("values", PASSING, ids=lambda p: p.name)
def test_lint(values: Path):
    done = run([find_tool("helm"), "lint", str(CHART), "--strict", "-f", str(values)])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", FAILING, ids=lambda p: p.name)
def test_must_fail_to_render(values: Path):
    done = helm_template(values)
    assert done.returncode != 0, f"{values.name} rendered"
    first = values.read_text().splitlines()[0]
    assert first.startswith("# Must fail"), "each *-fail values file says why on its first line"
    assert "execution error" in done.stderr and ("required" in done.stderr or "needs" in done.stderr), done.stderr


def test_no_model_names_the_value():
    done = helm_template(CHART / "ci" / "no-model-fail-values.yaml")
    assert "model.name is required" in done.stderr


def test_schema_rejects_unknown_values():
    done = helm_template(CHART / "ci" / "default-values.yaml", "--set", "server.gracePeriod=30")
    assert done.returncode != 0 and "gracePeriod" in done.stderr


@pytest.mark.parametrize("values", PASSING, ids=lambda p: p.name)
def test_objects_validate_against_kubernetes_schemas(values: Path, render, tmp_path):
    """Built-in kinds: kubernetes-validate --strict (unknown fields rejected); CRDs: by shape below."""
    docs = render(values.name)
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    done = run([find_tool("kubernetes-validate"), "--strict", "--quiet", str(path)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Couldn't find schema" not in done.stdout + done.stderr


def test_validator_is_strict(tmp_path, render):
    """The validator does reject an unknown field (so the test above means something)."""
    deploy = only(render("default-values.yaml"), "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["grpcc"] = {"port": 1}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(deploy))
    done = run([find_tool("kubernetes-validate"), "--strict", "--quiet", str(path)])
    assert done.returncode != 0


def test_default_pod(render):
    docs = render("default-values.yaml")
    deploy = only(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    c = container(docs)
    args = c["args"]
    assert c["command"] == ["/app/.venv/bin/circuit-serve", "serve"]
    assert flag(args, "--model") == "/models/gemma-2-2b"
    assert flag(args, "--port") == "50051" and flag(args, "--metrics-port") == "9090"
    assert flag(args, "--host") == "0.0.0.0" and flag(args, "--metrics-host") == "0.0.0.0"
    assert "--health-port" not in args and "--tls-cert" not in args
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9090}
    # probes: native gRPC on the gRPC port (plaintext), startup budget for a large model
    assert c["startupProbe"]["grpc"] == {"port": 50051, "service": ""}
    assert c["readinessProbe"]["grpc"] == {"port": 50051, "service": "circuit.v1.Generation"}
    assert c["livenessProbe"]["grpc"] == {"port": 50051, "service": ""}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200
    # grace: preStop sleep + --grace-period + margin, so the drain finishes before SIGKILL
    grace = int(flag(args, "--grace-period"))
    sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] == sleep + grace + 15
    assert pod["terminationGracePeriodSeconds"] > sleep + grace
    # model volume mounted read-only where --model points
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is True
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["models"]["persistentVolumeClaim"] == {"claimName": "models"}


def test_security_context(render):
    docs = render("default-values.yaml")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001 and psc["fsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True and csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]
    # the writable places a read-only root needs: /tmp and the cache directory, both emptyDir
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in vols[mounts["/tmp"]]
    cache_dir = flag(c["args"], "--cache-dir")
    cache_mount = next(p for p in mounts if cache_dir.startswith(p + "/"))
    assert "emptyDir" in vols[mounts[cache_mount]]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["XDG_CACHE_HOME"] == cache_mount
    assert pod["automountServiceAccountToken"] is False


def test_services(render):
    docs = render("default-values.yaml")
    selector = only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    headless = only(docs, "Service", "-headless")
    assert headless["metadata"]["name"] == f"{FULLNAME}-headless"
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == selector
    assert headless["spec"]["ports"] == [
        {"name": "grpc", "port": 50051, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}
    ]
    metrics = only(docs, "Service", "-metrics")
    assert metrics["spec"]["type"] == "ClusterIP" and "clusterIP" not in metrics["spec"]
    assert metrics["spec"]["selector"] == selector
    assert [(p["name"], p["port"], p["targetPort"]) for p in metrics["spec"]["ports"]] == [("metrics", 9090, "metrics")]
    pdb = only(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["maxUnavailable"] == 1


def test_tls_tokens_redis(render):
    docs = render("tls-tokens-values.yaml")
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    c = container(docs)
    args = c["args"]
    # TLS: the kubelet's plaintext gRPC probes go to the health port the server opens with --health-port
    assert flag(args, "--health-port") == "50052"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 50052, probe
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == 50052
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert flag(args, "--tls-cert") == f"{mounts['tls']}/tls.crt"
    assert flag(args, "--tls-key") == f"{mounts['tls']}/tls.key"
    assert flag(args, "--tls-client-ca") == f"{mounts['tls']}/ca.crt"
    assert vols["tls"]["secret"]["secretName"] == "circuit-serve-cert"  # the existing Secret
    # tokens: a chart-made Secret holding tokens.yaml, mounted where --auth-tokens points
    assert flag(args, "--auth-tokens") == f"{mounts['auth']}/tokens.yaml"
    secret = only(docs, "Secret", "-auth")
    assert vols["auth"]["secret"]["secretName"] == secret["metadata"]["name"]
    tokens = yaml.safe_load(secret["stringData"]["tokens.yaml"])
    assert tokens[0]["name"] == "alice" and len(tokens[0]["sha256"]) == 64
    # grace period from the one value
    assert flag(args, "--grace-period") == "60" and pod["terminationGracePeriodSeconds"] == 5 + 60 + 15
    # HF cache, offline
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1" and env["HF_HOME"]["value"] == mounts["hf-cache"]
    # Redis: the URL in CIRCUIT_REDIS_URL with the password expanded by the kubelet from a Secret
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "redis", "key": "redis-password"}
    assert env["CIRCUIT_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis-master.redis.svc.cluster.local:6379/0"
    names = [e["name"] for e in c["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("CIRCUIT_REDIS_URL")  # $(VAR) needs it defined first
    assert "--redis-url" not in args
    # the watchlist and labels files
    cm = only(docs, "ConfigMap", "-features")
    assert flag(args, "--watchlist") == f"{mounts['features']}/watchlist.yaml"
    assert yaml.safe_load(cm["data"]["watchlist.yaml"])[0]["name"] == "made-up-citation"


def test_tls_secret_made_from_values(render):
    docs = render("default-values.yaml", "--set", "tls.enabled=true", "--set", "tls.cert=CERT", "--set", "tls.key=KEY")
    secret = only(docs, "Secret", "-tls")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key"}
    c = container(docs)
    assert "--tls-client-ca" not in c["args"] and c["livenessProbe"]["grpc"]["port"] == 50052


def test_optional_objects_off_by_default(render):
    kinds = {d["kind"] for d in render("default-values.yaml")}
    assert not kinds & CRD_KINDS
    assert not any(d["metadata"]["name"].endswith("-dashboard") for d in render("default-values.yaml"))


def test_service_monitor(render):
    docs = render("observability-values.yaml")
    sm = only(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    metrics = only(docs, "Service", "-metrics")
    sel = sm["spec"]["selector"]["matchLabels"]
    assert all(metrics["metadata"]["labels"].get(k) == v for k, v in sel.items())
    headless = only(docs, "Service", "-headless")
    assert not all(headless["metadata"]["labels"].get(k) == v for k, v in sel.items()), (
        "scrape the metrics Service only"
    )
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert (
        ep["port"] == "metrics"
        and ep["path"] == "/metrics"
        and set(ep) <= {"port", "path", "interval", "scrapeTimeout"}
    )


def test_keda_scaled_object(render):
    docs = render("observability-values.yaml")
    so = only(docs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 8)
    assert "replicas" not in only(docs, "Deployment")["spec"], "KEDA owns the replica count"
    series = series_names(metric_table())
    metrics_seen = set()
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert meta["serverAddress"] == "http://prometheus-operated.monitoring.svc:9090"
        assert float(meta["threshold"]) > 0 and isinstance(meta["threshold"], str)
        names, labels = names_and_labels(meta["query"])
        (name,) = names
        metrics_seen.add(name)
        assert labels <= series[name] | TARGET_LABELS, labels
        # summed over this release's pods: the namespace and the metrics Service the ServiceMonitor scrapes
        assert f'namespace="{NAMESPACE}"' in meta["query"] and f'job="{FULLNAME}-metrics"' in meta["query"]
        assert meta["query"].startswith("sum(")
    assert metrics_seen == {"vllm:num_requests_waiting", "circuit_attribution_queue_depth"}


def test_prometheus_rule_is_the_rules_file(render):
    docs = render("observability-values.yaml")
    rule = only(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    source = yaml.safe_load((CHART / "prometheus" / "rules.yaml").read_text())
    rendered = rule["spec"]
    assert set(rendered) == {"groups"}
    for group_src, group in zip(source["groups"], rendered["groups"], strict=True):
        for src, got in zip(group_src["rules"], group["rules"], strict=True):
            assert set(got) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            if src["alert"] == "CircuitServeTTFTAboveSLO":
                assert "> 1.5 # ttftP99SloSeconds" in got["expr"]  # prometheusRule.ttftP99SloSeconds
                got = {**got, "expr": got["expr"].replace("> 1.5 #", "> 2 #")}
            assert got == src


def test_dashboard_config_map(render):
    docs = render("observability-values.yaml")
    cm = only(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["circuit-serve.json"].strip() == (CHART / "dashboards" / "circuit-serve.json").read_text().strip()


def test_notes_render(render):
    """helm template leaves NOTES.txt out; install --dry-run=client renders it, offline."""
    done = run(
        [
            find_tool("helm"),
            "install",
            RELEASE,
            str(CHART),
            "-n",
            NAMESPACE,
            "--dry-run=client",
            "-f",
            str(CHART / "ci" / "default-values.yaml"),
        ]
    )
    assert done.returncode == 0, done.stderr
    assert f"dns:///{FULLNAME}-headless.{NAMESPACE}.svc.cluster.local:50051" in done.stdout
    assert re.search(r"startup probe allows\s+1800 s", done.stdout)
