"""Stops: a name, an input topic and a handler — the runner needs nothing more.

The four built-in kinds (router, enrich, filter, sink) are configured from
``metrobus.toml`` and built on the same handler API as user stops, which are
plain ``async def`` functions referenced as ``package.module:function``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metrobus.context import Handler
from metrobus.errors import ConfigError
from metrobus.settings import StopConfig


def _nothing() -> None:
    return None


@dataclass
class Stop:
    """A hosted stop. ``wraps_raw``: raw JSON arriving here is wrapped, not rejected."""

    name: str
    kind: str
    handler: Handler
    input: str
    wraps_raw: bool = False
    needs_store: bool = False
    flush: Callable[[], None] = field(default=_nothing)
    close: Callable[[], None] = field(default=_nothing)


class Options:
    """Typed access to a stop's options, with one-line errors naming the stop."""

    def __init__(self, config: StopConfig) -> None:
        self.config = config
        self.used: set[str] = {"input"}

    def _error(self, message: str) -> ConfigError:
        return ConfigError(f"stop {self.config.name!r} ({self.config.kind}): {message}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        self.used.add(name)
        if name not in self.config.options:
            if default is ...:
                raise self._error(f"missing option {name!r}")
            return default
        value = self.config.options[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise self._error(f"option {name!r} has the wrong type: {value!r}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value: str = self.get(name, str, default)
        if value not in choices:
            raise self._error(f"option {name!r} must be one of {', '.join(choices)}, got {value!r}")
        return value

    def route(self, name: str, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise self._error(f"{name} must be a list of stop names, got {value!r}")
        return value

    def check_unknown(self) -> None:
        unknown = set(self.config.options) - self.used
        if unknown:
            raise self._error(f"unknown option(s): {', '.join(sorted(unknown))}")


def load_handler(ref: str) -> Handler:
    """Import ``package.module:function`` and check it is an async handler."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"handler reference {ref!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for handler {ref!r}: {exc}") from exc
    handler = getattr(module, attr, None)
    if handler is None:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    if not inspect.iscoroutinefunction(handler):
        raise ConfigError(f"handler {ref!r} must be an async def function (payload, ctx)")
    return handler  # type: ignore[no-any-return]


def build_stop(config: StopConfig) -> Stop:
    """Build a stop from its configuration; every mistake is a ``ConfigError``."""
    from metrobus.stops import enrich, filter, router, sink

    opts = Options(config)
    input_topic: str = opts.get("input", str, config.name)
    if config.kind == "python":
        handler = load_handler(opts.get("handler", str))
        stop = Stop(config.name, "python", handler, input_topic, needs_store=True)
    else:
        builders = {
            "router": router.build,
            "enrich": enrich.build,
            "filter": filter.build,
            "sink": sink.build,
        }
        stop = builders[config.kind](config.name, opts)
        stop.input = input_topic
    opts.check_unknown()
    return stop
