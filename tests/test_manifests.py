"""Kubernetes manifests, checked without a cluster: every overlay renders with `kubectl kustomize`
and validates with `kubernetes-validate --strict`; the MLflow server, storage, RBAC, network
policies and pod security say what docs/deploy.md promises; the secrets are templates wired by
reference; checkov finds nothing manifests/checkov-skips.yaml does not explain; and no secret
value sits in a manifest, an image file or a compiled pipeline.

Tool-dependent tests skip with the reason when the tool is absent (`make tools` installs
kubernetes-validate and checkov into .venv-tools; kubectl comes with the machine).
"""

from __future__ import annotations

import base64
import binascii
import configparser
import fnmatch
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


from images import build  # noqa: E402  (the repo root is on sys.path: pyproject pythonpath)
from scripts import infra_checks as checks  # noqa: E402

OVERLAYS = checks.overlays()
MLFLOW_NS = "srlm"
PIPELINE_NS = "kubeflow"
WORKLOADS = ("Deployment", "StatefulSet", "Job", "DaemonSet", "CronJob")
COMPILED = ROOT / "pipelines" / "compiled" / "self_rewarding.yaml"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="kubectl is not installed (it renders the overlays offline)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (it renders the overlays offline)")
    return checks.render_all(tmp_path_factory.mktemp("rendered"))


@pytest.fixture(scope="module")
def docs(rendered) -> dict[str, list[dict]]:
    return {overlay: checks.documents(path.read_text(encoding="utf-8")) for overlay, path in rendered.items()}


def _find(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def _one(objects: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    found = _find(objects, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict) -> dict:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def _config(objects: list[dict], name: str, namespace: str) -> dict:
    # configMapGenerator adds a content hash to the name
    found = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == namespace
             and re.fullmatch(rf"{name}(-[a-z0-9]+)?", o["metadata"]["name"])]
    assert len(found) == 1, f"ConfigMap {name} in {namespace}: found {len(found)}"
    return found[0]["data"]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _cluster_tracking_uri() -> str | None:
    if not COMPILED.exists():
        return None
    for doc in yaml.safe_load_all(COMPILED.read_text(encoding="utf-8")):
        for executor in ((doc or {}).get("deploymentSpec") or {}).get("executors", {}).values():
            for env in (executor.get("container") or {}).get("env", []):
                if env.get("name") == "MLFLOW_TRACKING_URI":
                    return env["value"]
    return None


# --- rendering -------------------------------------------------------------------------------

def test_there_are_a_dev_and_a_gpu_overlay():
    assert {"dev", "gpu"} <= set(OVERLAYS)


@needs_kubectl
def test_every_overlay_renders_and_every_object_is_placed(docs):
    for overlay, objects in docs.items():
        assert objects, f"{overlay} renders nothing"
        keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
        assert len(keys) == len(set(keys)), f"{overlay}: duplicate objects"
        for kind, namespace, name in keys:
            if kind not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "PersistentVolume"):
                assert namespace in (MLFLOW_NS, PIPELINE_NS), f"{overlay}: {kind}/{name} has no explicit namespace"
        assert not _find(objects, "Secret"), f"{overlay} creates Secrets: they are templates (manifests/secrets/)"
        assert not _find(objects, "ClusterRole") and not _find(objects, "ClusterRoleBinding"), \
            f"{overlay}: cluster-wide RBAC; the pipeline needs namespaced Roles only"


def test_kubernetes_validate_strict(rendered):
    if checks.tool("kubernetes-validate") is None:
        pytest.skip("kubernetes-validate is not installed: `make tools` installs it into .venv-tools")
    problems = checks.kubernetes_validate([*rendered.values(), *checks.secret_templates()])
    assert not problems, "\n".join(problems)


