"""deploy/k8s: every overlay renders, every object is valid for the pinned Kubernetes
versions (custom resources against deploy/schemas/crd-subsets.yaml), and the manifests
agree with the code: probes, queues, drain times, security, who may reach history."""

from __future__ import annotations

import copy
import re
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from parley_common.topology import Topology
from parley_gateway.settings import GatewaySettings
from parley_worker.consumer import RESULT_PUBLISH_PATIENCE
from parley_worker.settings import WorkerSettings

from scripts import k8s_render
from tests.deploy import manifests as m

pytestmark = pytest.mark.unit

# The oldest Kubernetes deploy/k8s/README.md supports, and a current one.
KUBERNETES_VERSIONS = ("1.27", "1.33")
CRD_GROUPS = ("keda.sh", "monitoring.coreos.com")
Obj = dict[str, Any]


def crd_schemas() -> dict[str, Obj]:
    data = yaml.safe_load((m.SCHEMAS / "crd-subsets.yaml").read_text())
    defs = data.pop("$defs")
    return {key: {**schema, "$defs": defs} for key, schema in data.items()}


def is_custom(obj: Obj) -> bool:
    return str(obj["apiVersion"]).split("/")[0] in CRD_GROUPS


def validation_errors(obj: Obj) -> list[str]:
    """Why `obj` is not a valid object (empty when it is)."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if is_custom(obj):
        schema = crd_schemas().get(f"{obj['apiVersion']}/{obj['kind']}")
        if schema is None:
            return [f"{name}: no schema for {obj['apiVersion']}/{obj['kind']} in crd-subsets"]
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{name} {e.json_path}: {e.message}" for e in validator.iter_errors(obj)]
    errors = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{name} (k8s {version}) {exc.json_path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    return errors


def all_objects(overlay: str) -> list[Obj]:
    objs = m.rendered(overlay)
    assert objs, overlay
    return objs


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def env_value(objs: list[Obj], container: Obj, name: str) -> str | None:
    """A variable's literal value in a container: its own env, else the ConfigMaps it loads."""
    if name in env_of(container) and "value" in env_of(container)[name]:
        return str(env_of(container)[name]["value"])
    for source in container.get("envFrom", []):
        if ref := source.get("configMapRef"):
            data = m.by_name(objs, "ConfigMap", ref["name"]).get("data") or {}
            if name in data:
                return str(data[name])
    return None


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels and matchExpressions) matches `labels`."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        present, value = expr["key"] in labels, labels.get(expr["key"])
        match expr["operator"]:
            case "In":
                ok = value in expr["values"]
            case "NotIn":
                ok = value not in expr["values"]
            case "Exists":
                ok = present
            case _:
                ok = not present
        if not ok:
            return False
    return True


def pod_labels(workload: Obj) -> dict[str, str]:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert isinstance(labels, dict)
    return labels


def parley_deployments(objs: list[Obj]) -> list[Obj]:
    return [
        o
        for o in m.of_kind(objs, "Deployment")
        if any(m.own_image(c["image"]) for c in m.containers(o))
        and m.own_image(m.containers(o)[0]["image"]) != "parley/provider-sim"
    ]


def effective(container: Obj, pod: Obj, field: str) -> Any:
    own = (container.get("securityContext") or {}).get(field)
    return own if own is not None else (pod.get("securityContext") or {}).get(field)


# ---- rendering and validity --------------------------------------------------------------


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_rendered_object_is_valid(overlay: str) -> None:
    errors = [e for obj in all_objects(overlay) for e in validation_errors(obj)]
    assert errors == []


def test_secret_template_is_a_valid_secret_without_values() -> None:
    template = yaml.safe_load((m.K8S / "base/secret.template.yaml").read_text())
    assert validation_errors(template) == []
    assert set(template["stringData"].values()) == {""}, "the template holds no value"


