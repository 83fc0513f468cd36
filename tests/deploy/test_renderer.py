"""scripts/k8s_render.py renders the overlays as kustomize does, and refuses what it does
not implement (so a kustomize feature is never silently ignored)."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts import k8s_render
from tests.deploy import manifests as m

pytestmark = pytest.mark.unit


def _normalised(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects by kind and name, Secret data decoded (kubectl folds long base64 lines)."""
    out = {}
    for obj in objs:
        obj = yaml.safe_load(yaml.safe_dump(obj))
        if obj["kind"] == "Secret":
            obj["data"] = {
                k: base64.b64decode("".join(v.split())).decode()
                for k, v in (obj.get("data") or {}).items()
            }
        out[(obj["kind"], obj["metadata"]["name"])] = obj
    return out


def _binary_renders() -> bool:
    if k8s_render.kustomize_command() is None:
        return False
    try:
        k8s_render.render_with_binary("base")
    except (k8s_render.RenderError, OSError, subprocess.TimeoutExpired):
        return False
    return True


@pytest.mark.parametrize("overlay", m.OVERLAYS)
def test_renders_what_kustomize_renders(overlay: str) -> None:
    if not _binary_renders():
        pytest.skip("no working kustomize or kubectl on PATH to compare with")
    ours = _normalised(k8s_render.render(overlay))
    theirs = _normalised(k8s_render.render_with_binary(overlay))
    assert sorted(ours) == sorted(theirs)
    for key, obj in ours.items():
        assert obj == theirs[key], key


def test_every_overlay_renders_with_the_namespace_and_tags_set() -> None:
    for overlay in m.OVERLAYS:
        objs = k8s_render.render(overlay)
        for obj in objs:
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == "parley", obj["metadata"]
    dev_images = {c["image"] for w in m.rendered("dev") for c in _containers(w)}
    assert "parley/gateway:dev" in dev_images
    prod_images = {c["image"] for w in m.rendered("prod") for c in _containers(w)}
    assert "registry.example.com/parley/gateway:0.1.0" in prod_images


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] not in ("Deployment", "StatefulSet"):
        return []
    return m.containers(obj)


def test_strategic_merge_merges_containers_and_env_by_name() -> None:
    target = {
        "spec": {
            "replicas": 2,
            "containers": [
                {"name": "a", "image": "x", "env": [{"name": "K", "value": "1"}]},
                {"name": "b", "image": "y"},
            ],
        }
    }
    patch = {
        "spec": {
            "replicas": None,
            "containers": [{"name": "a", "env": [{"name": "K", "value": "2"}, {"name": "N"}]}],
        }
    }
    merged = k8s_render.strategic_merge(target, patch, builtin=True)
    assert "replicas" not in merged["spec"]
    a, b = merged["spec"]["containers"]
    assert a == {"name": "a", "image": "x", "env": [{"name": "K", "value": "2"}, {"name": "N"}]}
    assert b == {"name": "b", "image": "y"}
    # A custom resource's lists are replaced, as kustomize does without merge keys.
    custom = k8s_render.strategic_merge({"l": [{"name": "a"}]}, {"l": [{"name": "b"}]}, False)
    assert custom == {"l": [{"name": "b"}]}


def test_images_keep_registry_ports_and_take_new_names_and_tags() -> None:
    assert k8s_render.split_image("reg:5000/p/x:1.2@sha256:ab") == (
        "reg:5000/p/x",
        "1.2",
        "sha256:ab",
    )
    assert k8s_render.split_image("reg:5000/p/x") == ("reg:5000/p/x", None, None)


def _write(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


CONFIG = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {A: '1'}\n"


def test_refuses_a_kustomize_feature_it_does_not_implement(tmp_path: Path) -> None:
    _write(
        tmp_path, {"c.yaml": CONFIG, "kustomization.yaml": "resources: [c.yaml]\nnamePrefix: x-\n"}
    )
    with pytest.raises(k8s_render.RenderError, match="namePrefix"):
        k8s_render.build(tmp_path)


def test_refuses_a_generator_whose_name_would_be_hashed(tmp_path: Path) -> None:
    _write(tmp_path, {"kustomization.yaml": "secretGenerator:\n  - name: s\n    literals: [A=1]\n"})
    with pytest.raises(k8s_render.RenderError, match="disableNameSuffixHash"):
        k8s_render.build(tmp_path)


def test_refuses_a_patch_that_matches_nothing(tmp_path: Path) -> None:
    patch = CONFIG.replace("name: c", "name: other")
    _write(
        tmp_path,
        {
            "c.yaml": CONFIG,
            "p.yaml": patch,
            "kustomization.yaml": "resources: [c.yaml]\npatches:\n  - path: p.yaml\n",
        },
    )
    with pytest.raises(k8s_render.RenderError, match="matches no resource"):
        k8s_render.build(tmp_path)


def test_make_target_prints_both_overlays() -> None:
    done = subprocess.run(
        [sys.executable, str(m.ROOT / "scripts/k8s_render.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "# ---- overlay: dev" in done.stdout and "# ---- overlay: prod" in done.stdout
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(docs) == len(m.rendered("dev")) + len(m.rendered("prod"))