# --- the MLflow tracking server --------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_server(docs, overlay):
    objects = docs[overlay]
    deployment = _one(objects, "Deployment", "mlflow", MLFLOW_NS)
    pod = _pod_spec(deployment)
    (container,) = pod["containers"]
    service_ref = next(i.ref for i in build.plan() if i.key == "mlflow-server")
    repo, _, _ = container["image"].partition("@")
    assert repo == service_ref, f"MLflow image {container['image']} is not the one `make images` builds ({service_ref})"
    args = container["command"] + container.get("args", [])
    assert args[:2] == ["mlflow", "server"] and "--serve-artifacts" in args
    destination = [a for a in args if a.startswith("--artifacts-destination=")]
    assert destination, "no --artifacts-destination"
    env = _env(container)
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-backend-store", "key": "uri"}
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert "MLFLOW_S3_ENDPOINT_URL" in env
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-s3"
    config = _config(objects, "mlflow-config", MLFLOW_NS)
    assert config["artifacts-destination"].startswith("s3://")
    assert destination[0] == "--artifacts-destination=$(MLFLOW_ARTIFACTS_DESTINATION)"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["valueFrom"]["configMapKeyRef"]["key"] == "artifacts-destination"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/health", probe
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    service = _one(objects, "Service", "mlflow", MLFLOW_NS)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert [p["port"] for p in service["spec"]["ports"]] == [5000]


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pipelines_tracking_uri_reaches_mlflow(docs, overlay):
    """The compiled pipeline's MLFLOW_TRACKING_URI names this Service and port, the NetworkPolicy
    lets it through, and MLflow's host check (--allowed-hosts) accepts that Host header."""
    uri = _cluster_tracking_uri() or "http://mlflow.srlm.svc.cluster.local:5000"
    parsed = urllib.parse.urlparse(uri)
    host = parsed.hostname
    name, namespace = host.split(".")[:2]
    objects = docs[overlay]
    service = _one(objects, "Service", name, namespace)
    assert parsed.port in [p["port"] for p in service["spec"]["ports"]]
    allowed = _config(objects, "mlflow-config", namespace)["allowed-hosts"].split(",")
    netloc = f"{host}:{parsed.port}"
    assert any(fnmatch.fnmatch(netloc, pattern) if "*" in pattern else netloc == pattern for pattern in allowed), \
        f"MLflow would reject Host {netloc} (allowed: {allowed})"
    policy = _one(objects, "NetworkPolicy", "mlflow-from-pipelines", namespace)
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [parsed.port]


# --- pod security ----------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(docs, overlay):
    workloads = [o for o in docs[overlay] if o["kind"] in WORKLOADS]
    assert workloads
    registry = build.load_spec()["registry"]
    for workload in workloads:
        where = f"{overlay}: {workload['kind']}/{workload['metadata']['name']}"
        pod = _pod_spec(workload)
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        if workload["metadata"]["namespace"] == MLFLOW_NS:
            assert pod.get("automountServiceAccountToken") is False, f"{where}: mounts an API token it never uses"
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container.get("securityContext", {})
            cwhere = f"{where} container {container['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, cwhere
            assert sc.get("readOnlyRootFilesystem") is True, cwhere
            assert "ALL" in sc.get("capabilities", {}).get("drop", []), cwhere
            assert sc.get("privileged") is not True, cwhere
            uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
            assert uid and uid >= 10000, f"{cwhere}: run as a high, non-root uid"
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})), f"{cwhere} {bound}"
            if workload["kind"] in ("Deployment", "StatefulSet"):
                assert "livenessProbe" in container and "readinessProbe" in container, cwhere
            repo, tag, digest = _split(container["image"])
            assert tag and tag != "latest", f"{cwhere}: image {container['image']} is not pinned by tag"
            if not repo.startswith(registry + "/"):
                assert digest, f"{cwhere}: third-party image {container['image']} without a digest"


def _split(ref: str) -> tuple[str, str | None, str | None]:
    ref, _, digest = ref.partition("@")
    repo, tag = (ref.rsplit(":", 1) + [None])[:2] if ":" in ref.rsplit("/", 1)[-1] else (ref, None)
    return repo, tag, digest or None


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_namespace_enforces_the_restricted_pod_security_standard(docs, overlay):
    namespace = _one(docs[overlay], "Namespace", MLFLOW_NS)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


