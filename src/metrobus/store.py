"""Redis access with lookups coalesced into pipelined round trips.

Handlers of a batch run concurrently and each awaits its own lookups; the
``Store`` collects every lookup issued in the same event-loop turn and sends
them as one ``pipeline(transaction=False)``: one MGET for string keys, one
SMISMEMBER per set, HGETs alongside. A batch of 1,000 messages that each look
up one key costs one round trip, never 1,000.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metrobus.errors import TransientError
from metrobus.retry import until_up

log = logging.getLogger(__name__)

#: Failures that mean "Redis is not there right now": retry, never dead-letter.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
#: The same, plus what the socket layer may raise before redis-py wraps it.
TRANSIENT_REDIS = (*REDIS_DOWN, ConnectionError, OSError)
#: Error replies that mean "try again later", not "this command is wrong".
TEMPORARY_REPLIES = ("BUSY", "TRYAGAIN", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "READONLY")


def _key(value: object, what: str) -> str:
    """Lookups take strings; anything else fails its caller alone, not the whole batch."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _temporary(reply: Exception) -> bool:
    return str(reply).startswith(TEMPORARY_REPLIES)


def connect(url: str) -> aioredis.Redis:
    """A client for ``url``; it does not connect until first used."""
    return aioredis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,  # a hung server is "down", not a reason to hang with it
        health_check_interval=10,
    )


async def wait_for_redis(client: aioredis.Redis, url: str, timeout: float) -> None:
    """Ping until Redis answers, logging what is awaited; give up after ``timeout``."""
    await until_up(client.ping, TRANSIENT_REDIS, f"Redis at {url}", timeout)


class Store:
    """Coalesces lookups into pipelined round trips; keys get the namespace prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str = "") -> None:
        self.client = client
        self.prefix = prefix
        self.round_trips = 0
        self._gets: list[tuple[str, asyncio.Future[Any]]] = []
        self._members: dict[str, list[tuple[str, asyncio.Future[Any]]]] = defaultdict(list)
        self._hgets: list[tuple[str, str, asyncio.Future[Any]]] = []
        self._scheduled = False

    def _future(self) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        if not self._scheduled:
            # Runs after every handler already scheduled in this turn has
            # queued its lookups: that is what makes one round trip per batch.
            self._scheduled = True
            loop.call_soon(self._start_flush)
        return loop.create_future()

    async def get(self, key: str) -> str | None:
        key = _key(key, "key")
        fut = self._future()
        self._gets.append((self.prefix + key, fut))
        result: str | None = await fut
        return result

    async def is_member(self, set_key: str, member: str) -> bool:
        set_key, member = _key(set_key, "set key"), _key(member, "member")
        fut = self._future()
        self._members[self.prefix + set_key].append((member, fut))
        result: bool = await fut
        return result

    async def hget(self, key: str, field: str) -> str | None:
        key, field = _key(key, "key"), _key(field, "field")
        fut = self._future()
        self._hgets.append((self.prefix + key, field, fut))
        result: str | None = await fut
        return result

    def _start_flush(self) -> None:
        self._scheduled = False
        gets, members, hgets = self._gets, self._members, self._hgets
        self._gets, self._members, self._hgets = [], defaultdict(list), []
        task = asyncio.ensure_future(self._flush(gets, members, hgets))
        task.add_done_callback(_retrieve)

    async def _flush(
        self,
        gets: list[tuple[str, asyncio.Future[Any]]],
        members: dict[str, list[tuple[str, asyncio.Future[Any]]]],
        hgets: list[tuple[str, str, asyncio.Future[Any]]],
    ) -> None:
        waiting: list[list[asyncio.Future[Any]]] = []
        pipe = self.client.pipeline(transaction=False)
        if gets:
            pipe.mget([k for k, _ in gets])
            waiting.append([f for _, f in gets])
        for set_key, items in members.items():
            pipe.smismember(set_key, [m for m, _ in items])
            waiting.append([f for _, f in items])
        for key, field, fut in hgets:
            pipe.hget(key, field)
            waiting.append([fut])
        try:
            self.round_trips += 1
            replies = await pipe.execute(raise_on_error=False)
        except TRANSIENT_REDIS as exc:
            error: BaseException = TransientError(f"Redis unavailable: {exc}")
            replies = [error] * len(waiting)
        except Exception as exc:  # never leave a handler waiting forever
            replies = [exc] * len(waiting)
        except BaseException:  # cancelled: so are the lookups
            for futures in waiting:
                for fut in futures:
                    fut.cancel()
            raise
        for futures, reply in zip(waiting, replies, strict=True):
            if isinstance(reply, Exception):
                if isinstance(reply, RedisError) and _temporary(reply):
                    reply = TransientError(f"Redis is busy: {reply}")
                _fail(futures, reply)
            elif len(futures) == 1 and not isinstance(reply, list):
                _set(futures[0], reply)
            else:
                for fut, value in zip(futures, reply, strict=True):
                    _set(fut, bool(value) if isinstance(value, int) else value)


def _set(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(futures: list[asyncio.Future[Any]], exc: BaseException) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_exception(exc)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("Redis flush failed", exc_info=task.exception())
