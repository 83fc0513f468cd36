"""docker-compose.yml: valid against the Compose Specification, and the stack it runs is
the one README and CONTRACT describe (no Docker engine needed: the file is read)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest
import yaml
from parley_common.topology import PROVIDERS as TOPOLOGY_PROVIDERS
from parley_gateway.settings import GatewaySettings
from parley_worker.consumer import RESULT_PUBLISH_PATIENCE

from tests.deploy import manifests as m

pytestmark = pytest.mark.unit

ALWAYS_ON = {"rabbitmq", "redis", "mongo", "searxng", "provider-sim", "history", "gateway"}


def compose_schema() -> dict[str, Any]:
    schema = json.loads((m.SCHEMAS / "compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def schema_errors(document: object) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(document)]


def seconds(duration: str) -> float:
    """A compose duration ("1m30s", "360s", "70s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so YAML merges can extend it"
    return {k: str(v) for k, v in env.items()}


def default_of(value: str) -> str:
    """The value compose uses when the variable is unset: `${NAME:-default}` -> default."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", value)
    return match[1] if match else value


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    assert schema_errors(m.compose()) == []


def test_the_schema_check_rejects_a_broken_compose_file() -> None:
    """The validation above can fail: a misspelt key and a bad condition are reported."""
    broken = yaml.safe_load(m.COMPOSE_FILE.read_text())
    broken["services"]["gateway"]["depends_on"]["history"]["condition"] = "service_ready"
    broken["services"]["history"]["healthchek"] = {"test": ["CMD", "true"]}
    errors = schema_errors(broken)
    assert any("depends_on" in e for e in errors), errors
    assert any("healthchek" in e for e in errors), errors


def test_the_whole_stack_is_there() -> None:
    services = m.compose_services()
    assert set(services) >= ALWAYS_ON
    for name in ALWAYS_ON:
        assert "profiles" not in services[name], f"{name} runs by default"


def test_one_worker_service_per_provider_runs_that_provider_only() -> None:
    services = m.compose_services()
    workers = {n for n in services if n.startswith("worker")}
    assert workers == {f"worker-{p}" for p in m.PROVIDERS}
    assert set(m.PROVIDERS) == set(TOPOLOGY_PROVIDERS)
    for provider in m.PROVIDERS:
        service = services[f"worker-{provider}"]
        assert service["command"] == ["python", "-m", "parley_worker", "--provider", provider]
        assert m.own_image(m.interpolate(service["image"])) == "parley/inference-worker"


def test_workers_scale_with_compose_scale() -> None:
    """`docker compose up --scale worker-openai=3` needs no fixed name and no host port."""
    for name, service in m.compose_services().items():
        if name.startswith("worker-"):
            assert "container_name" not in service, name
            assert "ports" not in service, name
            assert "hostname" not in service, name


def test_keyless_providers_workers_are_behind_their_profile() -> None:
    """A worker whose provider has no key exits at start; only openai (the simulator when
    keyless) runs by default, every other worker only with its profile."""
    services = m.compose_services()
    assert "profiles" not in services["worker-openai"]
    for provider in set(m.PROVIDERS) - {"openai"}:
        assert services[f"worker-{provider}"]["profiles"] == [provider]


def test_each_worker_sees_its_own_providers_key_only() -> None:
    keys = {
        "claude": {"ANTHROPIC_API_KEY"},
        "openai": {"OPENAI_API_KEY"},
        "groq": {"GROQ_API_KEY"},
        "openrouter": {"OPENROUTER_API_KEY"},
        "google": {"GOOGLE_API_KEY", "GEMINI_API_KEY"},
        "ollama": set(),
    }
    every_key = set().union(*keys.values())
    for provider, own in keys.items():
        env = environment(m.compose_services()[f"worker-{provider}"])
        assert every_key & set(env) == own, provider


def test_every_service_has_a_health_check_and_dependencies_wait_for_it() -> None:
    services = m.compose_services()
    for name, service in services.items():
        if name == "ollama-pull":
            continue  # a one-shot job: its dependants wait for it to complete
        built = "build" in service
        # Our images declare a HEALTHCHECK in their Dockerfile.
        assert built or "healthcheck" in service, f"{name}: no health check"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if condition == "service_healthy":
                dep_service = services[dep]
                assert "healthcheck" in dep_service or "build" in dep_service, (name, dep)
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", (name, dep)
            else:
                assert condition == "service_started", (name, dep)
    for name in ("gateway", "history", *(f"worker-{p}" for p in m.PROVIDERS)):
        for engine in ("rabbitmq", "redis"):
            assert services[name]["depends_on"][engine]["condition"] == "service_healthy"


def test_our_dockerfiles_declare_a_health_check() -> None:
    for dockerfile in m.OWN_IMAGES.values():
        assert re.search(r"^HEALTHCHECK ", (m.ROOT / dockerfile).read_text(), re.MULTILINE)


def test_web_search_is_the_compose_searxng_with_its_json_format_on() -> None:
    services = m.compose_services()
    searxng = services["searxng"]
    mounts = [v for v in searxng["volumes"] if v.endswith(":/etc/searxng/settings.yml:ro")]
    assert len(mounts) == 1
    settings_file = m.ROOT / mounts[0].split(":")[0]
    settings = yaml.safe_load(settings_file.read_text())
    assert "json" in settings["search"]["formats"]
    assert settings["use_default_settings"] is True
    for name in ("gateway", *(f"worker-{p}" for p in m.PROVIDERS)):
        url = default_of(environment(services[name])["WEB_SEARCH_URL"])
        assert url == "http://searxng:8080", name


def test_ollama_profile_pulls_a_small_model_and_points_the_worker_at_it() -> None:
    services = m.compose_services()
    pull, server = services["ollama-pull"], services["ollama"]
    assert pull["profiles"] == server["profiles"] == ["ollama"]
    assert pull["entrypoint"][:2] == ["ollama", "pull"]
    assert pull["depends_on"]["ollama"]["condition"] == "service_healthy"
    worker = services["worker-ollama"]
    assert worker["depends_on"]["ollama-pull"]["condition"] == "service_completed_successfully"
    env = environment(worker)
    assert default_of(env["OLLAMA_HOST"]) == "http://ollama:11434"
    assert default_of(env["OLLAMA_MODEL"]) == default_of(pull["entrypoint"][2])


def test_workers_get_longer_to_stop_than_their_drain() -> None:
    """SIGKILL comes after stop_grace_period: it must exceed SHUTDOWN_GRACE_SECONDS plus
    the time a worker takes to publish the results of the turns it then fails."""
    for provider in m.PROVIDERS:
        service = m.compose_services()[f"worker-{provider}"]
        env = environment(service)
        grace = float(default_of(env["SHUTDOWN_GRACE_SECONDS"]))
        generation = float(default_of(env["MAX_GENERATION_SECONDS"]))
        assert grace >= generation, "a stopping worker lets a whole generation finish"
        needed = grace + RESULT_PUBLISH_PATIENCE + 10
        assert seconds(service["stop_grace_period"]) >= needed, provider


def test_gateway_and_history_get_longer_to_stop_than_their_shutdown() -> None:
    services = m.compose_services()
    field = GatewaySettings.model_fields.get("shutdown_grace_seconds")
    stream_grace = float(field.default) if field else 0.0
    needed = stream_grace + shutdown_timeout("gateway")
    assert seconds(services["gateway"]["stop_grace_period"]) > needed
    assert seconds(services["history"]["stop_grace_period"]) > shutdown_timeout("history")


def shutdown_timeout(service: str) -> float:
    """`web.run_app(..., shutdown_timeout=N)` in the service's __main__ (aiohttp: 60)."""
    main = next((m.ROOT / "services" / service / "src").glob("*/__main__.py")).read_text()
    found = re.search(r"shutdown_timeout\s*=\s*([\d.]+)", main)
    return float(found[1]) if found else 60.0


def test_only_the_gateway_and_the_management_ui_are_published_on_loopback_by_default() -> None:
    for name, service in m.compose_services().items():
        for port in service.get("ports", []):
            assert name in ("gateway", "rabbitmq"), name
            assert port.startswith(("127.0.0.1:", "${GATEWAY_BIND:-127.0.0.1}:")), port


def test_rabbitmq_has_its_management_ui_and_a_long_consumer_timeout() -> None:
    rabbitmq = m.compose_services()["rabbitmq"]
    assert rabbitmq["image"].endswith("-management")
    conf = (m.ROOT / "deploy/compose/rabbitmq.conf").read_text()
    match = re.search(r"^consumer_timeout\s*=\s*(\d+)", conf, re.MULTILINE)
    assert match, "a consumer must be allowed to hold a job for a whole generation"
    worker_env = environment(m.compose_services()["worker-openai"])
    generation = float(default_of(worker_env["MAX_GENERATION_SECONDS"]))
    assert int(match[1]) / 1000 > 2 * generation


def test_mongodb_runs_as_a_single_node_replica_set() -> None:
    services = m.compose_services()
    assert "--replSet" in services["mongo"]["command"]
    assert "replicaSet=rs0" in environment(services["history"])["MONGODB_URL"]