# --- RBAC and network ------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_service_account_has_least_privilege(docs, overlay):
    objects = docs[overlay]
    _one(objects, "ServiceAccount", "srlm-pipeline-runner", PIPELINE_NS)
    role = _one(objects, "Role", "srlm-pipeline-runner", PIPELINE_NS)
    binding = _one(objects, "RoleBinding", "srlm-pipeline-runner", PIPELINE_NS)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "srlm-pipeline-runner"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "srlm-pipeline-runner", "namespace": PIPELINE_NS}]
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert not {"escalate", "bind", "impersonate", "deletecollection", "list", "watch"} & set(rule["verbs"]), rule
        assert not {"pods/exec", "pods/attach", "roles", "rolebindings", "secrets/*"} & set(rule["resources"]), rule
        if {"secrets", "configmaps", "serviceaccounts/token"} & set(rule["resources"]):
            assert rule.get("resourceNames"), f"{rule['resources']}: name the objects (resourceNames)"
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get"}, rule
    for other in _find(objects, "Role") + _find(objects, "RoleBinding"):
        assert other["metadata"]["name"] == "srlm-pipeline-runner", f"unexpected {other['kind']} {other['metadata']['name']}"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_pipeline_namespace_reaches_mlflow(docs, overlay):
    objects = docs[overlay]
    deny = _one(objects, "NetworkPolicy", "default-deny-ingress", MLFLOW_NS)
    assert deny["spec"]["podSelector"] == {} and deny["spec"]["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny["spec"]
    policy = _one(objects, "NetworkPolicy", "mlflow-from-pipelines", MLFLOW_NS)
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": PIPELINE_NS}}}]
    # no other policy opens MLflow
    for other in _find(objects, "NetworkPolicy", namespace=MLFLOW_NS):
        if other["metadata"]["name"] in ("default-deny-ingress", "mlflow-from-pipelines"):
            continue
        assert other["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") != "mlflow"
        for rule in other["spec"].get("ingress", []):
            assert rule.get("from"), f"{other['metadata']['name']}: an ingress rule open to everyone"


# --- storage ---------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_cache_claim(docs, overlay):
    pvc = _one(docs[overlay], "PersistentVolumeClaim", "srlm-model-cache", PIPELINE_NS)
    assert pvc["spec"]["resources"]["requests"]["storage"]
    if overlay == "gpu":
        assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"].get("storageClassName")


@needs_kubectl
def test_dev_overlay_runs_postgres_and_minio_in_cluster(docs):
    objects = docs["dev"]
    postgres = _one(objects, "StatefulSet", "postgres", MLFLOW_NS)
    claims = postgres["spec"]["volumeClaimTemplates"]
    assert claims and claims[0]["spec"]["resources"]["requests"]["storage"]
    assert _one(objects, "Service", "postgres", MLFLOW_NS)["spec"]["ports"][0]["port"] == 5432
    minio = _one(objects, "Deployment", "minio", MLFLOW_NS)
    volumes = {v["name"]: v for v in _pod_spec(minio)["volumes"]}
    claim = volumes["data"]["persistentVolumeClaim"]["claimName"]
    _one(objects, "PersistentVolumeClaim", claim, MLFLOW_NS)
    minio_ports = [p["port"] for p in _one(objects, "Service", "minio", MLFLOW_NS)["spec"]["ports"]]
    config = _config(objects, "mlflow-config", MLFLOW_NS)
    endpoint = urllib.parse.urlparse(config["s3-endpoint-url"])
    assert endpoint.hostname == "minio.srlm.svc.cluster.local" and endpoint.port in minio_ports
    bucket = urllib.parse.urlparse(config["artifacts-destination"]).netloc
    job = _one(objects, "Job", "minio-create-bucket", MLFLOW_NS)
    assert f"local/{bucket}" in " ".join(_pod_spec(job)["containers"][0]["args"]), "the Job creates another bucket"


@needs_kubectl
def test_gpu_overlay_uses_external_services_and_keeps_gpu_nodes_free(docs):
    objects = docs["gpu"]
    assert not _find(objects, "StatefulSet") and not _find(objects, "Deployment", "minio")
    deployment = _one(objects, "Deployment", "mlflow", MLFLOW_NS)
    terms = _pod_spec(deployment)["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
    assert {"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]} in expressions
    assert deployment["spec"]["replicas"] >= 2 and _find(objects, "PodDisruptionBudget", "mlflow", MLFLOW_NS)


@needs_kubectl
def test_gpu_scheduling_settings_match_the_compiled_pipeline(docs):
    if not COMPILED.exists():
        pytest.skip("pipelines/compiled/self_rewarding.yaml is not there yet (make pipeline)")
    data = _one(docs["gpu"], "ConfigMap", "srlm-gpu-scheduling", PIPELINE_NS)["data"]
    node_selector = yaml.safe_load(data["node-selector"])
    tolerations = yaml.safe_load(data["tolerations"])
    compiled = list(yaml.safe_load_all(COMPILED.read_text(encoding="utf-8")))
    platform = next(d for d in compiled if d and "platforms" in d)["platforms"]["kubernetes"]
    executors = platform["deploymentSpec"]["executors"]
    spec = next(d for d in compiled if d and "deploymentSpec" in d)
    gpu_execs = {name for name, ex in spec["deploymentSpec"]["executors"].items()
                 if ((ex.get("container") or {}).get("resources") or {}).get("accelerator")}
    assert gpu_execs, "the compiled cluster pipeline requests no accelerator"
    for name in sorted(gpu_execs):
        accelerator = spec["deploymentSpec"]["executors"][name]["container"]["resources"]["accelerator"]
        assert accelerator.get("resourceType", accelerator.get("type")) == data["accelerator-type"], name
        assert executors[name]["nodeSelector"]["labels"] == node_selector, name
        assert executors[name]["tolerations"] == tolerations, name


# --- secrets ---------------------------------------------------------------------------------

PLACEHOLDER = re.compile(r"(?i)^(change[_-]?me|replace[_-]?me|<[^>]*>|\$\{[^}]*\}|\$\([^)]*\)|\$[A-Z_][A-Z0-9_]*|"
                         r"x{3,}|\*{3,}|\.\.\.|)$")
NON_SECRET_KEYS = {"username", "database"}  # values that name things, not credentials


def _is_placeholder(value: str) -> bool:
    value = str(value).strip()
    if PLACEHOLDER.match(value):
        return True
    parsed = urllib.parse.urlparse(value)  # a URI is fine when its password is a placeholder
    return bool(parsed.scheme and "://" in value and parsed.password is not None
                and PLACEHOLDER.match(urllib.parse.unquote(parsed.password)))


def _secret_templates() -> dict[str, dict]:
    templates = {}
    for path in checks.secret_templates():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                assert doc["kind"] == "Secret", path
                templates[doc["metadata"]["name"]] = doc
    return templates


def test_secret_templates_hold_placeholders_only():
    templates = _secret_templates()
    assert templates
    for name, secret in templates.items():
        assert secret["metadata"].get("namespace") in (MLFLOW_NS, PIPELINE_NS), name
        values = dict(secret.get("stringData") or {})
        for key, encoded in (secret.get("data") or {}).items():
            try:
                values[key] = base64.b64decode(encoded, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                pytest.fail(f"{name}.data.{key}: not base64 text")
        assert values, f"{name}: no keys"
        for key, value in values.items():
            if key in NON_SECRET_KEYS:
                continue
            if key.endswith(".ini"):  # a config file (MLflow's basic_auth.ini): its secret options are placeholders
                config = configparser.ConfigParser()
                config.read_string(value)
                secret = {k: v for k, v in config["mlflow"].items() if k in ("database_uri", "admin_password")}
                assert secret and all(_is_placeholder(v) for v in secret.values()), f"{name}.{key}: {secret}"
                continue
            assert _is_placeholder(value), f"{name}.{key} holds a value, not a placeholder"


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_reference_has_a_template(docs, overlay):
    templates = _secret_templates()
    keys = {name: set((s.get("stringData") or {}) | (s.get("data") or {})) for name, s in templates.items()}
    refs = []
    for workload in (o for o in docs[overlay] if o["kind"] in WORKLOADS):
        pod = _pod_spec(workload)
        namespace = workload["metadata"]["namespace"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append((namespace, ref["name"], ref["key"]))
            for source in container.get("envFrom", []):
                assert "secretRef" not in source, "envFrom a whole Secret: reference keys one by one"
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs.append((namespace, volume["secret"]["secretName"], None))
    assert refs
    for namespace, name, key in refs:
        assert name in templates, f"{overlay}: Secret {name} has no template in manifests/secrets/"
        assert templates[name]["metadata"]["namespace"] == namespace, f"{name}: template in another namespace"
        assert key is None or key in keys[name], f"{overlay}: Secret {name} has no key {key} in its template"


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN ([A-Z]+ )?PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,})"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "OpenAI-style key": re.compile(r"\bsk-(proj-)?[A-Za-z0-9_-]{20,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}"),
}
# key = value / key: value, where the key names a credential
CREDENTIAL_ASSIGNMENT = re.compile(
    r"""(?ix)\b([A-Z0-9_]*(?:password|passwd|secret_access_key|secret_key|api_key|apikey|access_token|auth_token|
    private_key|client_secret|_token)|token)["']?\s*[:=]\s*["']?([^\s"',}#]*)""")
URI_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:([^@\s/'\"]+)@")
# references, not values: paths, env-var names (FOO_FILE, HF_TOKEN), template/shell variables, booleans
REFERENCE = re.compile(r"^(valueFrom|secretKeyRef|\{\{.*\}\}|/.*|true|false|null|none|optional|\$\(.*|\$\{.*)$", re.I)
ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _scanned_files() -> list[Path]:
    files = []
    for directory in ("manifests", "images", "pipelines/compiled", "docs"):
        for path in sorted((ROOT / directory).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc",):
                files.append(path)
    return files + [ROOT / ".dockerignore"]


def _secret_findings(text: str) -> list[str]:
    found = [f"{kind}: {m.group(0)[:12]}..." for kind, regex in SECRET_PATTERNS.items() for m in regex.finditer(text)]
    for match in URI_WITH_PASSWORD.finditer(text):
        if not _is_placeholder(urllib.parse.unquote(match.group(1))) and not match.group(1).startswith(("$", "<")):
            found.append(f"URI with a password: {match.group(0)[:40]}...")
    for match in CREDENTIAL_ASSIGNMENT.finditer(text):
        value = match.group(2)
        if value and not _is_placeholder(value) and not REFERENCE.match(value) and not ENV_NAME.match(value):
            found.append(f"credential value for {match.group(1)}: {value[:6]}...")
    return found


def test_the_secret_scanner_catches_what_it_should():
    assert _secret_findings("AWS_ACCESS_KEY_ID: AKIAABCDEFGHIJKLMNOP")
    assert _secret_findings("password: hunter2hunter2")
    assert _secret_findings("uri: postgresql://mlflow:s3cr3t@db:5432/mlflow")
    assert _secret_findings("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _secret_findings("HF_TOKEN=hf_" + "a" * 34)
    assert not _secret_findings("password: CHANGE_ME")
    assert not _secret_findings("uri: postgresql+psycopg2://mlflow:CHANGE_ME@postgres:5432/mlflow")
    assert not _secret_findings('--from-literal=password="${PG_PASSWORD}"')
    assert not _secret_findings("- name: POSTGRES_PASSWORD_FILE\n  value: /run/secrets/postgres/password")


def test_no_secret_value_in_manifests_images_compiled_pipelines_or_docs():
    problems = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        problems += [f"{path.relative_to(ROOT)}: {finding}" for finding in _secret_findings(text)]
    assert not problems, "\n".join(problems)


@needs_kubectl
def test_no_secret_value_in_the_rendered_overlays(rendered):
    problems = []
    for overlay, path in rendered.items():
        problems += [f"{overlay}: {f}" for f in _secret_findings(path.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


# --- checkov ---------------------------------------------------------------------------------

def test_checkov_manifests_and_secrets_fail_nothing_unexplained(rendered):
    if checks.tool("checkov") is None:
        pytest.skip("checkov is not installed: `make tools` installs it into .venv-tools")
    frameworks = ("kubernetes", "secrets")
    failures = checks.checkov_failures(rendered, frameworks=frameworks)
    skips = [s for s in checks.load_skips() if s.get("framework") in frameworks]
    unexplained, unused = checks.gate(failures, skips)
    assert not unexplained, "checkov failures to fix or list in manifests/checkov-skips.yaml:\n" + "\n".join(
        map(str, unexplained))
    assert not unused, f"skips no manifest needs any more: {[(s['check'], s.get('resources')) for s in unused]}"


# --- Makefile --------------------------------------------------------------------------------

def test_make_deploy_and_submit_commands():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")

    def dry(*args: str) -> str:
        return subprocess.run(["make", "-n", *args], capture_output=True, text=True, cwd=ROOT, check=True).stdout

    assert "kubectl kustomize manifests/overlays/dev | kubectl apply -f -" in dry("deploy")
    assert "kubectl kustomize manifests/overlays/gpu | kubectl apply -f -" in dry("deploy", "OVERLAY=gpu")
    submit = dry("submit", "EXPERIMENT=exp", "RUN_NAME=run-1", "PARAMS=training={\"preset\":\"tiny\"}")
    assert "run create -e exp -r run-1 -f pipelines/compiled/self_rewarding.yaml training=" in submit
    assert "scripts/infra_checks.py all" in dry("manifests-check")
    help_text = subprocess.run(["make", "help"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    listed = {line.split()[0] for line in re.sub(r"\x1b\[[0-9;]*m", "", help_text).splitlines() if line.strip()}
    for target in ("images", "push", "deploy", "submit", "tools", "manifests-check"):
        assert target in listed, f"make help does not list {target}"
