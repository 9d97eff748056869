"""docker-compose.yml: valid against the Compose Specification, and safe to run.

No Docker, no network and no broker needed: the file is read with PyYAML and checked against
the Compose Specification's JSON schema with jsonschema.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from jsonschema import validators

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
CLUSTER_SERVICES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
BROKER_SERVICES = ("rabbitmq", *CLUSTER_SERVICES)
SHARED_SCHEMA = Path(__file__).resolve().parents[2] / "shared/data/compose-spec.json"
LOCAL_SCHEMA = Path(__file__).resolve().parent / "data/compose-spec.json"

LOOPBACK = "127.0.0.1"


def _schema_path() -> Path:
    return SHARED_SCHEMA if SHARED_SCHEMA.is_file() else LOCAL_SCHEMA


@cache
def _schema() -> dict[str, Any]:
    return json.loads(_schema_path().read_text(encoding="utf-8"))


@cache
def _validator() -> jsonschema.protocols.Validator:
    """A validator of the draft that the schema's $schema names (Draft 7 when unknown).

    The Compose schema writes `https://json-schema.org/draft-07/schema`, which jsonschema knows
    only as `http://json-schema.org/draft-07/schema#` (asked as is, it warns and falls back to
    the newest draft), so a few spellings of the URI are tried.
    """
    schema = _schema()
    uri = str(schema.get("$schema", ""))
    http = uri.replace("https://", "http://", 1)
    cls = next(
        (
            found
            for candidate in (uri, http, http.rstrip("#") + "#")
            if (found := validators.validator_for({"$schema": candidate}, default=None))
        ),
        jsonschema.Draft7Validator,
    )
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _errors(document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in _validator().iter_errors(document)
    ]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _default(value: str) -> str:
    """`value` as Compose reads it with none of its variables set: `${X:-d}` becomes `d`."""
    return _VARIABLE.sub(lambda m: m["default"] or "", value)


def _published(port: int | str | dict[str, Any]) -> tuple[str | None, str | None]:
    """(host_ip, published host port) of one `ports` entry; None where the entry leaves it out.

    Short syntax: `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTOCOL]`, HOST_IP maybe `[v6]`.
    """
    if isinstance(port, dict):
        published = port.get("published")
        return port.get("host_ip"), None if published in (None, "") else str(published)
    text = str(port).split("/", 1)[0]
    host_ip = None
    if text.startswith("["):
        host_ip, text = text[1:].split("]:", 1)
        parts = text.split(":")
    else:
        parts = text.split(":")
        if len(parts) == 3:
            host_ip = parts.pop(0)
    published = parts[0] if len(parts) == 2 and parts[0] else None
    return host_ip, published


# --- the schema itself -------------------------------------------------------------------------


def test_schema_is_found_and_sound() -> None:
    assert _schema_path().is_file(), f"no Compose schema at {SHARED_SCHEMA} nor {LOCAL_SCHEMA}"
    validator = _validator()
    assert isinstance(validator, jsonschema.Draft7Validator), type(validator)


def test_local_copy_of_schema_is_present() -> None:
    # The tests must not depend on a folder outside the repository.
    assert LOCAL_SCHEMA.is_file()
    json.loads(LOCAL_SCHEMA.read_text(encoding="utf-8"))


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    assert _errors(compose) == []


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({"services": {"x": {"image": "busybox", "ports": 5}}}, id="ports-not-list"),
        pytest.param({"services": {"x": {"image": "busybox"}}, "servics": {}}, id="unknown-key"),
        pytest.param({"services": {"x": {"imag": "busybox"}}}, id="unknown-service-key"),
        pytest.param(
            {
                "services": {
                    "x": {"image": "busybox", "depends_on": {"y": {"condition": "healthy"}}}
                }
            },
            id="bad-condition",
        ),
    ],
)
def test_validator_rejects_broken_documents(document: dict[str, Any]) -> None:
    assert _errors(document), "the validator accepted a broken compose document"


def test_short_port_syntax_parsing() -> None:
    assert _published("127.0.0.1:5672:5672") == ("127.0.0.1", "5672")
    assert _published("127.0.0.1::5672/tcp") == ("127.0.0.1", None)
    assert _published("[::1]:5672:5672") == ("::1", "5672")
    assert _published("5672:5672") == (None, "5672")
    assert _published("5672") == (None, None)
    assert _published(5672) == (None, None)
    assert _published({"target": 80, "published": 8080, "host_ip": LOOPBACK}) == (
        LOOPBACK,
        "8080",
    )


# --- what the project needs from its compose file ----------------------------------------------


@pytest.mark.parametrize("name", BROKER_SERVICES)
def test_rabbitmq_image_is_pinned_management(services: dict[str, Any], name: str) -> None:
    image = _default(services[name]["image"])
    name, _, tag = image.rpartition("/")[2].partition(":")
    assert name == "rabbitmq", image
    assert tag and tag != "latest", f"unpinned image {image!r}"
    pinned = re.fullmatch(r"\d+\.\d+\.\d+-management(-alpine)?", tag)
    assert pinned, f"want rabbitmq:X.Y.Z-management, got {image!r}"


@pytest.mark.parametrize("name", BROKER_SERVICES)
def test_rabbitmq_has_healthcheck(services: dict[str, Any], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check, f"{name} needs a healthcheck for depends_on: service_healthy"
    assert not check.get("disable", False)
    test = check["test"]
    command = " ".join(test) if isinstance(test, list) else str(test)
    assert test not in (["NONE"], "NONE")
    # Healthy must mean "AMQP answers": `ping` passes about 1.5 s before the listeners are up.
    assert "rabbitmq-diagnostics" in command and "check_port_connectivity" in command, command


def test_every_published_port_is_loopback_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for port in service.get("ports") or []:
            host_ip, _ = _published(_default(port))
            assert host_ip == LOOPBACK, f"{name}: port {port!r} is not bound to {LOOPBACK}"


def test_rabbitmq_publishes_amqp_and_management(services: dict[str, Any]) -> None:
    published = {_published(_default(p))[1] for p in services["rabbitmq"].get("ports") or []}
    assert {"5672", "15672"} <= published


def test_every_variable_has_a_default() -> None:
    # Plain `docker compose up`, with nothing set, must use the images users pull.
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    variables = list(_VARIABLE.finditer(text))
    assert variables, "the images and ports should be open to substitution"
    assert all(m["default"] for m in variables), [m[0] for m in variables if not m["default"]]
    assert "$" not in _default(text).replace("$$", ""), "a variable of another syntax"


def test_the_images_users_pull_are_the_defaults(services: dict[str, Any]) -> None:
    assert _default(services["rabbitmq"]["image"]).startswith("rabbitmq:")
    for name in ("producer", "consumer"):
        base = services[name]["build"]["args"]["BASE_IMAGE"]
        assert _default(base) == "python:3.11-slim", base
        assert _default(services[name]["image"]) == "taskshuttle:local"


def test_compose_v1_can_read_it(compose: dict[str, Any], services: dict[str, Any]) -> None:
    # docker-compose 1.29 refuses a top-level `name` and ignores `configs` outside a swarm.
    assert "name" not in compose
    assert not any("configs" in service for service in services.values())


@pytest.mark.parametrize("name", ["producer", "consumer"])
def test_app_services_build_and_wait_for_healthy_broker(
    services: dict[str, Any], name: str
) -> None:
    service = services[name]
    assert service.get("build"), f"{name} must be built from the project's Dockerfile"
    depends = service.get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs the long form with a condition"
    assert depends.get("rabbitmq", {}).get("condition") == "service_healthy"


@pytest.mark.parametrize("name", ["producer", "consumer"])
def test_app_services_log_in_as_the_broker_default_user(
    services: dict[str, Any], name: str
) -> None:
    # guest/guest is refused from anywhere but loopback, so containers need a real user.
    broker_env = _environment(services["rabbitmq"])
    user = broker_env.get("RABBITMQ_DEFAULT_USER")
    password = broker_env.get("RABBITMQ_DEFAULT_PASS")
    assert user and password and user != "guest"
    url = _environment(services[name]).get("AMQP_URL", "")
    assert url.startswith(f"amqp://{user}:{password}@rabbitmq:5672/"), url


def test_consumer_can_scale(services: dict[str, Any]) -> None:
    consumer = services["consumer"]
    assert "container_name" not in consumer, "container_name breaks --scale"
    for port in consumer.get("ports") or []:
        _, published = _published(port)
        assert published is None, f"fixed host port {port!r} breaks --scale"


def test_commands_use_the_rabbitmq_backend(services: dict[str, Any]) -> None:
    for name in ("producer", "consumer"):
        command = services[name]["command"]
        words = command if isinstance(command, list) else command.split()
        assert words[0] == name
        assert words[words.index("--backend") + 1] == "rabbitmq"


def test_producer_is_not_started_by_plain_up(services: dict[str, Any]) -> None:
    assert services["producer"].get("profiles"), "producer should sit behind a profile"


# --- the `cluster` profile: three clustered brokers --------------------------------------------


def _host_path(compose: dict[str, Any], kind: str, name: str) -> Path:
    """The file behind a top-level `secrets:` entry (relative to the compose file)."""
    entry = (compose.get(kind) or {}).get(name)
    assert entry and entry.get("file"), f"{kind}.{name} must name a file"
    return (COMPOSE_FILE.parent / entry["file"]).resolve()


def _conf_mounts(service: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(host file, container path) of each file mounted into RabbitMQ's conf.d."""
    found = []
    for volume in service.get("volumes") or []:
        source, target = str(volume).split(":")[:2]
        if target.startswith("/etc/rabbitmq/conf.d/"):
            found.append((source, target))
    return tuple(found)


