"""Render a kustomization the way ``kubectl kustomize`` does, for the features deploy/k8s uses.

CI has no ``kubectl``, so the manifests are rendered here to be validated: resources (files and
other kustomizations), ``namespace``, ``labels``, ``images``, ``replicas``, ConfigMap and Secret
generators (``files``, ``envs``, ``literals``; ``behavior: merge|replace`` in an overlay) with
their content-hash name suffix and every reference to them renamed, and ``patches`` as JSON
Patch (RFC 6902) with a kind/name target. A kustomization field outside that set is refused
(:class:`UnsupportedKustomization`) rather than ignored, so a manifest can never pass here by
using something this renderer would skip; a generator file that is missing fails the render,
as it fails ``kubectl kustomize``. The suffix follows kustomize's scheme (SHA-256 of the
object's name, kind and data, ten characters) without promising the very same characters.
Where ``kubectl`` is installed the tests compare the output with ``kubectl kustomize``'s
(kustomize v5.5.0 when this was written: the same objects, suffixes aside).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Obj = dict[str, Any]

SUPPORTED = frozenset({
    "apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas",
    "configMapGenerator", "secretGenerator", "generatorOptions", "patches",
})
#: Kinds whose objects carry a pod template, and where in them it is.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding",
                            "PersistentVolume", "StorageClass", "CustomResourceDefinition"})


class UnsupportedKustomization(ValueError):
    """The kustomization uses a field or form this renderer does not implement."""


@dataclass
class _Generated:
    """A generated ConfigMap or Secret, named without its suffix until the end of the build."""

    obj: Obj
    hashed: bool = True


@dataclass
class _Build:
    objects: list[Obj] = field(default_factory=list)
    generated: dict[tuple[str, str], _Generated] = field(default_factory=dict)

    def all(self) -> Iterator[Obj]:
        yield from self.objects
        for gen in self.generated.values():
            yield gen.obj


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` would print (generated names suffixed)."""
    build = _build(directory.resolve())
    renames: dict[tuple[str, str], str] = {}
    for (kind, name), gen in build.generated.items():
        if gen.hashed:
            suffixed = f"{name}-{content_hash(gen.obj)}"
            gen.obj["metadata"]["name"] = suffixed
            renames[kind, name] = suffixed
    objects = list(build.all())
    for obj in objects:
        spec = pod_spec(obj)
        if spec is not None:
            _rename_references(spec, renames)
    return objects


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec inside ``obj``, if its kind carries one."""
    path = POD_SPEC_PATHS.get(obj.get("kind", ""))
    if path is None:
        return None
    node: Any = obj
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else None


def containers(spec: Obj) -> list[Obj]:
    """Every container of a pod spec, init containers first."""
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def content_hash(obj: Obj) -> str:
    """Kustomize's name suffix: the SHA-256 of kind, name and data, as ten characters."""
    doc: Obj = {"kind": obj["kind"], "name": obj["metadata"]["name"],
                "data": obj.get("data", {})}
    if obj["kind"] == "Secret":
        doc["type"] = obj.get("type", "Opaque")
    digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    swap = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}  # kustomize's own alphabet
    return "".join(swap.get(c, c) for c in digest.hexdigest()[:10])


def _build(directory: Path) -> _Build:
    path = directory / "kustomization.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict):
        raise UnsupportedKustomization(f"{path}: not a mapping")
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise UnsupportedKustomization(f"{path}: fields not rendered here: {sorted(unknown)}")
    build = _Build()
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            inner = _build(target)
            build.objects.extend(inner.objects)
            build.generated.update(inner.generated)
        else:
            build.objects.extend(d for d in yaml.safe_load_all(target.read_text("utf-8")) if d)
    options = spec.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"}:
        raise UnsupportedKustomization(f"{path}: generatorOptions {sorted(options)}")
    for kind, key in (("ConfigMap", "configMapGenerator"), ("Secret", "secretGenerator")):
        for gen in spec.get(key, []):
            _generate(build, directory, kind, gen,
                      hashed=not options.get("disableNameSuffixHash", False))
    objects = list(build.all())
    for label in spec.get("labels", []):
        _label(objects, label)
    for image in spec.get("images", []):
        _set_image(objects, image)
    for replica in spec.get("replicas", []):
        _set_replicas(objects, replica)
    for patch in spec.get("patches", []):
        _patch(objects, patch)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    return build


