"""compose/ and the Dockerfile, checked without Docker.

No Docker engine runs in CI, so nothing is started here: the compose file is
parsed, every metrobus service's command is run with ``--help`` and parsed by
click exactly as ``metrobus`` would parse it (without executing it), and the
Kafka, Redis, environment and Dockerfile settings are checked against what
metrobus expects.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml

from metrobus import supervisor
from metrobus.cli import cli
from metrobus.settings import load_settings
from metrobus.stops import build_stop

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_FILE = COMPOSE_DIR / "metrobus.env"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS = load_settings(ROOT / "metrobus.toml", {})


# -- reading the files ---------------------------------------------------------


def _load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    assert isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


def _is_metrobus(service: dict[str, Any], images: set[str]) -> bool:
    build = service.get("build")
    if build is not None:
        context = build if isinstance(build, str) else build.get("context", ".")
        return (COMPOSE_DIR / context).resolve() == ROOT
    return service.get("image") in images


def _metrobus_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the image built from the repository (by build or by image)."""
    services = compose["services"]
    built = {n: s for n, s in services.items() if s.get("build") is not None}
    images = {s["image"] for s in built.values() if _is_metrobus(s, set()) and "image" in s}
    return {n: s for n, s in services.items() if _is_metrobus(s, images)}


try:
    COMPOSE: dict[str, Any] = _load_compose()
    METROBUS: dict[str, dict[str, Any]] = _metrobus_services(COMPOSE)
except Exception:  # reported by test_compose_file_parses, not as a collection error
    COMPOSE, METROBUS = {"services": {}}, {}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _published(service: dict[str, Any]) -> list[tuple[int, int]]:
    """(host port, container port) of each published TCP port."""
    out = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                out.append((int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) >= 2:
            out.append((int(parts[-2]), int(parts[-1])))
    return out


def _env_file(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """(active KEY=VALUE lines, commented-out ``# KEY=VALUE`` examples)."""
    active: dict[str, str] = {}
    examples: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        target = active
        if line.startswith("#"):
            line = line.lstrip("#").strip()
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line):
                continue  # prose
            target = examples
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        assert match, f"metrobus.env line {number} is not KEY=VALUE: {line!r}"
        key, value = match.groups()
        assert key not in target, f"metrobus.env sets {key} twice"
        assert not value.startswith(("'", '"')), f"{key}: no quotes (compose keeps them)"
        target[key] = value
    return active, examples


def _honoured_variables() -> set[str]:
    """The environment variables metrobus reads (settings.py is the only reader)."""
    source = (ROOT / "src/metrobus/settings.py").read_text(encoding="utf-8")
    return set(re.findall(r"""env(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""", source))


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        keyword, _, args = pending.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def _copies(instructions: list[tuple[str, str]]) -> list[tuple[int, list[str], str]]:
    """(index, sources, absolute destination) of each COPY from the build context."""
    out = []
    workdir = PurePosixPath("/")
    for index, (keyword, args) in enumerate(instructions):
        if keyword == "WORKDIR":
            workdir = workdir / args
        if keyword not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources, dest = words[:-1], workdir / words[-1]
        out.append((index, [s.rstrip("/") or "." for s in sources], str(dest)))
    return out


def _copied_to(copies: list[tuple[int, list[str], str]], source: str) -> str | None:
    for _, sources, dest in copies:
        if source in sources:
            into_dir = dest.endswith("/") or len(sources) > 1 or dest.endswith("/.")
            path = PurePosixPath(dest) / PurePosixPath(source).name if into_dir else dest
            return str(PurePosixPath(str(path).replace("/./", "/")))
    return None


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negate, pattern))
    return rules


def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last matching pattern wins; a matching directory covers its files."""

    def matches(pattern: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        patterns = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)

    ignored = False
    for negate, pattern in rules:
        if matches(pattern):
            ignored = not negate
    return ignored


def parse_command(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``metrobus ARGS`` like the CLI does, without running anything.

    Returns the subcommand and its converted parameters; a bad option, value,
    type or missing argument raises ``click.UsageError`` (``BadParameter`` …).
    """
    with cli.make_context("metrobus", list(args)) as ctx:
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, sub_args = cli.resolve_command(ctx, rest)
        assert name is not None
        assert command is not None
        with command.make_context(name, list(sub_args), parent=ctx) as sub:
            assert not sub.args, f"unexpected arguments {sub.args}"
            return name, dict(sub.params)


def _parsed(service: str) -> tuple[str, dict[str, Any]]:
    return parse_command(METROBUS[service]["command"])


# -- the compose file -------------------------------------------------------------


