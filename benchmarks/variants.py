"""Prototypes of runner/bus optimisations, measured without touching ``src/``.

``stop_vs_handwritten --variants gc,notasks,...`` runs extra metrobus workers
with these monkeypatches applied *in that worker process only*, so each
suggested change has a measured effect on the real loop. They are sketches
for the people who own ``src/`` (they keep the semantics the benchmark
exercises, not every edge case), not code to ship as is.

* ``gc``        — ``gc.freeze()`` after start-up and a gen-0 threshold of 50,000
                  (the loop allocates ~30 container objects per message, so the
                  default 700 runs a collection every ~25 messages).
* ``notasks``   — ``process()`` drives the handler coroutines itself (step each
                  until it awaits a future, wait for those futures, resume)
                  instead of one ``Task`` per message through ``gather``.
* ``decode``    — ``orjson.loads(bytes)`` directly (no ``.decode("utf-8")``) and
                  a lean envelope check; the strict path runs only on failure,
                  so dead-letter reasons are unchanged.
* ``partition`` — send to the input record's partition when the output topic
                  has as many partitions (same key → same partition: skips the
                  pure-Python murmur2 and the metadata lookup per record).
* ``acks``      — await each ack future in turn instead of ``gather(*futures)``
                  (most are already done: no done-callback per record).
* ``batch``     — built-in enrich/filter stops skip the per-message handler:
                  one MGET / SMISMEMBER for the batch computed in ``process()``
                  (what a batch-level handler API for built-in kinds would do).
* ``wrap``      — the router's new envelope id from ``os.urandom(16).hex()``
                  (0.5 µs) instead of ``uuid.uuid4().hex`` (2.1 µs): same 32 hex digits.
* ``fetchwait`` — consumers with ``fetch_max_wait_ms=5`` instead of 50: Tansu holds
                  every fetch for the full wait even when records arrive, so
                  each hop pays ~wait/2 on average (latency, not throughput).
* ``all``       — gc + notasks + decode + partition + acks + wrap; ``all+batch`` adds batch.

``python -m benchmarks.variants run-stop SPEC -- STOP [metrobus run options]``
hosts a stop like ``metrobus run`` with SPEC applied (``pipeline --variant``).
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import uuid
from typing import Any

import orjson

NAMES = ("gc", "notasks", "decode", "partition", "acks", "wrap")
EXTRA = ("batch", "fetchwait")


def expand(spec: str) -> list[str]:
    names: list[str] = []
    for n in (n.strip() for n in spec.split("+")):
        names += list(NAMES) if n == "all" else [n] if n else []
    return names


def apply(names: list[str]) -> None:
    """Patch metrobus (this process only) for ``names``."""
    from metrobus import runner
    from metrobus.envelope import Envelope

    for name in names:
        if name == "gc":

            async def start_then_tune(
                self: Any, *args: Any, _start: Any = runner.StopRunner.start, **kwargs: Any
            ) -> None:
                await _start(self, *args, **kwargs)
                _gc_tune()  # after start-up: clients and modules are frozen too

            runner.StopRunner.start = start_then_tune  # type: ignore[method-assign]
        elif name == "wrap":
            Envelope.wrap = classmethod(_fast_wrap)  # type: ignore[method-assign, assignment]
        elif name == "notasks":
            runner.StopRunner.process = _process_without_tasks  # type: ignore[method-assign]
        elif name == "decode":
            runner.decode = _fast_decode  # type: ignore[assignment]
        elif name in ("partition", "acks"):
            pass  # both live in _send, below
        elif name == "fetchwait":
            from metrobus import bus

            def make_consumer(*args: Any, _make: Any = bus.make_consumer, **kwargs: Any) -> Any:
                consumer = _make(*args, **kwargs)
                consumer._fetch_max_wait_ms = 5  # read by the fetcher created in start()
                return consumer

            bus.make_consumer = make_consumer
        elif name == "batch":
            runner.StopRunner.process = _batched(runner.StopRunner.process)  # type: ignore[method-assign]
        else:
            raise ValueError(f"unknown variant {name!r}; one of {', '.join(NAMES + EXTRA)}, all")
    if "partition" in names or "acks" in names:
        runner.StopRunner._send = _make_send("partition" in names, "acks" in names)  # type: ignore[method-assign]


def _fast_wrap(cls: Any, payload: dict[str, Any], route: list[str] | None = None) -> Any:
    from metrobus.envelope import now_ms

    route = list(route or [])
    return cls(os.urandom(16).hex(), route, payload, list(route), [], now_ms())


def run_stop(spec: str, args: list[str]) -> int:
    """``metrobus run ARGS`` with the variants of ``spec`` applied."""
    from metrobus.cli import cli

    apply(expand(spec))
    try:
        cli.main(args=["run", *args], prog_name="metrobus", standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


# -- gc -----------------------------------------------------------------------------
def _gc_tune() -> None:
    gc.collect()
    gc.freeze()  # start-up objects (modules, clients) are never scanned again
    gc.set_threshold(50_000, 20, 100)


# -- decode -------------------------------------------------------------------------
def _fast_decode(value: bytes | None) -> Any:
    from metrobus.envelope import Envelope, decode

    try:
        obj = orjson.loads(value)  # type: ignore[arg-type]
        header, payload = obj["header"], obj["payload"]
        route, history = header["route"], header.get("historical_route", [])
        created = header.get("created_at", 0)
        original = header.get("original_route", [])
        if (
            type(header) is dict
            and type(payload) is dict
            and type(route) is list
            and type(history) is list
            and type(original) is list
            and type(created) is int
            and all(type(s) is str for s in route)
            and all(type(s) is str for s in original)
            and all(type(h) is dict for h in history)
        ):
            msg_id = header.get("id")
            extra = {k: v for k, v in header.items() if k not in _KNOWN} if len(header) > 5 else {}
            return Envelope(
                str(msg_id) if msg_id is not None else uuid.uuid4().hex,
                route,
                payload,
                original,
                history,
                created,
                extra,
            )
    except Exception:
        pass
    return decode(value)


_KNOWN = frozenset(("id", "route", "original_route", "historical_route", "created_at"))


# -- process without a Task per message ------------------------------------------
async def _drive(coros: list[Any]) -> list[Any]:
    """Run coroutines to completion without wrapping each in a Task.

    Step every coroutine until it yields a future (an awaited lookup), wait for
    all yielded futures at once, resume the ones that waited; repeat. The Store
    still coalesces: its flush is scheduled with call_soon during the first
    pass. (A real version must also handle handlers that rely on being a Task:
    ``asyncio.timeout``, ``current_task``, cancellation.)
    """
    results: list[Any] = [None] * len(coros)
    pending = list(enumerate(coros))
    while pending:
        waiting, futures = [], set()
        for i, coro in pending:
            try:
                fut = coro.send(None)
            except StopIteration as stop:
                results[i] = stop.value
                continue
            except BaseException as exc:
                results[i] = exc
                continue
            waiting.append((i, coro))
            if fut is not None:
                futures.add(fut)
        if futures:
            await asyncio.wait(futures)
        elif waiting:
            await asyncio.sleep(0)
        pending = waiting
    return results


async def _process_without_tasks(self: Any, records: list[Any]) -> list[Any]:
    """``StopRunner.process`` with ``_drive`` in place of ``asyncio.gather``."""
    from metrobus import runner
    from metrobus.context import Context
    from metrobus.envelope import Envelope, now_ms
    from metrobus.errors import TransientError
    from metrobus.store import REDIS_DOWN

    envelopes = [self.decode(r) for r in records]
    routes = [list(e.route) if isinstance(e, Envelope) else [] for e in envelopes]
    coros = []
    at = now_ms()
    for env in envelopes:
        if isinstance(env, Envelope):
            env.hop(self.stop.name, at)
            coros.append(self.stop.handler(env.payload, Context(self.stop.name, env, self.store)))
    results = await _drive(coros)
    for res in results:
        if isinstance(res, (TransientError, *REDIS_DOWN)):
            raise res
    it = iter(results)
    outputs = []
    for rec, env, route in zip(records, envelopes, routes, strict=True):
        result = next(it) if isinstance(env, Envelope) else env
        try:
            outputs.append(self.route(rec, env, result, route))
        except Exception as exc:
            outputs.append(self.dead_letter(rec, exc, route))
    _ = runner
    return outputs


# -- a batch path for the built-in enrich and filter -------------------------------
def _batched(fallback: Any) -> Any:
    from metrobus.context import Drop
    from metrobus.envelope import Envelope, now_ms
    from metrobus.errors import InvalidMessage, TransientError
    from metrobus.store import TRANSIENT_REDIS

    async def process(self: Any, records: list[Any]) -> list[Any]:
        if self.stop.kind not in ("enrich", "filter"):
            return await fallback(self, records)
        opts = self.settings.stop(self.stop.name).options
        enrich = self.stop.kind == "enrich"
        field = opts["key_field"] if enrich else opts["field"]
        envelopes = [self.decode(r) for r in records]
        routes = [list(e.route) if isinstance(e, Envelope) else [] for e in envelopes]
        at = now_ms()
        results: list[Any] = [None] * len(envelopes)
        wanted, where = [], []
        for i, env in enumerate(envelopes):
            if not isinstance(env, Envelope):
                results[i] = env
                continue
            env.hop(self.stop.name, at)
            value = env.payload.get(field)
            if value is None or isinstance(value, (dict, list)):
                results[i] = InvalidMessage(f"payload has no usable {field!r} field")
                continue
            wanted.append(str(value))
            where.append(i)
        prefix = self.store.prefix
        try:
            if not wanted:
                replies: list[Any] = []
            elif enrich:
                template = opts["redis_key"]
                replies = await self.store.client.mget(
                    [prefix + template.replace("{}", k) for k in wanted]
                )
            else:
                replies = await self.store.client.smismember(prefix + opts["redis_set"], wanted)
        except TRANSIENT_REDIS as exc:
            raise TransientError(f"Redis unavailable: {exc}") from exc
        if enrich:
            target, drop_miss = opts["target_field"], opts.get("on_miss", "drop") == "drop"
            miss = Drop(f"no {target} for {field}")
            for i, value in zip(where, replies, strict=True):
                payload = envelopes[i].payload
                if value is None:
                    results[i] = miss if drop_miss else payload
                else:
                    payload[target] = value
                    results[i] = payload
        else:
            allow, mark = opts.get("mode", "allow") == "allow", opts.get("mark_field")
            reason = Drop(f"{field} not on allow list" if allow else f"{field} on deny list")
            for i, member in zip(where, replies, strict=True):
                payload = envelopes[i].payload
                if bool(member) != allow:
                    results[i] = reason
                else:
                    if mark:
                        payload[mark] = True
                    results[i] = payload
        outputs = []
        for rec, env, result, route in zip(records, envelopes, results, routes, strict=True):
            try:
                outputs.append(self.route(rec, env, result, route))
            except Exception as exc:
                outputs.append(self.dead_letter(rec, exc, route))
        return outputs

    return process


# -- produce --------------------------------------------------------------------------
def _make_send(same_partition: bool, sequential_acks: bool) -> Any:
    from metrobus import bus
    from metrobus.errors import TransientError

    same: dict[str, bool] = {}  # output topic -> as many partitions as the input topic

    def n_partitions(cluster: Any, topic: str) -> int:
        return len(cluster.partitions_for_topic(topic) or ())

    async def _send(self: Any, outputs: list[Any]) -> list[tuple[Any, BaseException]]:
        producer = self.producer
        futures: list[asyncio.Future[Any]] = []
        for o in outputs:
            partition = None
            if same_partition and o.record is not None:
                if o.topic not in same:
                    n_out = n_partitions(producer.client.cluster, o.topic)
                    n_in = n_partitions(self.consumer._client.cluster, o.record.topic)
                    if n_out and n_in:  # cache only once both are known
                        same[o.topic] = n_out == n_in
                if same.get(o.topic):
                    partition = o.record.partition
            try:
                futures.append(
                    await producer.send(o.topic, o.value, key=o.key, partition=partition)
                )
            except bus.KafkaError as exc:
                failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                failed.set_exception(exc)
                futures.append(failed)
        if not futures:
            return []
        if not sequential_acks:
            acks: Any = asyncio.ensure_future(asyncio.gather(*futures, return_exceptions=True))
        else:

            async def each() -> list[Any]:
                out: list[Any] = []
                for f in futures:
                    try:
                        out.append(await f)
                    except Exception as exc:
                        out.append(exc)
                return out

            acks = asyncio.ensure_future(each())
        halt = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([acks, halt], return_when=asyncio.FIRST_COMPLETED)
        halt.cancel()
        if not acks.done():
            acks.cancel()
            raise TransientError("stopping before the acknowledgements arrived")
        return [
            (o, r)
            for o, r in zip(outputs, acks.result(), strict=True)
            if isinstance(r, BaseException)
        ]

    return _send


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "run-stop" and sys.argv[3] == "--":
        sys.exit(run_stop(sys.argv[2], sys.argv[4:]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
