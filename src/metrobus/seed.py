"""``metrobus seed``: the original's account/email data and whitelist, into Redis.

Account ids start at 1,000,000 and grow in random steps of 1–5, so about a
third of the id range has an email (Redis string ``email:<account>``), as in
the original ``make_account_email.py``. The whitelist (Redis set
``whitelist``) holds about half of those emails plus as many unrelated ones.
Writes are pipelined in chunks; ``out_dir`` also writes ``emails.dat``
(``account,email`` lines) and ``whitelist.dat`` (one email per line), the
original formats.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis

from metrobus.errors import MetrobusError
from metrobus.progress import Reporter

FIRST_ACCOUNT = 1_000_000
DEFAULT_LAST_ACCOUNT = 1_999_999
CHUNK = 10_000
_WORDS = (
    "ada",
    "bus",
    "cat",
    "dune",
    "echo",
    "fern",
    "gale",
    "hale",
    "iris",
    "jade",
    "kite",
    "lark",
    "moss",
    "nova",
    "opal",
    "pike",
    "quill",
    "reed",
    "sage",
    "tide",
    "vale",
    "wren",
)
_DOMAINS = ("example.com", "example.org", "mail.test", "post.test")


@dataclass(frozen=True)
class SeedResult:
    accounts: int
    emails: int
    whitelist: int
    last_account: int


def email_for(rng: random.Random) -> str:
    return (
        f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}{rng.randrange(100_000)}@{rng.choice(_DOMAINS)}"
    )


def generate(accounts: int, rng: random.Random) -> tuple[dict[int, str], list[str], int]:
    """(account → email, whitelist, last account id); ids step by 1–5 at random."""
    emails: dict[int, str] = {}
    account = FIRST_ACCOUNT
    for _ in range(accounts):
        emails[account] = email_for(rng)
        account += rng.randint(1, 5)
    listed = [e for e in emails.values() if rng.random() < 0.5]
    unrelated = [f"other.{email_for(rng)}" for _ in range(len(listed))]
    return emails, listed + unrelated, max(emails)


async def account_range(client: aioredis.Redis, prefix: str) -> int:
    """The last seeded account id (push draws accounts up to it)."""
    value = await client.get(f"{prefix}metrobus:seed:last_account")
    return int(value) if value else DEFAULT_LAST_ACCOUNT


async def seed(
    client: aioredis.Redis,
    prefix: str,
    accounts: int,
    out_dir: Path | None = None,
    rng_seed: int | None = None,
    progress: bool = True,
) -> SeedResult:
    rng = random.Random(rng_seed)
    emails, whitelist, last = generate(accounts, rng)
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "emails.dat").write_text("".join(f"{a},{e}\n" for a, e in emails.items()))
            (out_dir / "whitelist.dat").write_text("".join(f"{e}\n" for e in whitelist))
        except OSError as exc:
            raise MetrobusError(
                f"cannot write the data files to {out_dir}: {exc.strerror}"
            ) from exc
    items = list(emails.items())
    with Reporter("seed → Redis", len(items) + len(whitelist), enabled=progress) as reporter:
        await client.delete(f"{prefix}whitelist")
        for i in range(0, len(items), CHUNK):
            chunk = items[i : i + CHUNK]
            await client.mset({f"{prefix}email:{a}": e for a, e in chunk})
            reporter.advance(len(chunk))
        pipe = client.pipeline(transaction=False)
        for i in range(0, len(whitelist), CHUNK):
            pipe.sadd(f"{prefix}whitelist", *whitelist[i : i + CHUNK])
        pipe.set(f"{prefix}metrobus:seed:last_account", last)
        await pipe.execute()
        reporter.advance(len(whitelist))
    return SeedResult(accounts, len(emails), len(whitelist), last)
