"""The deployment files agree with the code: roles, settings, kustomize files, probes, queues.

Pure file parsing: nothing is built, applied or started.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from services.cli import app
from services.common.broker.base import BINDINGS, DEAD_LETTERS, RETRY, QueueRole
from services.common.broker.rabbit import RabbitBroker
from services.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
COMPOSE = ROOT / "docker-compose.yml"
DEFINITIONS = BASE / "rabbitmq-definitions.json"

YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), COMPOSE])
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
# The click group typer builds (typer vendors its own click, so no isinstance check).
CLI: Any = typer.main.get_command(app)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(path: Path) -> list[Any]:
    # Unparsable files yield nothing here; the parse test names them.
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError:
        return []


def _base_objects() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(BASE.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _documents(path)
        if isinstance(doc, dict) and "kind" in doc
    ]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in _base_objects() if o["kind"] == kind]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "ownersync")


def _settings_env() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in (BASE / "settings.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def _compose_services() -> dict[str, Any]:
    docs = _documents(COMPOSE)
    return docs[0]["services"] if docs else {}


def _invocations() -> Iterator[tuple[str, list[str]]]:
    """Every (where, argv) that starts `ownersync`: compose commands, Deployment and Job args."""
    for name, service in _compose_services().items():
        if "command" in service and service.get("image", "").startswith("ownersync"):
            yield f"docker-compose.yml:{name}", [str(a) for a in service["command"]]
    for workload in [*_of_kind("Deployment"), *_of_kind("Job")]:
        container = _container(workload)
        argv = [*container.get("command", []), *container.get("args", [])]
        yield f"{workload['kind']}/{workload['metadata']['name']}", [str(a) for a in argv]


INVOCATIONS = list(_invocations())
SETTING_NAMES = {f"OWNERSYNC_{name.upper()}" for name in Settings.model_fields}
VARIABLE_FILES = sorted(
    [p for p in DEPLOY.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    + [COMPOSE, ROOT / "Dockerfile"]
)
NAMED_VARIABLES = sorted(
    {
        (match, _rel(path))
        for path in VARIABLE_FILES
        for match in re.findall(r"\bOWNERSYNC_[A-Z0-9_]*[A-Z0-9]", path.read_text())
    }
)


@pytest.mark.parametrize("path", YAML_FILES, ids=_rel)
def test_every_yaml_file_parses(path: Path) -> None:
    assert list(yaml.safe_load_all(path.read_text()))


def test_the_rabbitmq_definitions_file_is_json() -> None:
    assert isinstance(json.loads(DEFINITIONS.read_text()), dict)


def test_the_manifests_start_every_role() -> None:
    roles = {argv[0] for _, argv in INVOCATIONS if argv}
    assert {"migrate", "receiver", "assigner", "syncer", "relay", "sim"} <= roles


@pytest.mark.parametrize(("where", "argv"), INVOCATIONS, ids=[w for w, _ in INVOCATIONS])
def test_every_role_the_manifests_run_is_a_command_of_the_cli(where: str, argv: list[str]) -> None:
    role, *rest = argv
    assert role in CLI.commands, f"{where} runs `ownersync {role}`, not a command of the CLI"
    options = {opt for param in CLI.commands[role].params for opt in param.opts}
    for arg in rest:
        if arg.startswith("--"):
            assert arg in options, f"{where}: `ownersync {role}` has no option {arg}"


@pytest.mark.parametrize(
    ("variable", "where"), NAMED_VARIABLES, ids=[f"{v}@{w}" for v, w in NAMED_VARIABLES]
)
def test_every_ownersync_variable_in_the_deployment_files_is_a_setting(
    variable: str, where: str
) -> None:
    assert variable in SETTING_NAMES, f"{where} sets {variable}, which Settings does not read"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=lambda p: _rel(p.parent))
def test_every_kustomization_lists_every_file_in_its_folder(kustomization: Path) -> None:
    folder = kustomization.parent
    spec = yaml.safe_load(kustomization.read_text())
    listed = [r for r in spec.get("resources", []) if not (folder / r).is_dir()]
    listed += [p["path"] for p in spec.get("patches", []) if "path" in p]
    for generator in [*spec.get("configMapGenerator", []), *spec.get("secretGenerator", [])]:
        listed += generator.get("envs", [])
        listed += [f.split("=", 1)[-1] for f in generator.get("files", [])]
    present = {p.name for p in folder.iterdir() if p.is_file()} - {"kustomization.yaml"}
    assert sorted(set(listed)) == sorted(present)


@pytest.mark.parametrize("deployment", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_has_readiness_and_liveness_probes(deployment: dict[str, Any]) -> None:
    container = _container(deployment)
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in {"/healthz", "/readyz"}


@pytest.mark.parametrize("deployment", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_requests_and_limits_cpu_and_memory(deployment: dict[str, Any]) -> None:
    resources = _container(deployment)["resources"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[bound])


@pytest.mark.parametrize("deployment", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_probes_the_port_its_settings_name(deployment: dict[str, Any]) -> None:
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    setting = "OWNERSYNC_PORT" if container["args"] == ["receiver"] else "OWNERSYNC_METRICS_PORT"
    for probe in ("readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert str(ports.get(port, port)) == _settings_env()[setting]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == _settings_env()[setting]


@pytest.mark.parametrize("deployment", _of_kind("Deployment"), ids=lambda d: d["metadata"]["name"])
def test_every_deployment_is_selected_by_a_disruption_budget(deployment: dict[str, Any]) -> None:
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    budgets = [
        pdb
        for pdb in _of_kind("PodDisruptionBudget")
        if pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        and ({"minAvailable", "maxUnavailable"} & set(pdb["spec"]))
    ]
    assert len(budgets) == 1


def test_every_long_running_compose_role_waits_for_a_migrated_database() -> None:
    services = _compose_services()
    for role in ("receiver", "assigner", "syncer", "relay"):
        assert services[role]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "rabbitmq": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, role


def _published_ports() -> list[tuple[str, str]]:
    return [
        (name, str(port))
        for name, service in _compose_services().items()
        for port in service.get("ports", [])
    ]


@pytest.mark.parametrize(("service", "port"), _published_ports(), ids=lambda v: str(v))
def test_compose_publishes_every_port_on_loopback_unless_told_otherwise(
    service: str, port: str
) -> None:
    # host:published:container, where host may be `${VAR:-default}`: the default must be
    # loopback, so that nothing is reachable from other machines by accident.
    by_default = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", port)
    assert by_default.count(":") == 2, f"{service} publishes {port} on every interface"
    assert by_default.split(":")[0] == "127.0.0.1", f"{service} publishes {port}"


def test_the_demo_env_file_ships_no_operator_key() -> None:
    settings = (DEPLOY / "compose" / "demo.env").read_text()
    assert not re.search(r"^OWNERSYNC_OPERATOR_KEY=", settings, re.MULTILINE)


def _broker() -> RabbitBroker:
    defaults = Settings.model_fields
    env = _settings_env()
    return RabbitBroker(
        "amqp://unused",
        exchange=env.get("OWNERSYNC_EXCHANGE", defaults["exchange"].default),
        queue_prefix=env.get("OWNERSYNC_QUEUE_PREFIX", defaults["queue_prefix"].default),
        delivery_limit=int(env.get("OWNERSYNC_DELIVERY_LIMIT", defaults["delivery_limit"].default)),
    )


@pytest.mark.parametrize("scaled", _of_kind("ScaledObject"), ids=lambda s: s["metadata"]["name"])
def test_every_scaled_object_watches_the_queue_its_deployment_consumes(
    scaled: dict[str, Any],
) -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
    role = _container(target)["args"][0]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == _broker().queue_name(QueueRole(role))
    authentications = {a["metadata"]["name"] for a in _of_kind("TriggerAuthentication")}
    assert trigger["authenticationRef"]["name"] in authentications


def test_the_scaled_roles_are_the_queue_consumers() -> None:
    scaled = {s["spec"]["scaleTargetRef"]["name"] for s in _of_kind("ScaledObject")}
    assert scaled == {role.value for role in QueueRole}


def test_rabbitmq_definitions_declare_the_topology_the_code_declares() -> None:
    # The broker refuses a re-declaration with other arguments (PRECONDITION_FAILED), so the
    # imported queues must carry exactly what RabbitBroker declares.
    broker = _broker()
    definitions = json.loads(DEFINITIONS.read_text())
    queues = {q["name"]: q["arguments"] for q in definitions["queues"]}
    expected = {broker.queue_name(role): broker._work_queue_arguments() for role in QueueRole}
    expected[broker.queue_name(DEAD_LETTERS)] = {"x-queue-type": "quorum"}
    expected[broker.queue_name(RETRY)] = broker.retry_queue_arguments()
    assert queues == expected

    exchanges = {e["name"]: e["type"] for e in definitions["exchanges"]}
    assert exchanges == {
        broker.exchange_name: "topic",
        broker.dlx_name: "fanout",
        broker.retry_exchange_name: "fanout",
    }

    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    expected_bindings = {
        (broker.exchange_name, broker.queue_name(role), key) for role, key in BINDINGS.items()
    }
    expected_bindings.add((broker.dlx_name, broker.queue_name(DEAD_LETTERS), ""))
    expected_bindings.add((broker.retry_exchange_name, broker.queue_name(RETRY), ""))
    assert bindings == expected_bindings


def test_the_rabbitmq_policy_covers_exactly_the_work_queues() -> None:
    broker = _broker()
    (policy,) = json.loads(DEFINITIONS.read_text())["policies"]
    every_queue = {broker.queue_name(role) for role in QueueRole} | {
        broker.queue_name(DEAD_LETTERS),
        broker.queue_name(RETRY),
    }
    matched = {name for name in every_queue if re.search(policy["pattern"], name)}
    assert matched == {broker.queue_name(role) for role in QueueRole}
    assert policy["definition"] == {
        "delivery-limit": broker.delivery_limit,
        "dead-letter-exchange": broker.dlx_name,
    }


def _deployment(name: str) -> dict[str, Any]:
    return next(d for d in _of_kind("Deployment") if d["metadata"]["name"] == name)


def test_two_relays_run_and_are_rolled_one_at_a_time() -> None:
    relay = _deployment("relay")
    assert relay["spec"]["replicas"] == 2
    strategy = relay["spec"]["strategy"]
    # Never fewer than two while rolling: a new pod starts before an old one stops.
    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    production = yaml.safe_load((DEPLOY / "overlays/production/kustomization.yaml").read_text())
    assert {"name": "relay", "count": 2} in production["replicas"]


def test_each_relay_pod_leases_records_under_its_own_name() -> None:
    env = {e["name"]: e for e in _container(_deployment("relay")).get("env", [])}
    replica = env["OWNERSYNC_RELAY_REPLICA_ID"]
    assert replica["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