@pytest.mark.parametrize(
    ("kind", "break_it"),
    [
        ("Deployment", lambda o: o["spec"]["template"]["spec"].update(securityContex={})),
        ("Deployment", lambda o: o["spec"].update(replicas="two")),
        ("Ingress", lambda o: o["spec"]["rules"][0]["http"]["paths"][0].pop("pathType")),
        ("ScaledObject", lambda o: o["spec"].update(minReplicaCount=-1)),
        ("ScaledObject", lambda o: o["spec"]["triggers"][0]["metadata"].update(value=8)),
        ("TriggerAuthentication", lambda o: o["spec"]["secretTargetRef"][0].pop("key")),
        ("PodMonitor", lambda o: o["spec"].pop("selector")),
    ],
)
def test_validation_rejects_a_broken_object(kind: str, break_it: Any) -> None:
    """The validity check above can fail, for built-in kinds and custom resources alike."""
    objs = all_objects("base")
    objs += yaml.safe_load_all((m.K8S / "components/podmonitor/podmonitor.yaml").read_text())
    obj = copy.deepcopy(next(o for o in objs if o["kind"] == kind))
    assert validation_errors(obj) == []
    break_it(obj)
    assert validation_errors(obj) != []


def test_the_podmonitor_component_is_valid() -> None:
    for obj in yaml.safe_load_all((m.K8S / "components/podmonitor/podmonitor.yaml").read_text()):
        assert validation_errors(obj) == []


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_referenced_secret_key_and_configmap_exists(overlay: str) -> None:
    objs = all_objects(overlay)
    secrets = {o["metadata"]["name"]: set(o.get("data") or {}) for o in m.of_kind(objs, "Secret")}
    maps = {o["metadata"]["name"] for o in m.of_kind(objs, "ConfigMap")}
    for workload in m.of_kind(objs, "Deployment") + m.of_kind(objs, "StatefulSet"):
        for container in m.containers(workload):
            for source in container.get("envFrom", []):
                if ref := source.get("configMapRef"):
                    assert ref["name"] in maps
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ref["key"] in secrets.get(ref["name"], set()), (overlay, env["name"])
    for auth in m.of_kind(objs, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["key"] in secrets[ref["name"]]


def test_secret_template_lists_every_key_the_manifests_use() -> None:
    template = yaml.safe_load((m.K8S / "base/secret.template.yaml").read_text())
    used: set[str] = set()
    objs = all_objects("base")
    for workload in m.of_kind(objs, "Deployment"):
        for container in m.containers(workload):
            for env in container.get("env", []):
                if ref := (env.get("valueFrom") or {}).get("secretKeyRef"):
                    used.add(ref["key"])
    for auth in m.of_kind(objs, "TriggerAuthentication"):
        used |= {ref["key"] for ref in auth["spec"]["secretTargetRef"]}
    assert used <= set(template["stringData"]), used - set(template["stringData"])
    assert set(template["stringData"]) - used <= {"MONGODB_URL"} - used


# ---- Parley's workloads ------------------------------------------------------------------


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_parley_pods_run_restricted(overlay: str) -> None:
    """runAsNonRoot, read-only root filesystem, no privilege escalation, no capabilities,
    RuntimeDefault seccomp; no service-account token and no service-link variables."""
    for workload, container in m.parley_workloads(all_objects(overlay)):
        pod = m.pod_spec(workload)
        name = f"{workload['metadata']['name']}/{container['name']}"
        assert effective(container, pod, "runAsNonRoot") is True, name
        assert (effective(container, pod, "seccompProfile") or {}).get("type") == (
            "RuntimeDefault"
        ), name
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["enableServiceLinks"] is False, name


def test_every_dev_pod_meets_the_restricted_pod_security_standard() -> None:
    """The namespace enforces `restricted`, so the dev engines must meet it too."""
    objs = all_objects("dev")
    namespace = m.of_kind(objs, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for workload in m.of_kind(objs, "Deployment") + m.of_kind(objs, "StatefulSet"):
        pod = m.pod_spec(workload)
        for container in m.containers(workload):
            name = f"{workload['metadata']['name']}/{container['name']}"
            assert effective(container, pod, "runAsNonRoot") is True, name
            seccomp = effective(container, pod, "seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", name
            sc = container.get("securityContext") or {}
            assert sc.get("allowPrivilegeEscalation") is False, name
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], name


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_container_has_resource_requests_and_limits(overlay: str) -> None:
    objs = all_objects(overlay)
    for workload in m.of_kind(objs, "Deployment") + m.of_kind(objs, "StatefulSet"):
        for container in m.containers(workload):
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind) or {}), (
                    workload["metadata"]["name"],
                    kind,
                )


def test_probes_use_the_services_own_routes_and_port() -> None:
    """Liveness /healthz, readiness /readyz, on the named port the service listens on
    (the port its settings are given)."""
    settings_port = {
        "parley/gateway": "GATEWAY_PORT",
        "parley/history": "HISTORY_PORT",
        "parley/inference-worker": "WORKER_PORT",
    }
    objs = all_objects("base")
    for workload, container in m.parley_workloads(objs):
        image = m.own_image(container["image"])
        assert image is not None
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        port_var = settings_port[image]
        assert str(ports["http"]) == env_value(objs, container, port_var), workload["metadata"]


