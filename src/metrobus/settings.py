"""Settings: TOML file + environment + flags, resolved in this one place.

Nothing else in metrobus reads ``os.environ``. Precedence, highest first:
command-line flags, ``METROBUS_*`` variables, the original metrobus
variables (``KAFKA_HOST``/``KAFKA_PORT``/``REDIS_HOST``/``REDIS_PORT``), the
config file, built-in defaults.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metrobus.errors import ConfigError

KINDS = ("router", "enrich", "filter", "sink", "python")
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class StopConfig:
    """One stop of the pipeline; ``options`` are validated by the stop's kind."""

    name: str
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    bootstrap: str = DEFAULT_BOOTSTRAP
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = ""
    source_topic: str = "Source"
    dead_letter_topic: str = "Error"
    partitions: int = 6
    batch_size: int = 1000
    batch_timeout_ms: int = 50
    commit_interval: float = 1.0
    connect_timeout: float = 60.0
    session_timeout_ms: int = 10_000
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    stops: Mapping[str, StopConfig] = field(default_factory=dict)
    config_path: str = "<built-in>"
    #: settings given by the environment or a flag (``metrobus dev`` embeds the rest)
    explicit: frozenset[str] = frozenset()

    def topic(self, name: str) -> str:
        """The Kafka topic of a stop or of a named topic, inside the namespace."""
        return f"{self.namespace}.{name}" if self.namespace else name

    def stop_topic(self, stop: str) -> str:
        """The input topic of a stop: its ``input`` option, else its name."""
        config = self.stops.get(stop)
        name = config.options.get("input", stop) if config is not None else stop
        return self.topic(str(name))

    def group(self, stop: str) -> str:
        return f"{self.namespace}.metrobus.{stop}" if self.namespace else f"metrobus.{stop}"

    def redis_key(self, key: str) -> str:
        return f"{self.namespace}:{key}" if self.namespace else key

    def stop(self, name: str) -> StopConfig:
        try:
            return self.stops[name]
        except KeyError:
            known = ", ".join(self.stops) or "none"
            raise ConfigError(
                f"unknown stop {name!r} in {self.config_path} (configured stops: {known})"
            ) from None

    def with_stop(self, stop: StopConfig) -> Settings:
        return dataclasses.replace(self, stops={**self.stops, stop.name: stop})

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _read_config(path: Path | None) -> tuple[dict[str, Any], str]:
    if path is None:
        text = importlib.resources.files("metrobus").joinpath("default.toml").read_text()
        where = "<built-in metrobus.toml>"
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
        where = str(path)
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {where}: {exc}") from exc


def _stops(raw: Any, where: str) -> dict[str, StopConfig]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [stops] must be a table of stop tables")
    stops = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [stops.{name}] must be a table")
        kind = table.get("kind")
        if kind not in KINDS:
            raise ConfigError(
                f"{where}: stop {name!r} has kind {kind!r}; expected one of {', '.join(KINDS)}"
            )
        options = {k: v for k, v in table.items() if k != "kind"}
        stops[name] = StopConfig(name=name, kind=kind, options=options)
    return stops


def _int(value: Any, what: str, where: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _env_bootstrap(env: Mapping[str, str]) -> str | None:
    if env.get("METROBUS_BOOTSTRAP"):
        return env["METROBUS_BOOTSTRAP"]
    if env.get("KAFKA_HOST"):
        return f"{env['KAFKA_HOST']}:{env.get('KAFKA_PORT') or '9092'}"
    return None


def _env_redis(env: Mapping[str, str]) -> str | None:
    if env.get("METROBUS_REDIS_URL"):
        return env["METROBUS_REDIS_URL"]
    if env.get("REDIS_HOST"):
        return f"redis://{env['REDIS_HOST']}:{env.get('REDIS_PORT') or '6379'}/0"
    return None


def load_settings(
    config: str | Path | None,
    env: Mapping[str, str],
    **flags: Any,
) -> Settings:
    """Build the settings; ``flags`` left as ``None`` do not override anything."""
    path: Path | None
    if config is not None:
        path = Path(config)
    elif env.get("METROBUS_CONFIG"):
        path = Path(env["METROBUS_CONFIG"])
    elif Path("metrobus.toml").is_file():
        path = Path("metrobus.toml")
    else:
        path = None
    data, where = _read_config(path)
    kafka = data.get("kafka", {})
    redis = data.get("redis", {})
    pipeline = data.get("pipeline", {})
    http = data.get("http", {})
    sections = (("kafka", kafka), ("redis", redis), ("pipeline", pipeline), ("http", http))
    for section, value in sections:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: [{section}] must be a table")
    settings = Settings(
        bootstrap=str(kafka.get("bootstrap", DEFAULT_BOOTSTRAP)),
        redis_url=str(redis.get("url", DEFAULT_REDIS_URL)),
        namespace=str(pipeline.get("namespace", "")),
        source_topic=str(pipeline.get("source", "Source")),
        dead_letter_topic=str(pipeline.get("dead_letter", "Error")),
        partitions=_int(pipeline.get("partitions", 6), "pipeline.partitions", where, 1),
        batch_size=_int(pipeline.get("batch_size", 1000), "pipeline.batch_size", where, 1),
        batch_timeout_ms=_int(pipeline.get("batch_timeout_ms", 50), "batch_timeout_ms", where),
        http_host=str(http.get("host", "127.0.0.1")),
        session_timeout_ms=_int(
            kafka.get("session_timeout_ms", 10_000), "kafka.session_timeout_ms", where, 1000
        ),
        stops=_stops(data.get("stops", {}), where),
        config_path=where,
    )
    overrides: dict[str, Any] = {}
    if (bootstrap := _env_bootstrap(env)) is not None:
        overrides["bootstrap"] = bootstrap
    if (redis_url := _env_redis(env)) is not None:
        overrides["redis_url"] = redis_url
    if env.get("METROBUS_SESSION_TIMEOUT_MS"):
        raw = env["METROBUS_SESSION_TIMEOUT_MS"]
        overrides["session_timeout_ms"] = _int(
            int(raw) if raw.isdigit() else raw,
            "METROBUS_SESSION_TIMEOUT_MS",
            "environment",
            1000,
        )
    if env.get("METROBUS_NAMESPACE"):
        overrides["namespace"] = env["METROBUS_NAMESPACE"]
    overrides.update({k: v for k, v in flags.items() if v is not None})
    settings = dataclasses.replace(settings, **overrides, explicit=frozenset(overrides))
    if not settings.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"Redis URL must start with redis:// or rediss://: {settings.redis_url}")
    return settings


def route_order(settings: Settings) -> list[str]:
    """Stops in the order messages visit them: routers first, then as routes name them."""
    order = [n for n, s in settings.stops.items() if s.kind == "router"]
    for name in list(order):
        options = settings.stops[name].options
        routes = [r.get("route", []) for r in options.get("rules", []) if isinstance(r, dict)]
        routes.append(options.get("default") or [])
        for route in routes:
            order += [s for s in route if isinstance(s, str) and s not in order]
    return order + [n for n in settings.stops if n not in order]


def resolve_stop(settings: Settings, ref: str, name: str | None = None) -> tuple[Settings, str]:
    """A configured stop name, or ``package.module:function`` for a user stop."""
    if ":" in ref:
        stop_name = name or ref.rpartition(":")[2]
        config = StopConfig(stop_name, "python", {"handler": ref})
        return settings.with_stop(config), stop_name
    settings.stop(ref)  # raises ConfigError naming the known stops
    return settings, ref