def _sources(service: dict[str, Any], kind: str) -> list[str]:
    return [item if isinstance(item, str) else item["source"] for item in service.get(kind) or []]


def test_cluster_nodes_use_the_single_broker_image(services: dict[str, Any]) -> None:
    for name in CLUSTER_SERVICES:
        assert services[name]["image"] == services["rabbitmq"]["image"], name


def test_cluster_sits_behind_its_profile(services: dict[str, Any]) -> None:
    for name in CLUSTER_SERVICES:
        assert services[name].get("profiles") == ["cluster"], name
    # Plain `docker compose up` is unchanged: nothing else joins the profile.
    others = [n for n, s in services.items() if "cluster" in (s.get("profiles") or [])]
    assert sorted(others) == sorted(CLUSTER_SERVICES)
    assert not services["rabbitmq"].get("profiles")


def test_cluster_ports_are_distinct_from_each_other_and_the_single_broker(
    services: dict[str, Any],
) -> None:
    seen: dict[str, str] = {}
    for name in BROKER_SERVICES:
        for port in services[name].get("ports") or []:
            _, published = _published(_default(port))
            assert published, f"{name}: {port!r} publishes no fixed host port"
            assert published not in seen, f"{name} and {seen[published]} both publish {published}"
            seen[published] = name
    amqp = {
        name: {_published(_default(p))[1] for p in services[name]["ports"]}
        for name in CLUSTER_SERVICES
    }
    for n, name in enumerate(CLUSTER_SERVICES, start=1):
        assert str(5680 + n) in amqp[name], f"{name} should publish AMQP on {5680 + n}"


