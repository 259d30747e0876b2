"""Authenticating a stored key: the ingress's lookup cache vs a Cassandra read per request, same run.

    python -m bench.bench_key_auth --requests 5000 [--concurrency 16] [--json]

Stores one service key in a fresh keyspace on the configured Cassandra, then authenticates it
``--requests`` times with ``--concurrency`` requests in flight on one event loop, exactly as
``api.context.admit`` does (``try_authenticate`` on the loop; on a miss ``lookup`` on a thread):
(1) the baseline, a cache whose entries expire at once (every request reads Cassandra, as before
issue 16), and (2) the cache as shipped (one read, then answered in memory until a key event or
``TRIBUTARY_KEY_CACHE_MAX_AGE_S``). Reports requests per second and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

from core.api_keys import hash_api_key, key_id, new_api_key
from core.auth import Authenticator, Principal
from core.cassandra.migrate import migrate
from core.cassandra.session import connect
from core.fleet.cassandra_store import CassandraFleetStore
from core.fleet.models import ApiKeyRecord, SubjectType
from schemas.clock import utcnow
from settings import Settings


async def authenticate(authenticator: Authenticator, key: str) -> Principal:
    principal = authenticator.try_authenticate(key)
    if principal is None:
        principal = await asyncio.to_thread(authenticator.lookup, key)
    return principal


async def run(authenticator: Authenticator, key: str, requests: int, concurrency: int) -> float:
    """Requests per second."""
    remaining = iter(range(requests))

    async def client() -> None:
        for _ in remaining:
            await authenticate(authenticator, key)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return requests / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    settings = Settings(cassandra_keyspace=f"bench_keys_{uuid.uuid4().hex[:8]}")
    session = connect(settings)
    migrate(session, settings)
    store = CassandraFleetStore(session)
    key = new_api_key()
    store.put_api_key(ApiKeyRecord(hash_api_key(key), key_id(key), SubjectType.SERVICE, "bench", utcnow()))
    try:
        uncached = Authenticator(store, settings.model_copy(update={"key_cache_max_age_s": 1e-9}))
        cached = Authenticator(store, settings)
        asyncio.run(run(uncached, key, 200, args.concurrency))  # warm the driver's prepared statements
        baseline = asyncio.run(run(uncached, key, args.requests, args.concurrency))
        with_cache = asyncio.run(run(cached, key, args.requests, args.concurrency))
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {settings.cassandra_keyspace}", timeout=120)
        session.cluster.shutdown()
    result = {"requests": args.requests, "concurrency": args.concurrency,
              "store_read_per_request_rps": round(baseline), "cached_rps": round(with_cache),
              "ratio": round(with_cache / baseline, 1)}
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:>28}: {value}")


if __name__ == "__main__":
    main()
