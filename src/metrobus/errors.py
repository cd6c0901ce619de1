"""The small family of metrobus' own errors.

User-facing problems (bad config, unknown stop, unreachable service) are
``MetrobusError``s: the CLI prints them as one line and exits with
``exit_code``. Bad *messages* are ``InvalidMessage``s: the runner turns them
into dead letters and never lets them end the loop.
"""

from __future__ import annotations


class MetrobusError(Exception):
    """Base of metrobus' own errors; the CLI prints them as one line."""

    exit_code: int = 1


class ConfigError(MetrobusError):
    """The configuration, a flag or a stop reference is invalid."""

    exit_code = 2


class ServiceUnavailable(MetrobusError):
    """Kafka or Redis could not be reached within the allowed time."""

    exit_code = 3


class TransientError(MetrobusError):
    """A dependency failed in a way worth retrying (Redis or Kafka down).

    The runner retries the whole batch with backoff and commits nothing past
    it: a transient failure is never a drop nor a dead letter.
    """


class InvalidMessage(Exception):
    """A record that cannot be processed as it is: dead-letter it with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