def test_compose_file_parses() -> None:
    compose = _load_compose()
    for name, service in compose["services"].items():
        assert isinstance(service, dict), f"service {name} is not a mapping"
    assert {"kafka", "redis"} <= set(compose["services"])
    assert METROBUS, "no service runs the image built from the repository's Dockerfile"


def test_every_pipeline_piece_has_a_service() -> None:
    """The four stops, the seeder and the load generator, each once."""
    parsed = [_parsed(name) for name in METROBUS]
    stops = sorted(params["stop"] for command, params in parsed if command == "run")
    assert stops == sorted(SETTINGS.stops)
    commands = [command for command, _ in parsed]
    assert commands.count("seed") == 1
    assert commands.count("push") == 1


def test_metrobus_services_share_the_image_built_from_the_repository() -> None:
    images = {service.get("image") for service in METROBUS.values()}
    assert len(images) == 1, f"one image for every metrobus service, not {images}"
    for name, service in METROBUS.items():
        build = service.get("build")
        if build is not None:
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            context = COMPOSE_DIR / (build if isinstance(build, str) else build["context"])
            assert (context / (dockerfile or "Dockerfile")).resolve() == DOCKERFILE, name
        env_files = service.get("env_file")
        env_files = [env_files] if isinstance(env_files, str) else env_files or []
        assert [(COMPOSE_DIR / f).resolve() for f in env_files] == [ENV_FILE], name
        assert service.get("init") is True, f"{name}: init: true forwards SIGTERM"


@pytest.mark.parametrize("service", sorted(METROBUS))
def test_command_is_a_list_of_strings(service: str) -> None:
    command = METROBUS[service].get("command")
    assert isinstance(command, list), f"{service}: command must be a list of metrobus arguments"
    assert command, f"{service}: empty command"
    assert all(isinstance(arg, str) for arg in command), f"{service}: quote every argument"
    assert command[0] != "metrobus", f"{service}: the entrypoint is already metrobus"


@pytest.mark.parametrize("service", sorted(METROBUS))
def test_command_runs_with_help(service: str) -> None:
    command = METROBUS[service]["command"]
    done = subprocess.run(
        [sys.executable, "-m", "metrobus", *command, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"{service}: metrobus {' '.join(command)} --help\n{done.stderr}"
    assert "Usage: " in done.stdout


@pytest.mark.parametrize("service", sorted(METROBUS))
def test_command_arguments_are_valid(service: str) -> None:
    command = METROBUS[service]["command"]
    try:
        name, params = parse_command(command)
    except click.UsageError as exc:
        pytest.fail(f"{service}: metrobus {' '.join(command)}: {exc.format_message()}")
    if name == "run":
        stop = SETTINGS.stop(params["stop"])  # a stop of the repository's metrobus.toml
        build_stop(stop).close()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "WhiteList", "--replicas", "0"],
        ["run", "WhiteList", "--http-port", "http"],
        ["run"],
        ["push", "--rte", "1000"],
        ["seed", "--accounts"],
        ["dashboard"],
    ],
)
def test_the_command_check_rejects_bad_arguments(args: list[str]) -> None:
    with pytest.raises(click.UsageError):
        parse_command(args)


def test_long_running_services_restart_and_drain() -> None:
    for name, service in METROBUS.items():
        command, _ = _parsed(name)
        if command == "seed":
            assert service.get("restart", "no") == "no", "seed is a one-shot"
            continue
        assert service.get("restart") == "unless-stopped", name
        grace = re.fullmatch(r"(\d+)s", str(service.get("stop_grace_period")))
        assert grace, f"{name}: stop_grace_period like 15s"
        assert int(grace.group(1)) > supervisor.DRAIN_SECONDS, f"{name}: let workers drain"


def test_whitelist_runs_several_replicas() -> None:
    replicas = [
        params["replicas"]
        for name in METROBUS
        for command, params in [_parsed(name)]
        if command == "run" and params["stop"] == "WhiteList"
    ]
    assert replicas
    assert all(r > 1 for r in replicas)


def test_the_dashboard_is_published_on_port_5000() -> None:
    serving = []
    for name, service in METROBUS.items():
        for host_port, container_port in _published(service):
            if host_port != 5000:
                continue
            command, params = _parsed(name)
            assert command in ("run", "serve"), f"{name}: only run/serve serve the dashboard"
            assert params["http_port"] == container_port, f"{name}: --http-port {container_port}"
            assert params["http_host"] == "0.0.0.0", (
                f"{name}: 127.0.0.1 is unreachable from outside"
            )
            serving.append(name)
    assert len(serving) == 1, f"one service publishes the dashboard on 5000, not {serving}"


