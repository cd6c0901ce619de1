"""The stop runner: the whole message path of one stop, top to bottom.

    fetch (getmany) → decode → handle (concurrently) → route → produce
    (in input order, same key) → await every ack → flush counts → commit

Offsets are committed only after every record produced for them is
acknowledged and their counts have reached Redis (at-least-once). A transient
failure (Redis or Kafka away) retries the batch with backoff and commits
nothing past it; a bad message becomes a dead letter and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from metrobus import bus, outcome
from metrobus.context import Context, Drop
from metrobus.drive import run_all
from metrobus.envelope import Envelope, decode, from_object, is_envelope, now_ms, parse_json_object
from metrobus.errors import InvalidMessage, TransientError
from metrobus.outcome import Output
from metrobus.settings import Settings
from metrobus.stats import StopStats
from metrobus.stops import Stop
from metrobus.store import REDIS_DOWN, Store, connect, wait_for_redis

log = logging.getLogger(__name__)


class Backoff:
    """Exponential backoff for transient failures, logging each attempt."""

    def __init__(self, what: str) -> None:
        self.what, self.attempt = what, 0

    async def wait(self, exc: BaseException, stopping: asyncio.Event) -> None:
        self.attempt += 1
        delay = min(0.2 * 2 ** (self.attempt - 1), 5.0)
        log.warning(
            "%s failed (attempt %d, retrying in %.1fs): %s", self.what, self.attempt, delay, exc
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)


class StopRunner:
    """Hosts one stop: one consumer in group ``metrobus.<stop>``, one producer."""

    def __init__(self, settings: Settings, stop: Stop, worker_id: str = "") -> None:
        self.settings, self.stop = settings, stop
        self.redis = connect(settings.redis_url)
        self.store = Store(self.redis, settings.redis_key("")) if stop.needs_store else None
        self.input_topic = settings.topic(stop.input)
        self.stats = StopStats(
            self.redis, settings.redis_key(""), stop.name, stop.kind, self.input_topic, worker_id
        )
        self.stopping = asyncio.Event()
        self.pending: dict[Any, int] = {}  # TopicPartition -> next offset, acked not committed
        self.last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()
        self._same_partitions: dict[str | None, bool] = {}
        self.consumer: Any = None
        self.producer: Any = None

    # -- lifecycle ------------------------------------------------------------
    async def start(self, min_partitions: int = 0) -> None:
        s = self.settings
        await wait_for_redis(self.redis, s.redis_url, s.connect_timeout)
        topics = [s.topic(s.dead_letter_topic), self.input_topic]
        topics += [s.stop_topic(n) for n in s.stops]
        await bus.ensure_topics(
            s.bootstrap,
            topics,
            s.partitions,
            s.connect_timeout,
            {self.input_topic: min_partitions} if min_partitions else None,
        )
        self.producer = bus.make_producer(s.bootstrap)
        await bus.start_with_retry(self.producer, s.bootstrap, s.connect_timeout, "producer")
        self.consumer = bus.make_consumer(
            s.bootstrap,
            self.input_topic,
            s.group(self.stop.name),
            s.batch_size,
            _Rebalance(self),
            s.session_timeout_ms,
        )
        await bus.start_with_retry(self.consumer, s.bootstrap, s.connect_timeout, "consumer")
        log.info(
            "stop %s (%s) consuming %s in group %s",
            self.stop.name,
            self.stop.kind,
            self.input_topic,
            s.group(self.stop.name),
        )

    def health(self) -> dict[str, object]:
        """What ``/healthz`` says about this stop (consuming once it has partitions)."""
        return {
            "stop": self.stop.name,
            "consuming": self.consumer is not None and bool(self.stats.partitions),
            "partitions": self.stats.partitions,
            "processed": self.stats.totals["in"],
        }

    async def close(self) -> None:
        """Final flush and commit, then close every client; bounded so SIGTERM exits in 10 s."""
        try:
            if self.consumer is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.commit(final=True), 5.0)
                    await asyncio.wait_for(self.stats.leave(), 1.0)
        finally:
            for client in (self.consumer, self.producer):
                if client is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(client.stop(), 2.0)
            self.stop.close()
            await self.redis.aclose()

    async def run(self, idle_exit: float | None = None) -> None:
        """Consume until ``stopping`` is set (or, with ``idle_exit``, until idle that long)."""
        idle_since = time.monotonic()
        while not self.stopping.is_set():
            batch = await self.consumer.getmany(
                timeout_ms=self.settings.batch_timeout_ms * 4, max_records=self.settings.batch_size
            )
            records = [r for part in batch.values() for r in part]
            if records:
                await self.handle_batch(records)
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                break
            if time.monotonic() - self.last_commit >= self.settings.commit_interval:
                await self.commit()

    # -- one batch ------------------------------------------------------------
    async def handle_batch(self, records: list[Any]) -> None:
        started = time.perf_counter()
        backoff = Backoff(f"stop {self.stop.name}: batch of {len(records)}")
        while True:
            try:
                outputs = await self.process(records)
                await self.produce(outputs)
                break
            except (TransientError, bus.KafkaError, *REDIS_DOWN) as exc:
                if self.stopping.is_set():
                    return  # nothing committed for this batch: it is replayed later
                await backoff.wait(exc, self.stopping)
        self.stop.flush()
        self.account(outputs)
        self.stats.processed(len(records), (time.perf_counter() - started) * 1000)
        for r in records:
            self.pending[bus.TopicPartition(r.topic, r.partition)] = r.offset + 1

    async def process(self, records: list[Any]) -> list[Output]:
        """Decode and handle every record; no side effect on counts (it may be retried)."""
        envelopes: list[Envelope | InvalidMessage] = [self.decode(r) for r in records]
        routes = [list(e.route) if isinstance(e, Envelope) else [] for e in envelopes]
        coros = []
        at = now_ms()
        for env in envelopes:
            if isinstance(env, Envelope):
                env.hop(self.stop.name, at)
                coros.append(
                    self.stop.handler(env.payload, Context(self.stop.name, env, self.store))
                )
        results = await run_all(coros)
        for res in results:
            if isinstance(res, (TransientError, *REDIS_DOWN)):
                raise res
        it = iter(results)
        outputs = []
        for rec, env, route in zip(records, envelopes, routes, strict=True):
            result = next(it) if isinstance(env, Envelope) else env
            try:
                outputs.append(self.route(rec, env, result, route))
            except Exception as exc:  # e.g. a payload orjson cannot encode
                outputs.append(self.dead_letter(rec, exc, route))
        return outputs

    def decode(self, record: Any) -> Envelope | InvalidMessage:
        try:
            if not self.stop.wraps_raw:
                env = decode(record.value)
                if not env.route or env.route[0] != self.stop.name:
                    first = env.route[0] if env.route else "nothing"
                    raise InvalidMessage(f"route starts with {first}, not this stop")
                return env
            obj = parse_json_object(record.value)
            return from_object(obj) if is_envelope(obj) else Envelope.wrap(obj)
        except InvalidMessage as exc:
            return exc

    def route(
        self, record: Any, env: Envelope | InvalidMessage, result: Any, received_route: list[str]
    ) -> Output:
        """Turn a handler's result into an outcome: forward, deliver, drop or dead letter."""
        if isinstance(result, Drop):
            return Output("dropped", result.reason)
        if isinstance(result, BaseException) or not isinstance(result, dict):
            if not isinstance(result, BaseException):
                result = TypeError(
                    f"handler returned {type(result).__name__}, expected the payload dict or a Drop"
                )
            return self.dead_letter(record, result, received_route)
        assert isinstance(env, Envelope)
        env.payload = result
        nxt = env.next_stop
        if nxt is None:
            return Output("delivered", env.created_at)
        return Output("forwarded", nxt, record, self.settings.stop_topic(nxt), env.encode())

    def dead_letter(
        self, record: Any, exc: BaseException, route: list[str], original: bool = True
    ) -> Output:
        if not isinstance(exc, InvalidMessage):
            log.warning("stop %s: failed on offset %s: %r", self.stop.name, record.offset, exc)
        topic = self.settings.topic(self.settings.dead_letter_topic)
        return outcome.dead_letter(self.stop.name, topic, record, exc, route, original=original)

    def account(self, outputs: list[Output]) -> None:
        """Count a batch once its outputs are acknowledged (never before: it may be retried)."""
        stats, now = self.stats, now_ms()
        stats.count("in", len(outputs))
        for o in outputs:
            if o.outcome == "forwarded":
                stats.forwarded(o.detail)
            elif o.outcome == "delivered":
                stats.delivered(o.detail, now)
            elif o.outcome == "dropped":
                stats.dropped(o.detail)
            else:
                stats.error(o.detail)

    async def produce(self, outputs: list[Output]) -> None:
        """Send in input order and wait for every acknowledgement.

        A retriable failure raises (the batch is retried); a record the broker
        will never take (too large, invalid topic, not authorised) becomes a
        small dead letter instead, so one bad record cannot stall its partition.
        """
        failed = await self._send([o for o in outputs if o.topic is not None])
        if not failed:
            return
        for _out, exc in failed:
            if not isinstance(exc, bus.KafkaError) or exc.retriable:
                raise exc
        replaced = []
        for out, exc in failed:
            letter = self.dead_letter(out.record, exc, [], original=False)
            outputs[outputs.index(out)] = letter
            replaced.append(letter)
        if again := await self._send(replaced):
            raise again[0][1]

    async def _send(self, outputs: list[Output]) -> list[tuple[Output, BaseException]]:
        """Send ``outputs`` in order; the failed ones with their errors, once all are settled."""
        futures: list[asyncio.Future[Any]] = []
        for topic in {o.topic for o in outputs} - self._same_partitions.keys():
            await self._learn_partitions(topic)
        for o in outputs:
            same = self._same_partitions[o.topic] and o.key is not None
            try:
                futures.append(
                    await self.producer.send(
                        o.topic, o.value, key=o.key, partition=o.record.partition if same else None
                    )
                )
            except bus.KafkaError as exc:
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                futures.append(failed)
        if not futures:
            return []
        acks = asyncio.ensure_future(_settle(futures))
        if not acks.done():
            halt = asyncio.ensure_future(self.stopping.wait())
            await asyncio.wait([acks, halt], return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
        if not acks.done():  # stopping while Kafka does not answer: leave it uncommitted
            acks.cancel()
            raise TransientError("stopping before the acknowledgements arrived")
        return [
            (o, r)
            for o, r in zip(outputs, acks.result(), strict=True)
            if isinstance(r, BaseException)
        ]

    async def _learn_partitions(self, topic: str | None) -> None:
        """Whether ``topic`` has as many partitions as the input (asked once per topic).

        Then a record goes to its input record's partition: the producer would
        hash the key to that same partition (the input was partitioned by key
        the same way), so skipping the pure-Python hash keeps per-key order.
        """
        theirs = await self.producer.partitions_for(topic)
        mine = self.consumer.assignment() and self.consumer.partitions_for_topic(self.input_topic)
        self._same_partitions[topic] = bool(mine) and len(theirs) == len(mine)

    # -- commit -----------------------------------------------------------------
    async def commit(self, final: bool = False) -> None:
        """Flush counts, then commit the acknowledged offsets (in that order).

        Serialised: the rebalance listener commits from aiokafka's own task.
        Bounded: a broker that does not answer defers the commit (the offsets
        stay pending), it never blocks the loop or the shutdown.
        """
        async with self._commit_lock:
            self.last_commit = time.monotonic()
            for attempt in range(3 if final else 1):
                if await self.stats.flush():
                    break
                if final and attempt < 2:
                    await asyncio.sleep(0.5)
            else:
                log.warning("stop %s: Redis unavailable, commit deferred", self.stop.name)
                return
            if not self.pending:
                return
            offsets, self.pending = self.pending, {}
            try:
                await asyncio.wait_for(self.consumer.commit(offsets), 3.0 if final else 10.0)
            except TimeoutError:
                log.warning("stop %s: Kafka did not confirm the commit; deferred", self.stop.name)
                for tp, offset in offsets.items():
                    self.pending[tp] = max(offset, self.pending.get(tp, 0))
            except bus.KafkaError as exc:
                # A rebalance took the partitions: their new owner replays from
                # the last commit (duplicates, counted; never losses).
                log.warning(
                    "stop %s: commit failed, records will be replayed: %s", self.stop.name, exc
                )


class _Rebalance(bus.ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what is acknowledged before partitions move; record the assignment."""

    def __init__(self, runner: StopRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.runner.commit()
        for tp in revoked:
            self.runner.pending.pop(tp, None)  # another member owns them now

    async def on_partitions_assigned(self, assigned: Any) -> None:
        owned = set(assigned)
        self.runner.pending = {tp: o for tp, o in self.runner.pending.items() if tp in owned}
        self.runner.stats.partitions = sorted(tp.partition for tp in assigned)
        log.info(
            "stop %s assigned partitions %s", self.runner.stop.name, self.runner.stats.partitions
        )


async def _settle(futures: list[asyncio.Future[Any]]) -> list[Any]:
    """Each future's result or exception, in order (cheaper than gather: most are done)."""
    results: list[Any] = []
    for fut in futures:
        try:
            results.append(await fut)
        except Exception as exc:
            results.append(exc)
    return results
