"""The deployment files: compose.yaml, the Dockerfile and deploy/, checked without Docker or a cluster.

Each file is validated against its published schema (vendored under tests/schemas/, see its
README: the Compose Specification, Kubernetes 1.33 strict, KEDA 2.20's ScaledObject CRD), then
against what the gateway itself expects: the commands parse with the real CLI, every process's
reactor.toml and environment load with the real config loader (and each worker's provider has
its credentials), the probes hit routes the app serves, the autoscalers read metrics the front
door exports, no secret is written into a manifest, and every environment variable used is one
the README documents.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "tests" / "schemas"
K8S_DIR = ROOT / "deploy" / "k8s"
ENV_DIR = ROOT / "deploy" / "env"
PROVIDERS = ("openrouter", "bedrock", "foundry")
CONFIG_DIR = "/etc/reactor"
CONFIG_PATH = f"{CONFIG_DIR}/reactor.toml"
DATA_DIR = "/var/lib/reactor"
IMAGE = "reactor-gateway"
API_PORT = 8004
# Names that hold credentials: never given a value in a manifest.
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD)")

K8S_SCHEMA_DIR = SCHEMAS / "kubernetes-v1.33.0-local-strict"
K8S_SCHEMA_FILES = {
    ("v1", "Namespace"): "namespace-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("apps/v1", "StatefulSet"): "statefulset-apps-v1.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
}
KEDA_CRD = SCHEMAS / "keda-v2.20.2" / "keda.sh_scaledobjects.yaml"


# --- loading -----------------------------------------------------------------------------------

def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for _, doc in k8s_docs() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/k8s, found {len(matches)}"
    return matches[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["template"]["spec"]["containers"]


def env_file_keys(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, commented-out ones included (they name the alternatives)."""
    keys = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            keys[match.group(1)] = match.group(2).strip()
    return keys


def example_for(name: str) -> Path:
    """The template of an env file (Compose) or Secret (Kubernetes: `reactor-NAME`)."""
    return ENV_DIR / f"{name.removeprefix('reactor-')}.env.example"


def filled(path: Path) -> dict[str, str]:
    """An env file as a user would fill it in: every variable set, placeholders for secrets."""
    env = {}
    for key, value in env_file_keys(path).items():
        if key in ("AWS_SESSION_TOKEN", "AWS_BEARER_TOKEN_BEDROCK"):
            continue  # alternatives to the keys, left commented out
        if not value:
            value = "https://example.invalid" if key.endswith(("_URL", "_ENDPOINT")) else f"test-{key.lower()}"
        env[key] = value
    return env


def readme_documented() -> set[str]:
    """Environment variable names the README names outside its own Deploying section."""
    text = (ROOT / "README.md").read_text()
    text = re.sub(r"^## Deploying\n.*?(?=^## )", "", text, flags=re.S | re.M)
    return set(re.findall(r"`([A-Z][A-Z0-9_]{2,})`", text)) | set(re.findall(r"\$([A-Z][A-Z0-9_]{2,})", text))


def check_command(args: list[str]) -> None:
    """``reactor ARGS`` parses with the real CLI."""
    from api.cli import build_parser

    try:
        build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`reactor {' '.join(args)}` does not parse")


# --- schemas -----------------------------------------------------------------------------------

def k8s_validator(api_version: str, kind: str) -> Draft202012Validator:
    file = K8S_SCHEMA_FILES.get((api_version, kind))
    assert file, f"no vendored schema for {api_version} {kind}: add it to tests/schemas (see its README)"
    schema = json.loads((K8S_SCHEMA_DIR / file).read_text())
    definitions = json.loads((K8S_SCHEMA_DIR / "_definitions.json").read_text())
    registry = Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))
    return Draft202012Validator(schema, registry=registry)


