"""What compose, Kubernetes, the Dockerfiles and .env.example name exists: each image is
built here or pinned, each port and probe path is served by the code, each variable set
for a Parley container is read by it, and .env.example lists every variable there is."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator

import pytest
import yaml

from scripts import k8s_render
from tests.deploy import manifests as m

pytestmark = pytest.mark.unit

# A third-party image is pinned when its tag names an exact release: x.y.z (any suffix,
# e.g. -management, -slim-bookworm) or a dated build (SearXNG: 2024.9.6-<commit>).
PINNED_TAG = re.compile(r"^v?\d+\.\d+\.\d+([.-][A-Za-z0-9.-]+)?$")
# Read by KEDA (TriggerAuthentication), not by a Parley process.
KEDA_ONLY = {"RABBITMQ_MANAGEMENT_URL"}
# Read by docker compose itself.
COMPOSE_OWN = {"COMPOSE_PROFILES"}
# Each service's listen-port variable and settings field.
LISTEN = {
    "parley/gateway": ("GATEWAY_PORT", "gateway_port"),
    "parley/history": ("HISTORY_PORT", "history_port"),
    "parley/inference-worker": ("WORKER_PORT", "worker_port"),
}


def all_images() -> Iterator[tuple[str, str]]:
    """(where, image) for every image compose and the rendered overlays name."""
    for name, service in m.compose_services().items():
        yield f"compose {name}", m.interpolate(service["image"])
    for overlay in m.OVERLAYS:
        for obj in m.rendered(overlay):
            if obj["kind"] in ("Deployment", "StatefulSet"):
                for container in m.containers(obj):
                    yield f"{overlay} {obj['metadata']['name']}", container["image"]


def dockerfile(image: str) -> str:
    return (m.ROOT / m.OWN_IMAGES[image]).read_text()


def arg_default(text: str, name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", text, re.MULTILINE)
    assert match, name
    return match[1]


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.MULTILINE)[-1]


def code_routes() -> set[str]:
    """Every path an aiohttp router of ours registers with a literal."""
    routes: set[str] = set()
    pattern = re.compile(
        r"""add_(?:get|post|put|patch|delete|route)\(\s*(?:"[A-Z]+",\s*)?f?"(/[^"]*)\""""
    )
    for directory in m.CODE_DIRS:
        for path in directory.rglob("*.py"):
            routes.update(pattern.findall(path.read_text()))
    return routes


# ---- images --------------------------------------------------------------------------------


def test_every_image_is_built_here_or_pinned_to_a_release() -> None:
    for where, image in all_images():
        if m.own_image(image):
            continue
        _, tag, digest = k8s_render.split_image(image)
        assert digest or (tag and PINNED_TAG.match(tag)), f"{where}: {image} is not pinned"


def test_our_images_are_built_by_their_dockerfiles() -> None:
    seen = {m.own_image(image) for _, image in all_images()} - {None}
    assert seen == set(m.OWN_IMAGES)
    for name, service in m.compose_services().items():
        own = m.own_image(m.interpolate(service["image"]))
        if own is None:
            assert "build" not in service, name
            continue
        assert service["build"]["context"] == "."
        assert service["build"]["dockerfile"] == m.OWN_IMAGES[own], name


@pytest.mark.parametrize("image", sorted(m.OWN_IMAGES))
def test_dockerfile_is_multi_stage_from_the_lock_with_pinned_bases(image: str) -> None:
    text = dockerfile(image)
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 3  # uv, build, runtime
    python = arg_default(text, "PYTHON_IMAGE")
    version = (m.ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(rf"python:{re.escape(version)}\.\d+-slim-bookworm", python), python
    assert re.fullmatch(r"\d+\.\d+\.\d+", arg_default(text, "UV_VERSION"))
    assert "FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv" in text
    # Built from uv.lock exactly, without dev dependencies.
    syncs = re.findall(r"uv sync ([^\n]+)", text)
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), syncs


@pytest.mark.parametrize("image", sorted(m.OWN_IMAGES))
def test_final_stage_runs_as_non_root_without_build_tools(image: str) -> None:
    runtime = final_stage(dockerfile(image))
    assert runtime.startswith("${PYTHON_IMAGE} AS runtime")
    users = re.findall(r"^USER (\S+)", runtime, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("0", "root"), users
    # Only the built virtualenv comes over: no uv, no compiler, no package installs.
    assert re.findall(r"^COPY --from=(\S+)", runtime, re.MULTILINE) == ["build"]
    for tool in ("apt-get install", "pip install", "gcc", "build-essential", "/uv"):
        assert tool not in runtime, tool


@pytest.mark.parametrize("image", sorted(m.SETTINGS))
def test_image_listens_where_its_settings_say_and_probes_a_served_path(image: str) -> None:
    runtime = final_stage(dockerfile(image))
    variable, field = LISTEN[image]
    default_port = m.SETTINGS[image].model_fields[field].default
    assert re.search(rf"^EXPOSE {default_port}$", runtime, re.MULTILINE)
    assert f"{variable}={default_port}" in runtime
    assert f"{variable.replace('_PORT', '_HOST')}=0.0.0.0" in runtime
    assert "/healthz" in runtime
    assert "/healthz" in code_routes()


def test_dockerignore_keeps_secrets_and_junk_out_but_not_what_images_copy() -> None:
    patterns = [
        line.strip()
        for line in (m.ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(
            fnmatch.fnmatch(path, p)
            or fnmatch.fnmatch(path, p.removeprefix("**/"))
            or path.startswith(p.rstrip("/") + "/")
            for p in patterns
        )

    for must in (".git", ".venv", ".env", ".env.local", "tests", ".run"):
        assert ignored(must), must
    for image in m.OWN_IMAGES:
        for source in re.findall(r"^COPY (?!--)(\S+)", dockerfile(image), re.MULTILINE):
            assert not ignored(source.rstrip("/")), (image, source)
        for source in re.findall(r"source=(\S+?),", dockerfile(image)):
            assert not ignored(source), (image, source)


# ---- ports and probe paths -----------------------------------------------------------------


def test_probe_and_metrics_paths_are_served_by_every_service() -> None:
    routes = code_routes()
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    paths = set()
    for overlay in m.OVERLAYS:
        for workload, container in m.parley_workloads(m.rendered(overlay)):
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if "httpGet" in container.get(probe, {}):
                    paths.add(container[probe]["httpGet"]["path"])
            notes = workload["spec"]["template"]["metadata"].get("annotations", {})
            if "prometheus.io/path" in notes:
                paths.add(notes["prometheus.io/path"])
    podmonitor = yaml.safe_load((m.K8S / "components/podmonitor/podmonitor.yaml").read_text())
    paths |= {e["path"] for e in podmonitor["spec"]["podMetricsEndpoints"]}
    assert paths and paths <= routes, paths - routes
    assert any(r.startswith("/api/") for r in routes), "the Ingress routes /api"


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_container_ports_are_the_ports_the_services_listen_on(overlay: str) -> None:
    for workload, container in m.parley_workloads(m.rendered(overlay)):
        own = m.own_image(container["image"])
        if own not in LISTEN:
            continue
        variable, field = LISTEN[own]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        port = int(env.get(variable) or m.SETTINGS[own].model_fields[field].default)
        assert [p["containerPort"] for p in container["ports"]] == [port], workload["metadata"]
        host = env.get(variable.replace("_PORT", "_HOST"))
        assert host == "0.0.0.0", "listen on the pod's address, not loopback"
        notes = workload["spec"]["template"]["metadata"]["annotations"]
        assert notes["prometheus.io/port"] == str(port)


def test_compose_addresses_are_the_ports_the_services_listen_on() -> None:
    services = m.compose_services()
    gateway_port = m.SETTINGS["parley/gateway"].model_fields["gateway_port"].default
    assert services["gateway"]["ports"][0].endswith(f":{gateway_port}")
    history_port = m.SETTINGS["parley/history"].model_fields["history_port"].default
    for name, service in services.items():
        if url := (service.get("environment") or {}).get("HISTORY_URL"):
            assert url == f"http://history:{history_port}", name
    assert services["searxng"]["healthcheck"]["test"][-1].endswith("/healthz")


# ---- environment variables -----------------------------------------------------------------


def _own_container_env_names() -> Iterator[tuple[str, str]]:
    for name, service in m.compose_services().items():
        if m.own_image(m.interpolate(service["image"])) in m.SETTINGS:
            for variable in service.get("environment") or {}:
                yield f"compose {name}", variable
    for overlay in m.OVERLAYS:
        objs = m.rendered(overlay)
        for workload, container in m.parley_workloads(objs):
            if m.own_image(container["image"]) in m.SETTINGS:
                for env in container.get("env", []):
                    yield f"{overlay} {workload['metadata']['name']}", env["name"]
        for config in m.of_kind(objs, "ConfigMap"):
            if config["metadata"]["name"] == "parley-config":
                for variable in config["data"]:
                    yield f"{overlay} ConfigMap", variable
        for secret in m.of_kind(objs, "Secret"):
            for variable in secret.get("data") or {}:
                yield f"{overlay} Secret {secret['metadata']['name']}", variable


def test_every_variable_set_for_a_parley_container_is_read_by_the_code() -> None:
    read = m.variables_read_by_code()
    template = yaml.safe_load((m.K8S / "base/secret.template.yaml").read_text())
    sources = [*_own_container_env_names()]
    sources += [("secret.template", k) for k in template["stringData"]]
    prod = (m.K8S / "overlays/prod/secrets.env.example").read_text()
    prod_keys = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", prod, re.MULTILINE)
    sources += [("secrets.env.example", k) for k in prod_keys]
    unread = sorted({f"{where}: {name}" for where, name in sources if name not in read | KEDA_ONLY})
    assert unread == []


def test_the_keda_only_variable_is_used_by_keda() -> None:
    auths = m.of_kind(m.rendered("base"), "TriggerAuthentication")
    assert {r["key"] for a in auths for r in a["spec"]["secretTargetRef"]} == KEDA_ONLY


def test_the_unread_variable_check_can_fail() -> None:
    assert "GATEWAY_PORTT" not in m.variables_read_by_code()
    assert "GATEWAY_PORT" in m.variables_read_by_code()


def test_env_example_lists_every_variable_once_each_read_or_used_by_compose() -> None:
    listed = m.env_example_variables()
    assert len(listed) == len(set(listed)), sorted({v for v in listed if listed.count(v) > 1})
    interpolated = set(m.compose_interpolated())
    unknown = set(listed) - m.variables_read_by_code() - interpolated - COMPOSE_OWN
    assert unknown == set()


def test_env_example_lists_every_variable_the_code_and_compose_read() -> None:
    listed = set(m.env_example_variables())
    missing = (m.variables_read_by_code() | set(m.compose_interpolated()) | COMPOSE_OWN) - listed
    assert missing == set()


def test_env_example_lists_every_contract_variable() -> None:
    if not m.CONTRACT.is_file():
        pytest.skip(f"no CONTRACT.md at {m.CONTRACT}")
    contract = m.contract_variables()
    assert len(contract) > 30, "CONTRACT.md's tables were read"
    assert contract - set(m.env_example_variables()) == set()
    assert contract <= m.variables_read_by_code()


def test_env_example_sets_nothing() -> None:
    """Copied to .env it changes nothing: every assignment is commented out."""
    for line in m.ENV_EXAMPLE.read_text().splitlines():
        assert not line or line.startswith("#"), line