def test_kafka_is_a_single_kraft_node() -> None:
    kafka = COMPOSE["services"]["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = _environment(kafka)
    node = env["KAFKA_NODE_ID"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert set(env["KAFKA_LISTENERS"].split(",")) >= {"PLAINTEXT://:9092", "CONTROLLER://:9093"}
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:9093"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    if "CLUSTER_ID" in env:  # kafka-storage.sh needs a base64 UUID
        assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_redis_is_there_with_a_health_check() -> None:
    redis = COMPOSE["services"]["redis"]
    assert str(redis["image"]).startswith("redis:")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])


def test_depends_on_targets_exist_and_can_meet_their_condition() -> None:
    services = COMPOSE["services"]
    for name, service in services.items():
        for target, condition in _depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            assert target != name
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} needs a healthcheck"
            elif condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", f"{target}: one-shot"
            else:
                assert condition == "service_started", f"{name}: condition {condition}"
    for name, service in METROBUS.items():
        deps = _depends_on(service)
        assert deps.get("redis") == "service_healthy", name
        if _parsed(name)[0] != "seed":
            assert deps.get("kafka") == "service_healthy", name
            assert deps.get("seed") == "service_completed_successfully", name


# -- metrobus.env -------------------------------------------------------------------


def test_env_file_holds_only_variables_metrobus_reads() -> None:
    honoured = _honoured_variables()
    assert {"METROBUS_BOOTSTRAP", "METROBUS_REDIS_URL", "KAFKA_HOST", "REDIS_HOST"} <= honoured
    active, examples = _env_file(ENV_FILE.read_text(encoding="utf-8"))
    assert {"METROBUS_BOOTSTRAP", "METROBUS_REDIS_URL"} <= set(active)
    assert set(active) <= honoured, f"not read by metrobus: {set(active) - honoured}"
    assert set(examples) <= honoured, f"not read by metrobus: {set(examples) - honoured}"


def test_env_file_points_at_the_compose_services() -> None:
    active, examples = _env_file(ENV_FILE.read_text(encoding="utf-8"))
    settings = load_settings(ROOT / "metrobus.toml", active)
    kafka = _environment(COMPOSE["services"]["kafka"])
    assert f"PLAINTEXT://{settings.bootstrap}" == kafka["KAFKA_ADVERTISED_LISTENERS"]
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", settings.redis_url)
    assert match, settings.redis_url
    assert match.group(1) in COMPOSE["services"]
    assert match.group(2) == "6379"
    legacy = {k: v for k, v in examples.items() if not k.startswith("METROBUS_")}
    if legacy:  # the original names, shown commented out, mean the same services
        old = load_settings(ROOT / "metrobus.toml", legacy)
        assert (old.bootstrap, old.redis_url) == (settings.bootstrap, settings.redis_url)


# -- Dockerfile and .dockerignore ------------------------------------------------


def test_dockerfile_installs_metrobus_as_the_entrypoint() -> None:
    instructions = _dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    entrypoints = [args for k, args in instructions if k == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["metrobus"]
    users = [args for k, args in instructions if k == "USER"]
    assert users, "runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")

    copies = _copies(instructions)
    installs = [
        i for i, (k, args) in enumerate(instructions) if k == "RUN" and "pip install" in args
    ]
    assert installs, "the project is never pip-installed"
    assert not any("[dev" in instructions[i][1] for i in installs), "no dev extras in the image"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    readme = pyproject["project"].get("readme")
    for needed in ["pyproject.toml", "src", *([readme] if readme else [])]:
        at = [i for i, sources, _ in copies if needed in sources]
        assert at, f"the Dockerfile never copies {needed}"
        assert any(i > at[0] for i in installs), f"pip install runs before {needed} is copied"


def test_the_image_uses_the_repository_pipeline() -> None:
    instructions = _dockerfile()
    config_in_image = _copied_to(_copies(instructions), "metrobus.toml")
    assert config_in_image, "metrobus.toml is not copied into the image"
    env: dict[str, str] = {}
    for keyword, args in instructions:
        if keyword == "ENV":
            env.update(w.split("=", 1) for w in shlex.split(args) if "=" in w)
    workdir = [args for k, args in instructions if k == "WORKDIR"][-1]
    config = env.get("METROBUS_CONFIG") or str(PurePosixPath(workdir) / "metrobus.toml")
    assert config == config_in_image
    baked = (set(env) & _honoured_variables()) - {"METROBUS_CONFIG"}
    assert not baked, f"connection settings belong in compose/metrobus.env, not the image: {baked}"


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    rules = _dockerignore()
    for _, sources, _ in _copies(_dockerfile()):
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"the Dockerfile copies {source}, which does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc"):
                    continue
                assert not _ignored(relative, rules), f".dockerignore drops {relative}"
    for heavy in (".venv", ".git", "tests", ".venv/bin/python"):
        assert _ignored(heavy, rules), f".dockerignore should leave out {heavy}"