def test_services_select_pods_and_target_their_ports() -> None:
    objs = all_objects("dev")
    workloads = m.of_kind(objs, "Deployment") + m.of_kind(objs, "StatefulSet")
    for service in m.of_kind(objs, "Service"):
        selector = {"matchLabels": service["spec"]["selector"]}
        selected = [w for w in workloads if selects(selector, pod_labels(w))]
        assert selected, service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in selected:
                names = {p.get("name") for c in m.containers(workload) for p in c.get("ports", [])}
                numbers = {
                    p["containerPort"] for c in m.containers(workload) for p in c.get("ports", [])
                }
                assert target in names | numbers, (service["metadata"]["name"], target)


# ---- workers, queues and KEDA ------------------------------------------------------------


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_one_worker_per_provider_scaled_by_keda_on_its_own_queue(overlay: str) -> None:
    objs = all_objects(overlay)
    config = m.by_name(objs, "ConfigMap", "parley-config")["data"]
    topology = Topology(config.get("PARLEY_NAMESPACE", ""))
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in m.of_kind(objs, "ScaledObject")}
    assert set(scaled) == {f"worker-{p}" for p in m.PROVIDERS}
    for provider in m.PROVIDERS:
        deployment = m.by_name(objs, "Deployment", f"worker-{provider}")
        assert "replicas" not in deployment["spec"], "replicas are KEDA's"
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["--provider", provider]
        (trigger,) = scaled[f"worker-{provider}"]["spec"]["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["queueName"] == topology.jobs_queue(provider)
        # One pod per WORKER_CONCURRENCY turns queued or running.
        assert trigger["metadata"]["mode"] == "QueueLength"
        assert trigger["metadata"]["value"] == env_value(objs, container, "WORKER_CONCURRENCY")
        auth = trigger["authenticationRef"]["name"]
        assert m.by_name(objs, "TriggerAuthentication", auth)


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_workers_are_given_longer_than_a_generation_and_its_drain(overlay: str) -> None:
    """SIGTERM: stop consuming, let running turns finish for SHUTDOWN_GRACE_SECONDS
    (at least MAX_GENERATION_SECONDS), then fail the rest and publish their results
    (RESULT_PUBLISH_PATIENCE). SIGKILL must come after all of that."""
    defaults = WorkerSettings.model_fields
    objs = all_objects(overlay)
    for provider in m.PROVIDERS:
        workload = m.by_name(objs, "Deployment", f"worker-{provider}")
        (container,) = m.containers(workload)
        grace = float(
            env_value(objs, container, "SHUTDOWN_GRACE_SECONDS")
            or defaults["shutdown_grace_seconds"].default
        )
        generation = float(
            env_value(objs, container, "MAX_GENERATION_SECONDS")
            or defaults["max_generation_seconds"].default
        )
        assert grace >= generation, provider
        needed = grace + RESULT_PUBLISH_PATIENCE + 10
        assert m.pod_spec(workload)["terminationGracePeriodSeconds"] >= needed, provider


def _pre_stop_seconds(container: Obj) -> float:
    command = (container.get("lifecycle") or {}).get("preStop", {}).get("exec", {}).get("command")
    return float(command[1]) if command and command[0] == "sleep" else 0.0


def _run_app_shutdown_timeout(service: str) -> float:
    """`web.run_app(..., shutdown_timeout=N)` in the service's __main__ (aiohttp: 60)."""
    main = next((m.ROOT / "services" / service / "src").glob("*/__main__.py")).read_text()
    found = re.search(r"shutdown_timeout\s*=\s*([\d.]+)", main)
    return float(found[1]) if found else 60.0


def test_gateway_and_history_stop_within_their_grace() -> None:
    objs = all_objects("base")
    gateway = m.by_name(objs, "Deployment", "gateway")
    (container,) = m.containers(gateway)
    field = GatewaySettings.model_fields.get("shutdown_grace_seconds")
    stream_grace = float(
        env_value(objs, container, "SHUTDOWN_GRACE_SECONDS") or (field.default if field else 0)
    )
    needed = _pre_stop_seconds(container) + stream_grace + _run_app_shutdown_timeout("gateway")
    assert m.pod_spec(gateway)["terminationGracePeriodSeconds"] > needed
    history = m.by_name(objs, "Deployment", "history")
    (container,) = m.containers(history)
    needed = _pre_stop_seconds(container) + _run_app_shutdown_timeout("history")
    assert m.pod_spec(history)["terminationGracePeriodSeconds"] > needed


# ---- scaling and disruption --------------------------------------------------------------


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_gateway_scales_with_an_hpa_on_cpu(overlay: str) -> None:
    objs = all_objects(overlay)
    (hpa,) = m.of_kind(objs, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gateway")
    gateway = m.by_name(objs, "Deployment", "gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    (container,) = m.containers(gateway)
    assert "cpu" in container["resources"]["requests"], "Utilization is relative to requests"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_every_parley_deployment_has_a_disruption_budget(overlay: str) -> None:
    objs = all_objects(overlay)
    budgets = m.of_kind(objs, "PodDisruptionBudget")
    for deployment in parley_deployments(objs):
        matching = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(matching) == 1, deployment["metadata"]["name"]
        assert matching[0]["spec"].get("maxUnavailable") == 1


# ---- network -----------------------------------------------------------------------------


def test_ingress_is_denied_by_default_and_history_admits_only_gateway_and_workers() -> None:
    objs = all_objects("dev")
    policies = m.of_kind(objs, "NetworkPolicy")
    default_deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert default_deny and "ingress" not in default_deny[0]["spec"]
    assert default_deny[0]["spec"]["policyTypes"] == ["Ingress"]
    history = m.by_name(objs, "Deployment", "history")
    applying = [
        p
        for p in policies
        if p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], pod_labels(history))
    ]
    assert len(applying) == 1
    pods = m.of_kind(objs, "Deployment") + m.of_kind(objs, "StatefulSet")
    admitted: set[str] = set()
    for rule in applying[0]["spec"]["ingress"]:
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                # Metrics scraping only, from the monitoring namespace.
                assert set(peer) == {"namespaceSelector"}
                labels = peer["namespaceSelector"]["matchLabels"]
                assert labels == {"kubernetes.io/metadata.name": "monitoring"}
                continue
            admitted |= {
                p["metadata"]["name"] for p in pods if selects(peer["podSelector"], pod_labels(p))
            }
    assert admitted == {"gateway", *(f"worker-{p}" for p in m.PROVIDERS)}


def _annotation_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m|h)?", value)
    assert match, value
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600, None: 1}[match[2]]


