"""What the deploy tests read: the compose file, the rendered Kubernetes overlays, the
settings every service reads, and the files that name images and variables."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from parley_gateway.settings import GatewaySettings
from parley_history.settings import HistorySettings
from parley_worker.settings import WorkerSettings
from pydantic_settings import BaseSettings

from scripts import k8s_render

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
SCHEMAS = ROOT / "deploy" / "schemas"
K8S = ROOT / "deploy" / "k8s"
CODE_DIRS = [ROOT / "services", ROOT / "libs", ROOT / "tools"]
# Where CI and every checkout keep the project's contract: beside the repository.
CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"

OVERLAYS = ("base", "dev", "prod")
PROVIDERS = ("claude", "openai", "groq", "openrouter", "google", "ollama")
# The images this repository builds: image name -> its Dockerfile.
OWN_IMAGES = {
    "parley/gateway": "services/gateway/Dockerfile",
    "parley/history": "services/history/Dockerfile",
    "parley/inference-worker": "services/inference-worker/Dockerfile",
    "parley/provider-sim": "tools/provider-sim/Dockerfile",
}
# Each service's settings, by the image that runs it.
SETTINGS: dict[str, type[BaseSettings]] = {
    "parley/gateway": GatewaySettings,
    "parley/history": HistorySettings,
    "parley/inference-worker": WorkerSettings,
}

Obj = dict[str, Any]


@functools.cache
def compose() -> Obj:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_services() -> dict[str, Obj]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


@functools.cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(k8s_render.render(overlay))


def rendered(overlay: str) -> list[Obj]:
    """The overlay's objects (a fresh copy: tests may not change each other's)."""
    return [yaml.safe_load(yaml.safe_dump(o)) for o in _rendered(overlay)]


def of_kind(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def by_name(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def parley_workloads(objs: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container that runs one of our own images."""
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in containers(obj):
            if image_name(container["image"]) in OWN_IMAGES or any(
                container["image"].endswith("/" + own) for own in OWN_IMAGES
            ):
                yield obj, container


def image_name(image: str) -> str:
    name, _, _ = k8s_render.split_image(image)
    return name


def own_image(image: str) -> str | None:
    """Which of our images this reference is (a prod registry prefix allowed)."""
    name = image_name(image)
    for own in OWN_IMAGES:
        if name == own or name.endswith("/" + own):
            return own
    return None


def settings_fields(cls: type[BaseSettings]) -> set[str]:
    """The environment variable names a settings class reads."""
    return {name.upper() for name in cls.model_fields}


@functools.cache
def variables_read_by_code() -> frozenset[str]:
    """Every variable some service reads: settings fields, and names the code looks up
    itself (os.environ / getenv with a literal)."""
    names: set[str] = set()
    for cls in SETTINGS.values():
        names |= settings_fields(cls)
    lookup = re.compile(r"""(?:environ(?:\.get)?\(?\[?|getenv\()\s*["']([A-Z][A-Z0-9_]*)["']""")
    for directory in CODE_DIRS:
        for path in directory.rglob("*.py"):
            names.update(lookup.findall(path.read_text()))
    return frozenset(names)


def env_example_variables() -> list[str]:
    """The variables .env.example lists (as `NAME=` or `# NAME=` lines)."""
    line = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=", re.MULTILINE)
    return line.findall(ENV_EXAMPLE.read_text())


def compose_interpolated() -> dict[str, str | None]:
    """Variables docker-compose.yml interpolates, with their `:-` defaults (None: none)."""
    found: dict[str, str | None] = {}
    text = COMPOSE_FILE.read_text().replace("$$", "")
    for match in re.finditer(r"\$\{([A-Z][A-Z0-9_]*)(:?-([^}]*))?\}", text):
        found.setdefault(match[1], match[3] if match[2] else None)
    return found


def interpolate(value: str) -> str:
    """A compose value as compose sees it with nothing set: `${NAME:-default}` -> default."""
    return re.sub(r"\$\{[A-Z][A-Z0-9_]*(?::?-([^}]*))?\}", lambda m: m[1] or "", value)


def contract_variables() -> set[str]:
    """The environment variables CONTRACT.md names (backquoted UPPER_CASE words)."""
    text = CONTRACT.read_text()
    return set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)(?:=[^`]*)?`", text))
