from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from metrobus.cli import cli
from metrobus.errors import ConfigError
from metrobus.settings import load_settings, resolve_stop, route_order
from metrobus.stops import build_stop

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_config_is_the_builtin_default() -> None:
    shipped = (ROOT / "metrobus.toml").read_text()
    builtin = (ROOT / "src/metrobus/default.toml").read_text()
    assert shipped == builtin


def test_shipped_config_reproduces_the_original_pipeline() -> None:
    s = load_settings(ROOT / "metrobus.toml", {})
    assert route_order(s) == ["busdriver", "AddEmail", "WhiteList", "Log"]
    assert {n: c.kind for n, c in s.stops.items()} == {
        "busdriver": "router",
        "AddEmail": "enrich",
        "WhiteList": "filter",
        "Log": "sink",
    }
    assert s.stops["busdriver"].options["input"] == "Source"
    assert (s.source_topic, s.dead_letter_topic, s.partitions) == ("Source", "Error", 6)
    for name in s.stops:
        build_stop(s.stops[name])


def test_environment_then_flags_override_the_file() -> None:
    s = load_settings(
        ROOT / "metrobus.toml", {"METROBUS_BOOTSTRAP": "k:1", "METROBUS_REDIS_URL": "redis://r:2/0"}
    )
    assert (s.bootstrap, s.redis_url) == ("k:1", "redis://r:2/0")
    s = load_settings(ROOT / "metrobus.toml", {"METROBUS_BOOTSTRAP": "k:1"}, bootstrap="flag:3")
    assert s.bootstrap == "flag:3"


def test_original_variables_are_honoured_when_new_ones_are_absent() -> None:
    env = {"KAFKA_HOST": "kafka", "KAFKA_PORT": "9093", "REDIS_HOST": "redis", "REDIS_PORT": "6380"}
    s = load_settings(ROOT / "metrobus.toml", env)
    assert (s.bootstrap, s.redis_url) == ("kafka:9093", "redis://redis:6380/0")
    s = load_settings(ROOT / "metrobus.toml", {**env, "METROBUS_BOOTSTRAP": "new:1"})
    assert s.bootstrap == "new:1"


def test_namespace_prefixes_topics_groups_and_keys() -> None:
    plain = load_settings(ROOT / "metrobus.toml", {})
    assert (plain.topic("Source"), plain.group("AddEmail"), plain.redis_key("email:1")) == (
        "Source",
        "metrobus.AddEmail",
        "email:1",
    )
    ns = plain.replace(namespace="blue")
    assert (ns.topic("Source"), ns.group("AddEmail"), ns.redis_key("email:1")) == (
        "blue.Source",
        "blue.metrobus.AddEmail",
        "blue:email:1",
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[stops.X]\nkind = 'teleport'\n", "has kind 'teleport'"),
        ("[stops\n", "invalid TOML"),
        ("[pipeline]\npartitions = 0\n", "pipeline.partitions must be an integer >= 1"),
        ("[redis]\nurl = 'http://x'\n", "Redis URL must start with redis://"),
    ],
)
def test_invalid_config_is_a_config_error(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "metrobus.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(path, {})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("kind = 'enrich'\nkey_field = 'a'\ntarget_field = 'b'\n", "missing option 'redis_key'"),
        (
            "kind = 'enrich'\nkey_field = 'a'\nredis_key = 'k'\ntarget_field = 'b'\n",
            "must contain {}",
        ),
        (
            "kind = 'filter'\nfield = 'a'\nredis_set = 's'\nmode = 'maybe'\n",
            "must be one of allow, deny",
        ),
        ("kind = 'sink'\ncolour = 'red'\n", "unknown option(s): colour"),
        ("kind = 'router'\ndefault = 'Log'\n", "option 'default' has the wrong type"),
        ("kind = 'python'\nhandler = 'nosuchmodule_xyz:f'\n", "cannot import 'nosuchmodule_xyz'"),
        ("kind = 'python'\nhandler = 'json:dumps'\n", "must be an async def function"),
    ],
)
def test_invalid_stop_options_name_the_stop(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "metrobus.toml"
    path.write_text(f"[stops.S]\n{table}")
    s = load_settings(path, {})
    with pytest.raises(ConfigError) as info:
        build_stop(s.stop("S"))
    assert "stop 'S'" in str(info.value) or "handler" in str(info.value)
    assert message in str(info.value)


def test_unknown_stop_lists_the_known_ones() -> None:
    s = load_settings(ROOT / "metrobus.toml", {})
    with pytest.raises(ConfigError, match=r"unknown stop 'Nope'.*busdriver, AddEmail"):
        resolve_stop(s, "Nope")


def test_user_stop_reference_becomes_a_python_stop() -> None:
    s, name = resolve_stop(load_settings(ROOT / "metrobus.toml", {}), "tests.user_stops:tag_vip")
    assert name == "tag_vip"
    assert s.stop("tag_vip").kind == "python"
    build_stop(s.stop("tag_vip"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "Nope"], "metrobus: error: unknown stop 'Nope'"),
        (["run", "nosuchmodule_xyz:f"], "metrobus: error: cannot import 'nosuchmodule_xyz'"),
        (
            ["run", "AddEmail", "--config", "/does/not/exist.toml"],
            "metrobus: error: cannot read config",
        ),
    ],
)
def test_cli_config_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(message), result.output


def test_cli_bad_flag_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["run", "AddEmail", "--replicas", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--replicas'" in result.output
    assert "Traceback" not in result.output


def test_every_command_has_help() -> None:
    for command in ("run", "push", "seed", "stats"):
        result = CliRunner().invoke(cli, [command, "--help"])
        assert result.exit_code == 0
        assert "--config" in result.output
        assert "--bootstrap" in result.output


def test_a_stops_input_option_is_where_messages_for_it_go(tmp_path: Path) -> None:
    path = tmp_path / "metrobus.toml"
    path.write_text(
        "[stops.AddEmail]\nkind = 'python'\nhandler = 'tests.user_stops:audit'\n"
        "input = 'ContactPoint'\n"
    )
    s = load_settings(path, {}, namespace="ns")
    assert s.stop_topic("AddEmail") == "ns.ContactPoint"
    assert s.stop_topic("Unconfigured") == "ns.Unconfigured"
    assert build_stop(s.stop("AddEmail")).input == "ContactPoint"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METROBUS_SESSION_TIMEOUT_MS": "abc"}, "METROBUS_SESSION_TIMEOUT_MS must be an integer"),
        ({"METROBUS_REDIS_URL": "http://nope"}, "Redis URL must start with redis://"),
    ],
)
def test_bad_environment_is_a_config_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(ROOT / "metrobus.toml", env)
