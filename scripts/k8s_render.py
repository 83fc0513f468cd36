"""Render Parley's kustomize overlays without a kustomize binary: `make k8s-render`.

    python scripts/k8s_render.py [--overlay dev|prod|base ...] [--kustomize]

`kubectl apply -k` is what applies the manifests; this renderer exists so that the
manifests can be built and validated on a machine with no kustomize, no kubectl and
no network (tests/deploy). It implements the subset of kustomize that
`deploy/k8s` uses and refuses anything else, so a new kustomize feature cannot
be silently ignored:

- `resources` (files and directories) and `components`;
- `namespace` (set on every namespaced object);
- `images` (`newName`, `newTag`, `digest`) on every container and init container;
- `configMapGenerator` / `secretGenerator` with `literals` and `envs`, and only with
  `options.disableNameSuffixHash: true` (the name hash is not reproduced);
- `patches` with a `path` to a strategic-merge patch, matched by kind and name.

Where a `kustomize` (v5) or `kubectl` binary is on PATH, tests/deploy renders with it
too and requires the same objects. `--kustomize` prints that binary's rendering.

The prod overlay builds its Secret from `overlays/prod/secrets.env`, which is
git-ignored. Without it, this renderer uses `secrets.env.example` and says so.
"""

from __future__ import annotations

import argparse
import base64
import copy
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {
    "base": K8S / "base",
    "dev": K8S / "overlays" / "dev",
    "prod": K8S / "overlays" / "prod",
}

Obj = dict[str, Any]

KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "components",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}

CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ClusterTriggerAuthentication",
}

# Strategic merge keys of the built-in list fields this project patches.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}

# kustomize's legacy output order (kinds not listed follow, by kind and name).
ORDER = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement, or is broken."""


def is_builtin(obj: Obj) -> bool:
    """A Kubernetes built-in kind (core or *.k8s.io group), not a custom resource."""
    api = str(obj.get("apiVersion", ""))
    group = api.rpartition("/")[0]
    return (
        group == ""
        or group in {"apps", "batch", "policy", "autoscaling"}
        or (group.endswith(".k8s.io"))
    )


def strategic_merge(target: Any, patch: Any, builtin: bool) -> Any:
    """Merge `patch` into `target` the way kustomize's strategic merge does for our kinds."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "delete":
        return None
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif (
            builtin
            and key in MERGE_KEYS
            and isinstance(value, list)
            and isinstance(out.get(key), list)
        ):
            out[key] = _merge_list(out[key], value, MERGE_KEYS[key], builtin)
        elif key in out:
            merged = strategic_merge(out[key], value, builtin)
            if merged is None:
                out.pop(key)
            else:
                out[key] = merged
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_list(target: list[Any], patch: list[Any], merge_key: str, builtin: bool) -> list[Any]:
    out = list(target)
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise RenderError(f"list item without merge key {merge_key!r}: {item!r}")
        for i, existing in enumerate(out):
            if isinstance(existing, dict) and existing.get(merge_key) == item[merge_key]:
                merged = strategic_merge(existing, item, builtin)
                if merged is None:
                    del out[i]
                else:
                    out[i] = merged
                break
        else:
            if item.get("$patch") != "delete":
                out.append(copy.deepcopy(item))
    return out