def _generate(build: _Build, directory: Path, kind: str, gen: Obj, *, hashed: bool) -> None:
    allowed = {"name", "behavior", "files", "envs", "literals", "type", "options"}
    if set(gen) - allowed or gen.get("options"):
        raise UnsupportedKustomization(f"{kind} generator fields {sorted(gen)}")
    data: dict[str, str] = {}
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for env_file in gen.get("envs", []):
        data.update(_read_env(directory / env_file))
    for spec in gen.get("files", []):
        key, sep, source = spec.partition("=")
        file = directory / (source if sep else key)
        data[key if sep else file.name] = file.read_bytes().decode("latin-1")
    name, behavior = gen["name"], gen.get("behavior", "create")
    existing = build.generated.get((kind, name))
    if behavior == "create":
        if existing is not None:
            raise UnsupportedKustomization(f"{kind} {name} generated twice")
        obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}
        build.generated[kind, name] = _Generated(obj, hashed)
    elif behavior in ("merge", "replace"):
        if existing is None:
            raise UnsupportedKustomization(f"{kind} {name}: nothing to {behavior}")
        obj = existing.obj
        if behavior == "replace":
            obj.pop("data", None)
    else:
        raise UnsupportedKustomization(f"{kind} {name}: behavior {behavior}")
    if kind == "Secret":
        obj["type"] = gen.get("type", obj.get("type", "Opaque"))
        encoded = {k: base64.b64encode(v.encode("latin-1")).decode() for k, v in data.items()}
        obj["data"] = {**obj.get("data", {}), **encoded}
    else:
        obj["data"] = {**obj.get("data", {}), **data}


def _read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (kustomize's env files): blank lines and ``#`` comments skipped."""
    values = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key:
            raise UnsupportedKustomization(f"{path}:{number}: not KEY=VALUE")
        values[key] = value
    return values


def _label(objects: list[Obj], label: Obj) -> None:
    pairs: dict[str, str] = label["pairs"]
    selectors = bool(label.get("includeSelectors", False))
    templates = selectors or bool(label.get("includeTemplates", False))
    for obj in objects:
        obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        spec = obj.get("spec", {})
        template = spec.get("template") if isinstance(spec, dict) else None
        if templates and isinstance(template, dict) and obj["kind"] in POD_SPEC_PATHS:
            template.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        if selectors:
            if obj["kind"] == "Service":
                spec.setdefault("selector", {}).update(pairs)
            elif isinstance(spec.get("selector"), dict):
                spec["selector"].setdefault("matchLabels", {}).update(pairs)


def _set_image(objects: list[Obj], image: Obj) -> None:
    for obj in objects:
        spec = pod_spec(obj)
        for container in containers(spec) if spec else []:
            current: str = container["image"]
            name = current.split("@", 1)[0]
            if ":" in name.rsplit("/", 1)[-1]:
                name = name.rsplit(":", 1)[0]
            if name != image["name"]:
                continue
            new = image.get("newName", name)
            if "digest" in image:
                container["image"] = f"{new}@{image['digest']}"
            elif "newTag" in image:
                container["image"] = f"{new}:{image['newTag']}"
            else:
                container["image"] = current.replace(name, new, 1)


def _set_replicas(objects: list[Obj], replica: Obj) -> None:
    hits = [o for o in objects if o["metadata"]["name"] == replica["name"]
            and o["kind"] in ("Deployment", "StatefulSet", "ReplicaSet")]
    if not hits:
        raise UnsupportedKustomization(f"replicas: no workload named {replica['name']}")
    for obj in hits:
        obj["spec"]["replicas"] = replica["count"]


def _patch(objects: list[Obj], patch: Obj) -> None:
    target = patch.get("target")
    if not isinstance(target, dict) or set(target) - {"kind", "name"} or "patch" not in patch:
        raise UnsupportedKustomization("patches: only JSON patches with a kind/name target")
    ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise UnsupportedKustomization("patches: only JSON patches (a list of operations)")
    hits = [o for o in objects if all(
        (o["kind"] if k == "kind" else o["metadata"]["name"]) == v for k, v in target.items())]
    if not hits:
        raise UnsupportedKustomization(f"patches: nothing matches {target}")
    for obj in hits:
        patched = jsonpatch.apply_patch(obj, ops)
        obj.clear()
        obj.update(copy.deepcopy(patched))


def _rename_references(spec: Obj, renames: dict[tuple[str, str], str]) -> None:
    """Point a pod spec's references at the suffixed names of generated objects."""

    def swap(holder: Obj | None, key: str, kind: str) -> None:
        if isinstance(holder, dict) and (kind, holder.get(key)) in renames:
            holder[key] = renames[kind, holder[key]]

    for volume in spec.get("volumes", []):
        swap(volume.get("configMap"), "name", "ConfigMap")
        swap(volume.get("secret"), "secretName", "Secret")
        for source in volume.get("projected", {}).get("sources", []):
            swap(source.get("configMap"), "name", "ConfigMap")
            swap(source.get("secret"), "name", "Secret")
    for container in containers(spec):
        for env_from in container.get("envFrom", []):
            swap(env_from.get("configMapRef"), "name", "ConfigMap")
            swap(env_from.get("secretRef"), "name", "Secret")
        for env in container.get("env", []):
            value_from = env.get("valueFrom", {})
            swap(value_from.get("configMapKeyRef"), "name", "ConfigMap")
            swap(value_from.get("secretKeyRef"), "name", "Secret")