def closed(schema: Any) -> Any:
    """A CRD schema with kubectl's strict field validation: unknown fields are errors."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def keda_validator() -> Draft7Validator:
    crd = yaml.safe_load(KEDA_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return Draft7Validator(closed(version["schema"]["openAPIV3Schema"]))


def errors(validator, instance) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))]


def test_compose_validates_against_the_compose_specification():
    schema = json.loads((SCHEMAS / "compose-spec" / "compose-spec.json").read_text())
    assert errors(Draft7Validator(schema), load_compose()) == []


@pytest.mark.parametrize("path", k8s_files(), ids=lambda p: p.name)
def test_every_kubernetes_manifest_validates(path: Path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs, f"{path.name} holds no manifest"
    for doc in docs:
        where = f"{path.name}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion") == "keda.sh/v1alpha1":
            assert doc["kind"] == "ScaledObject", where
            validator = keda_validator()
        else:
            validator = k8s_validator(doc.get("apiVersion"), doc.get("kind"))
        assert errors(validator, doc) == [], where


def test_the_schemas_reject_what_they_should():
    """The validation above has teeth: a misspelt field fails each kind of schema."""
    deployment = find("Deployment", "reactor-api")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert errors(k8s_validator("apps/v1", "Deployment"), broken)
    scaled = json.loads(json.dumps(find("ScaledObject", "reactor-worker-openrouter")))
    scaled["spec"]["minReplicas"] = 1
    assert errors(keda_validator(), scaled)
    compose = load_compose()
    compose["services"]["api"]["deploy"]["replica"] = 2
    schema = json.loads((SCHEMAS / "compose-spec" / "compose-spec.json").read_text())
    assert errors(Draft7Validator(schema), compose)


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    assert [image["name"] for image in kustomization["images"]] == [IMAGE]


# --- Compose -----------------------------------------------------------------------------------

def reactor_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_services():
    compose = load_compose()
    services = compose["services"]
    assert set(services) == {"redis", "api", "proxy", "analytics", *(f"worker-{p}" for p in PROVIDERS)}

    redis = services["redis"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])

    api = services["api"]
    assert api["command"][0] == "api"
    assert api["deploy"]["replicas"] == 2
    health = " ".join(api["healthcheck"]["test"])
    assert "urllib" in health and f"http://127.0.0.1:{API_PORT}/ai/v1/health" in health
    # Replicas cannot share a published port: only the proxy publishes one, and it forwards to them.
    assert "ports" not in api
    assert services["proxy"]["ports"] == [f"{API_PORT}:{API_PORT}"]
    assert f"http://api:{API_PORT}" in compose["configs"]["nginx_conf"]["content"]

    for provider in PROVIDERS:
        worker = services[f"worker-{provider}"]
        command = worker["command"]
        assert command[:3] == ["worker", "--provider", provider]
        assert command.count("--provider") == 1
        assert worker["healthcheck"]["test"]
        assert [e["path"] for e in worker["env_file"]] == [f"deploy/env/{provider}.env"]

    assert services["analytics"]["command"][:2] == ["analytics", "forward"]

    for name, svc in reactor_services(compose).items():
        assert svc["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert {c["target"] for c in svc["configs"]} == {CONFIG_PATH, f"{CONFIG_DIR}/ai-models.toml"}, name
        assert svc["environment"]["REACTOR_CONFIG"] == CONFIG_PATH, name
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:"), name
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy", name
        for env_file in svc.get("env_file", []):
            assert env_file["path"].startswith("deploy/env/"), name
            assert (ROOT / (env_file["path"] + ".example")).is_file(), env_file["path"]


def test_compose_configs_survive_interpolation():
    """Compose replaces `$NAME` in inline configs: nginx's variables must be written `$$`."""
    for name, config in load_compose()["configs"].items():
        if "content" in config:
            assert "$" not in config["content"].replace("$$", ""), name


def test_compose_and_kubernetes_run_the_same_reactor_toml():
    compose = tomllib.loads(load_compose()["configs"]["reactor_toml"]["content"])
    k8s = tomllib.loads(find("ConfigMap", "reactor-config")["data"]["reactor.toml"])
    assert compose == k8s
    assert set(compose["gateway"]["providers"]) == set(PROVIDERS)


# --- Kubernetes --------------------------------------------------------------------------------

def k8s_namespace() -> str:
    return yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())["namespace"]


