"""`metrobus seed` and `metrobus push` against the real Redis and broker."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from metrobus.seed import FIRST_ACCOUNT, generate
from metrobus.settings import Settings
from tests.helpers import read_topic

ROOT = Path(__file__).resolve().parent.parent


def cli(namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "metrobus", *args, "--namespace", namespace]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_generated_accounts_step_by_one_to_five_from_a_million() -> None:
    emails, whitelist, last = generate(3000, random.Random(1))
    ids = sorted(emails)
    assert ids[0] == FIRST_ACCOUNT
    assert ids[-1] == last
    assert len(ids) == 3000
    steps = {b - a for a, b in itertools.pairwise(ids)}
    assert steps <= {1, 2, 3, 4, 5}
    assert 0.25 < len(ids) / (last - FIRST_ACCOUNT + 1) < 0.45  # about a third of the range
    listed = set(whitelist) & set(emails.values())
    assert 0.4 < len(listed) / len(emails) < 0.6
    assert len(whitelist) - len(listed) > 1000  # unrelated emails too


async def test_seed_loads_redis_and_writes_the_original_files(
    settings: Settings, redis_client: aioredis.Redis, namespace: str, tmp_path: Path
) -> None:
    result = cli(namespace, "seed", "--accounts", "5000", "--seed", "2", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "emails.dat").read_text().splitlines()
    assert len(lines) == 5000
    account, email = lines[10].split(",", 1)
    assert await redis_client.get(f"{namespace}:email:{account}") == email
    whitelist = (tmp_path / "whitelist.dat").read_text().splitlines()
    assert await redis_client.scard(f"{namespace}:whitelist") == len(set(whitelist))
    assert await redis_client.sismember(f"{namespace}:whitelist", whitelist[0])
    last = int(await redis_client.get(f"{namespace}:metrobus:seed:last_account"))
    assert last == max(int(line.split(",")[0]) for line in lines)


async def test_push_sends_keyed_original_messages_and_reports_the_rate(
    settings: Settings, namespace: str
) -> None:
    assert cli(namespace, "seed", "--accounts", "1000", "--seed", "4").returncode == 0
    result = cli(namespace, "push", "--rate", "500", "--count", "1000", "--seed", "9")
    assert result.returncode == 0, result.stderr
    summary = result.stderr.strip().splitlines()[-1]
    assert summary.startswith("sent 1,000 messages in ")
    assert "/s achieved), 0 errors" in summary
    seconds = float(summary.split(" in ")[1].split("s")[0])
    assert seconds >= 1.5  # paced: 1,000 at 500/s is about 2 s, not a burst
    records = await read_topic(settings, "Source", 1000)
    assert len(records) == 1000
    messages = [orjson.loads(r.value) for r in records]
    assert sorted(m["x"] for m in messages) == list(range(1000))
    assert all(set(m) == {"x", "message_type_code", "account_number"} for m in messages)
    assert all(r.key == str(orjson.loads(r.value)["account_number"]).encode() for r in records)
    assert len({r.partition for r in records}) == settings.partitions