def test_cluster_services_share_one_cookie(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    secrets = {name: tuple(_sources(services[name], "secrets")) for name in CLUSTER_SERVICES}
    assert len(set(secrets.values())) == 1, secrets
    (sources,) = set(secrets.values())
    assert len(sources) == 1, f"one cookie secret expected, got {sources}"
    cookie_file = _host_path(compose, "secrets", sources[0])
    cookie = cookie_file.read_text(encoding="ascii").strip()
    assert re.fullmatch(r"[A-Za-z0-9]{20,255}", cookie), f"{cookie_file}: not a usable cookie"
    for name in CLUSTER_SERVICES:
        service = services[name]
        # The cookie reaches RabbitMQ as a file, not through the deprecated variable.
        assert "RABBITMQ_ERLANG_COOKIE" not in _environment(service), name
        entrypoint = service.get("entrypoint")
        command = " ".join(entrypoint) if isinstance(entrypoint, list) else str(entrypoint)
        assert f"/run/secrets/{sources[0]}" in command, f"{name}: the cookie is never installed"
        assert "/var/lib/rabbitmq/.erlang.cookie" in command, name
        assert "-m 0400" in command and "-o rabbitmq" in command, name
        assert "exec docker-entrypoint.sh" in command, f"{name}: the image's entrypoint must run"


def test_cluster_services_list_each_other_as_peers(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    mounts = {name: _conf_mounts(services[name]) for name in CLUSTER_SERVICES}
    assert len(set(mounts.values())) == 1 and len(mounts["rabbitmq-1"]) == 1, mounts
    ((source, _target),) = mounts["rabbitmq-1"]
    conf_file = (COMPOSE_FILE.parent / source).resolve()
    settings = {}
    for line in conf_file.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    assert settings.get("cluster_formation.peer_discovery_backend") in (
        "classic_config",
        "rabbit_peer_discovery_classic_config",
    )
    peers = {v for k, v in settings.items() if k.startswith("cluster_formation.classic_config.")}
    # Each node is rabbit@<hostname>, and the hostname is the service name, which the compose
    # network resolves.
    for name in CLUSTER_SERVICES:
        assert services[name].get("hostname") == name
        assert not _environment(services[name]).get("RABBITMQ_NODENAME"), name
    assert peers == {f"rabbit@{name}" for name in CLUSTER_SERVICES}


def test_cluster_nodes_keep_their_data_apart(services: dict[str, Any]) -> None:
    data = {}
    for name in BROKER_SERVICES:
        mounts = [str(v).split(":")[0] for v in services[name].get("volumes") or []]
        targets = [str(v).split(":")[1] for v in services[name].get("volumes") or []]
        assert "/var/lib/rabbitmq" in targets, f"{name} keeps no data volume"
        data[name] = mounts[targets.index("/var/lib/rabbitmq")]
    assert len(set(data.values())) == len(BROKER_SERVICES), data