def _load_yaml_docs(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: every document needs apiVersion and kind")
    return docs


def _kustomization(directory: Path) -> Obj:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            data = yaml.safe_load((directory / name).read_text()) or {}
            if not isinstance(data, dict):
                raise RenderError(f"{directory}/{name}: not a mapping")
            unknown = set(data) - KNOWN_FIELDS
            if unknown:
                raise RenderError(
                    f"{directory}/{name}: this renderer does not implement {sorted(unknown)}"
                )
            return data
    raise RenderError(f"{directory}: no kustomization.yaml")


def _parse_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise RenderError(f"{path}: {line!r} is not KEY=value")
        values[key.strip()] = value
    return values


def _generate(directory: Path, spec: Obj, kind: str) -> Obj:
    options = spec.get("options") or {}
    if options.get("disableNameSuffixHash") is not True:
        raise RenderError(
            f"{directory}: {kind} generator {spec.get('name')!r} needs "
            "options.disableNameSuffixHash: true (the name hash is not reproduced here)"
        )
    unknown = set(spec) - {"name", "namespace", "literals", "envs", "options", "behavior"}
    unknown |= set(options) - {"disableNameSuffixHash"}
    if unknown or spec.get("behavior", "create") != "create":
        raise RenderError(f"{directory}: generator {spec.get('name')!r} uses {sorted(unknown)}")
    values: dict[str, str] = {}
    for env in spec.get("envs") or []:
        values.update(_parse_env_file(directory / env))
    for literal in spec.get("literals") or []:
        key, sep, value = str(literal).partition("=")
        if not sep:
            raise RenderError(f"{directory}: literal {literal!r} is not KEY=value")
        values[key] = value
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        obj["type"] = "Opaque"
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
    else:
        obj["data"] = values
    return obj


def _pod_specs(obj: Any) -> Iterator[Obj]:
    """Every mapping with containers (pod specs of Deployments, StatefulSets, Jobs, ...)."""
    if isinstance(obj, dict):
        if isinstance(obj.get("containers"), list):
            yield obj
        for value in obj.values():
            yield from _pod_specs(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _pod_specs(value)


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`name[:tag][@digest]` -> (name, tag, digest); a registry port is not a tag."""
    name, _, digest = image.partition("@")
    tag: str | None = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _apply_images(objs: list[Obj], images: list[Obj]) -> None:
    for pod in (p for o in objs for p in _pod_specs(o)):
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            name, tag, digest = split_image(str(container.get("image", "")))
            for rule in images:
                if rule.get("name") != name:
                    continue
                new_name = rule.get("newName", name)
                if rule.get("digest"):
                    container["image"] = f"{new_name}@{rule['digest']}"
                    continue
                new_tag = rule.get("newTag", tag)
                ref = f"{new_name}:{new_tag}" if new_tag else new_name
                keep_digest = digest is not None and "newTag" not in rule
                container["image"] = f"{ref}@{digest}" if keep_digest else ref


def _key(obj: Obj) -> tuple[str, str]:
    return str(obj["kind"]), str(obj["metadata"]["name"])


def build(directory: Path) -> list[Obj]:
    """The objects `kustomize build directory` produces (for the supported subset)."""
    directory = directory.resolve()
    kust = _kustomization(directory)
    objs = _resources(directory, kust)
    for spec in kust.get("configMapGenerator") or []:
        objs.append(_generate(directory, spec, "ConfigMap"))
    for spec in kust.get("secretGenerator") or []:
        objs.append(_generate(directory, spec, "Secret"))
    seen: set[tuple[str, str]] = set()
    for obj in objs:
        if _key(obj) in seen:
            raise RenderError(f"{directory}: {_key(obj)} is defined twice")
        seen.add(_key(obj))
    # A component's own resources join, and its transformations see, everything so far.
    for entry in kust.get("components") or []:
        component = (directory / entry).resolve()
        comp = _kustomization(component)
        if comp.get("kind") != "Component":
            raise RenderError(f"{component}: not a kustomize Component")
        objs.extend(_resources(component, comp))
        objs = _transform(component, comp, objs)
    return _transform(directory, kust, objs)


def _resources(directory: Path, kust: Obj) -> list[Obj]:
    objs: list[Obj] = []
    for entry in kust.get("resources") or []:
        path = directory / entry
        objs.extend(build(path) if path.is_dir() else _load_yaml_docs(path))
    return objs


def _transform(directory: Path, kust: Obj, objs: list[Obj]) -> list[Obj]:
    for entry in kust.get("patches") or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{directory}: only `patches: - path: ...` is implemented")
        for patch in _load_yaml_docs(directory / entry["path"]):
            targets = [o for o in objs if _key(o) == _key(patch)]
            if not targets:
                raise RenderError(f"{directory}: patch {_key(patch)} matches no resource")
            for target in targets:
                merged = strategic_merge(target, patch, is_builtin(target))
                target.clear()
                target.update(merged)
    _apply_images(objs, kust.get("images") or [])
    namespace = kust.get("namespace")
    if namespace:
        for obj in objs:
            if obj["kind"] == "Namespace":
                obj["metadata"]["name"] = namespace
            elif obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    return objs


def sort_key(obj: Obj) -> tuple[int, str, str]:
    kind = str(obj["kind"])
    rank = ORDER.index(kind) if kind in ORDER else len(ORDER)
    return rank, kind, str(obj["metadata"]["name"])


def prepared(overlay: str) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The overlay's directory; prod without secrets.env is rendered from a copy with
    secrets.env.example in its place (the only difference)."""
    directory = OVERLAYS[overlay]
    if overlay != "prod" or (directory / "secrets.env").exists():
        return directory, None
    tmp = tempfile.TemporaryDirectory(prefix="parley-k8s-")
    copied = Path(tmp.name) / "k8s"
    shutil.copytree(K8S, copied, ignore=shutil.ignore_patterns("secrets.env"))
    prod = copied / "overlays" / "prod"
    shutil.copyfile(prod / "secrets.env.example", prod / "secrets.env")
    return prod, tmp


def render(overlay: str) -> list[Obj]:
    directory, tmp = prepared(overlay)
    try:
        return sorted(build(directory), key=sort_key)
    finally:
        if tmp is not None:
            tmp.cleanup()


def kustomize_command() -> list[str] | None:
    """A real kustomize (v5) on PATH: `kustomize build`, else `kubectl kustomize`."""
    if exe := shutil.which("kustomize"):
        return [exe, "build"]
    if exe := shutil.which("kubectl"):
        return [exe, "kustomize"]
    return None


def render_with_binary(overlay: str) -> list[Obj]:
    command = kustomize_command()
    if command is None:
        raise RenderError("no kustomize or kubectl on PATH")
    directory, tmp = prepared(overlay)
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command on a path of this repository
            [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        if tmp is not None:
            tmp.cleanup()
    if done.returncode != 0:
        raise RenderError(f"{' '.join(command)} {overlay}: {done.stderr.strip()}")
    return [d for d in yaml.safe_load_all(done.stdout) if d is not None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="k8s_render", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--overlay", action="append", choices=sorted(OVERLAYS), help="default: dev and prod"
    )
    parser.add_argument(
        "--kustomize", action="store_true", help="render with kustomize/kubectl instead"
    )
    args = parser.parse_args(argv)
    overlays: list[str] = args.overlay or ["dev", "prod"]
    for overlay in overlays:
        if overlay == "prod" and not (OVERLAYS["prod"] / "secrets.env").exists():
            print(
                "# overlays/prod/secrets.env is missing: rendering with secrets.env.example",
                file=sys.stderr,
            )
        try:
            objs = render_with_binary(overlay) if args.kustomize else render(overlay)
        except RenderError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"# ---- overlay: {overlay} ({len(objs)} objects)")
        print(yaml.safe_dump_all(objs, sort_keys=False, explicit_start=True), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