def _bytes(size: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg])?", size.lower())
    assert match, size
    return int(match[1]) * {"k": 1024, "m": 1024**2, "g": 1024**3, None: 1}[match[2]]


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_ingress_is_set_up_for_server_sent_events(overlay: str) -> None:
    objs = all_objects(overlay)
    (ingress,) = m.of_kind(objs, "Ingress")
    notes = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert notes[prefix + "proxy-buffering"] == "off"
    assert notes[prefix + "proxy-request-buffering"] == "off"
    config = m.by_name(objs, "ConfigMap", "parley-config")["data"]
    fields = GatewaySettings.model_fields
    deadline = float(config.get("JOB_DEADLINE_SECONDS", fields["job_deadline_seconds"].default))
    # A JSON chat request waits silently for up to JOB_DEADLINE_SECONDS + 60.
    assert _annotation_seconds(notes[prefix + "proxy-read-timeout"]) > deadline + 60
    send_timeout = float(fields["sse_send_timeout"].default)
    assert _annotation_seconds(notes[prefix + "proxy-send-timeout"]) > send_timeout
    assert _bytes(notes[prefix + "proxy-body-size"]) >= fields["max_body_bytes"].default
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["path"] == "/api", "probes and /metrics stay inside the cluster"
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway"
            service = m.by_name(objs, "Service", "gateway")
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_prod_pins_its_images_and_runs_no_engine_or_simulator() -> None:
    objs = all_objects("prod")
    images = [c["image"] for w in m.of_kind(objs, "Deployment") for c in m.containers(w)]
    assert images
    for image in images:
        own = m.own_image(image)
        assert own in {"parley/gateway", "parley/history", "parley/inference-worker"}
        name, tag, digest = k8s_render.split_image(image)
        assert name != own, f"{image}: pulled from a registry of yours"
        assert digest or (tag and tag not in ("latest", "dev")), image
    assert not m.of_kind(objs, "StatefulSet")