def test_api_deployment_and_service():
    api = find("Deployment", "reactor-api")
    assert api["spec"]["replicas"] >= 2
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][0] == "api"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": API_PORT}
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/ai/v1/health" and ready["port"] in ("http", API_PORT)
    assert "/ai/v1/health" in json.dumps(container["livenessProbe"])
    # uvicorn drains open requests for 15 s after SIGTERM, after the preStop pause.
    assert container["lifecycle"]["preStop"]
    assert pod["terminationGracePeriodSeconds"] >= 20

    service = find("Service", "reactor-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(API_PORT, "http")]
    pdb = find("PodDisruptionBudget", "reactor-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_workload_is_sized_and_unprivileged():
    for path, doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        where = f"{path.name}: {doc['metadata']['name']}"
        spec = doc["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items(), where
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        for container in pod["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            if container["image"].split(":")[0] == IMAGE:
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                config = next(v for v in pod["volumes"] if v["name"] == mounts[CONFIG_DIR])
                assert config["configMap"]["name"] == "reactor-config", where


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_pool_has_a_deployment_and_a_scaled_object(provider: str):
    name = f"reactor-worker-{provider}"
    deployment = find("Deployment", name)
    # The ScaledObject owns the replica count; a count here would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    (container,) = containers(deployment)
    args = container["args"]
    assert args[:3] == ["worker", "--provider", provider] and args.count("--provider") == 1
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 15

    scaled = find("ScaledObject", name)
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == name and target.get("kind", "Deployment") == "Deployment"
    # A pool with no live worker is refused at the front door, so its queue cannot wake it from zero.
    assert scaled["spec"]["minReplicaCount"] >= 1
    triggers = scaled["spec"]["triggers"]
    assert triggers and all(t["type"] == "metrics-api" for t in triggers)
    service = find("Service", "reactor-api")
    url = f"http://reactor-api.{k8s_namespace()}.svc.cluster.local:{service['spec']['ports'][0]['port']}/metrics"
    locations = set()
    for trigger in triggers:
        meta = trigger["metadata"]
        assert meta["url"] == url and meta["format"] == "prometheus"
        match = re.fullmatch(r'(reactor_[a-z_]+)\{provider="([a-z]+)"\}', meta["valueLocation"])
        assert match and match.group(2) == provider, meta["valueLocation"]
        assert float(meta["targetValue"]) > 0
        locations.add(match.group(1))
    assert "reactor_queue_depth" in locations


def keda_value(page: str, value_location: str) -> float:
    """What KEDA's metrics-api scaler reads with `format: prometheus`: the first sample of the
    family named by the selector whose labels match every label the selector names."""
    from prometheus_client.parser import text_string_to_metric_families

    name, labels = re.fullmatch(r"(\w+)\{(.*)\}", value_location).groups()
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', labels))
    for family in text_string_to_metric_families(page):
        if family.name == name:
            for sample in family.samples:
                if wanted.items() <= sample.labels.items():
                    return sample.value
    raise AssertionError(f"{value_location} selects nothing on the front door's /metrics page")


def test_the_scalers_read_what_the_front_door_exports():
    """Each trigger's selector, applied to the front door's real /metrics page over a Redis holding
    queued and running jobs, reads that pool's numbers."""
    import asyncio
    import time

    import fakeredis

    from shared.keys import Keys
    from shared.metrics import GatewayMetrics

    keys = Keys("reactor:")
    expected = {}

    async def page() -> str:
        redis = fakeredis.FakeAsyncRedis()
        now_ms = int(time.time() * 1000)
        for i, provider in enumerate(PROVIDERS):
            queued, running = i + 1, 10 * (i + 1)
            # arq's queue: due jobs are waiting; a claimed job's score is its claim's deadline.
            await redis.zadd(keys.queue(provider), {f"q{provider}{n}": now_ms - 1000 for n in range(queued)})
            await redis.zadd(keys.queue(provider), {f"r{provider}{n}": now_ms + 60_000 for n in range(running)})
            expected[provider] = {"reactor_queue_depth": queued, "reactor_jobs_running": running}
        metrics = GatewayMetrics()
        metrics.fleet.attach(redis, keys, list(PROVIDERS), 2.0)
        body, _ = await metrics.render()
        return body.decode()

    text = asyncio.run(page())
    for provider in PROVIDERS:
        for trigger in find("ScaledObject", f"reactor-worker-{provider}")["spec"]["triggers"]:
            location = trigger["metadata"]["valueLocation"]
            metric = location.split("{")[0]
            assert keda_value(text, location) == expected[provider][metric], location


def test_probed_and_scraped_routes_exist(tmp_path: Path):
    """The front door as `reactor api` builds it serves the probes' and the scalers' routes."""
    from api.app import create_app
    from shared.config import load_settings
    from shared.metrics import GatewayMetrics

    settings = load_settings(env={"REDIS_URL": "redis://127.0.0.1:1/0", "REACTOR_DATA_DIR": str(tmp_path)})
    app = create_app(settings, metrics=GatewayMetrics())
    paths = {getattr(route, "path", None) for route in app.routes}
    assert {"/ai/v1/health", "/metrics"} <= paths


# --- commands, config and environment, as each process would see them ------------------------

def compose_processes() -> dict[str, tuple[list[str], dict[str, str], dict[str, str]]]:
    """Per Compose service of the image: its command, environment, and config files by mount path."""
    compose = load_compose()
    out = {}
    for name, svc in reactor_services(compose).items():
        env = {k: re.sub(r"^\$\{[A-Z0-9_]+:-(.*)\}$", r"\1", str(v)) for k, v in svc["environment"].items()}
        for env_file in svc.get("env_file", []):
            env.update(filled(ROOT / (env_file["path"] + ".example")))
        files = {}
        for ref in svc["configs"]:
            config = compose["configs"][ref["source"]]
            files[ref["target"]] = config["content"] if "content" in config else (ROOT / config["file"]).read_text()
        out[name] = (svc["command"], env, files)
    return out


def k8s_processes() -> dict[str, tuple[list[str], dict[str, str], dict[str, str]]]:
    """Per container of the image: its args, environment, and config files by mount path."""
    out = {}
    for _, doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        for container in pod["containers"]:
            if container["image"].split(":")[0] != IMAGE:
                continue
            env: dict[str, str] = {}
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
                else:
                    secret = source["secretRef"]["name"]
                    assert example_for(secret).is_file(), f"Secret {secret} has no template {example_for(secret)}"
                    env.update(filled(example_for(secret)))
            for var in container.get("env", []):
                env[var["name"]] = var.get("value", "from-a-secret")
            files = {}
            for mount in container["volumeMounts"]:
                volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
                if "configMap" in volume:
                    data = find("ConfigMap", volume["configMap"]["name"])["data"]
                    files.update({f"{mount['mountPath']}/{key}": value for key, value in data.items()})
            out[f"{doc['metadata']['name']}/{container['name']}"] = (container["args"], env, files)
    return out


PROCESSES = {**{f"compose:{k}": v for k, v in compose_processes().items()},
             **{f"k8s:{k}": v for k, v in k8s_processes().items()}}


@pytest.mark.parametrize("where", sorted(PROCESSES))
def test_each_process_command_parses(where: str):
    check_command(PROCESSES[where][0])


@pytest.mark.parametrize("where", sorted(PROCESSES))
def test_each_process_loads_its_config(where: str, tmp_path: Path):
    """reactor.toml and the environment load as the process would load them; a worker's provider
    is enabled and has credentials (else it refuses to start), and the registry overlay parses."""
    from shared.config import load_settings
    from shared.registry import load_registry
    from workers.worker import provider_names

    args, env, files = PROCESSES[where]
    root = tmp_path / "mnt"
    for path, text in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    assert env.get("REACTOR_CONFIG") == CONFIG_PATH and CONFIG_PATH in files, where
    env = {**env, "REACTOR_CONFIG": str(root / CONFIG_PATH.lstrip("/")), "REACTOR_DATA_DIR": str(tmp_path / "data")}
    settings = load_settings(env=env)
    assert settings.redis_url, where
    assert settings.registry_overlay is not None and settings.registry_overlay.is_file(), where
    load_registry(settings.registry_overlay.read_text(), str(settings.registry_overlay))
    if args[0] == "worker":
        provider = args[args.index("--provider") + 1]
        assert provider_names(settings, [provider]) == [provider]
    if args[0] == "api":
        # The API orders routes by which providers have credentials: it must see them all.
        assert {n: p.missing_credentials() for n, p in settings.enabled_providers.items()} == \
            dict.fromkeys(PROVIDERS), where


def test_env_names_are_documented():
    used: dict[str, set[str]] = {}
    for where, (_, env, _) in PROCESSES.items():
        for name in env:
            used.setdefault(name, set()).add(where)
    for example in ENV_DIR.glob("*.env.example"):
        for name in env_file_keys(example):
            used.setdefault(name, set()).add(example.name)
    documented = readme_documented()
    undocumented = {name: sorted(places) for name, places in used.items() if name not in documented}
    assert undocumented == {}, "used by the deployment files but not documented in the README"


# --- secrets -----------------------------------------------------------------------------------

def test_no_secret_values_inline():
    compose = load_compose()
    assert "secrets" not in compose
    for name, svc in compose["services"].items():
        for var in svc.get("environment", {}):
            assert not SECRETISH.search(var), f"compose {name} sets {var} inline: put it in its env file"
    for path, doc in k8s_docs():
        assert doc["kind"] != "Secret", f"{path.name}: Secrets are created from deploy/env, never committed"
        if doc["kind"] == "ConfigMap":
            assert not any(SECRETISH.search(key) for key in doc["data"]), path.name
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for container in containers(doc):
                for var in container.get("env", []):
                    if SECRETISH.search(var["name"]):
                        assert "secretKeyRef" in var.get("valueFrom", {}), f"{path.name}: {var['name']}"
    for example in ENV_DIR.glob("*.env.example"):
        for key, value in env_file_keys(example).items():
            assert not (SECRETISH.search(key) and value), f"{example.name}: {key} has a value"
    assert "*.env" in (ENV_DIR / ".gitignore").read_text().split()
    text = "\n".join(p.read_text() for p in [ROOT / "compose.yaml", *K8S_DIR.glob("*.yaml"), *ENV_DIR.glob("*")])
    assert not re.search(r"sk-or-v1-[0-9a-f]{8}|AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", text)


# --- image -------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile():
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    for op, arg in instructions:
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"
    user = [arg for op, arg in instructions if op == "USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0
    # Kubernetes' runAsNonRoot needs a numeric uid, and the manifests name the same one.
    for _, doc in k8s_docs():
        if doc["kind"] == "Deployment":
            assert doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(user)
    entrypoint = json.loads(next(arg for op, arg in instructions if op == "ENTRYPOINT"))
    assert entrypoint == ["reactor"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "reactor" in scripts
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    assert f"REACTOR_DATA_DIR={DATA_DIR}" in env
