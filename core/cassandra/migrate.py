"""Versioned CQL migrations: ``NNNN_name.cql`` files applied in order, each recorded once.

Migrations target Cassandra 5.0 CQL (SAI indexes, ``USING TTL``, ``default_time_to_live``).
A migration's statements are idempotent (``IF NOT EXISTS``) so that a run cut off
between a statement and its ledger row is safe to repeat.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cassandra.cluster import Session

from settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.cql$")
_KEYSPACE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: list[str]
    checksum: str


class MigrationError(RuntimeError):
    pass


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.cql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file {path.name} must be named NNNN_name.cql")
        text = path.read_text()
        body = "\n".join(line for line in text.splitlines() if not line.strip().startswith("--"))
        statements = [s.strip() for s in body.split(";") if s.strip()]
        migrations.append(
            Migration(int(match[1]), match[2], statements, hashlib.sha256(text.encode()).hexdigest()[:16])
        )
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return migrations


def applied_versions(session: Session, keyspace: str) -> dict[int, str]:
    rows = session.execute(f"SELECT version, checksum FROM {keyspace}.schema_migrations")
    return {row.version: row.checksum for row in rows}


def migrate(session: Session, settings: Settings, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Create the keyspace, apply pending migrations in order; returns those applied."""
    keyspace = settings.cassandra_keyspace
    if not _KEYSPACE.match(keyspace):
        raise MigrationError(f"invalid keyspace name {keyspace!r}")
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {settings.cassandra_replication}"
    )
    session.set_keyspace(keyspace)
    migrations = load_migrations(directory)
    # 0001 creates the ledger itself.
    for statement in migrations[0].statements:
        session.execute(statement)
    done = applied_versions(session, keyspace)
    applied = []
    for migration in migrations:
        if migration.version in done:
            if done[migration.version] != migration.checksum:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} changed after it was applied; "
                    "add a new migration instead"
                )
            continue
        for statement in migration.statements:
            session.execute(statement)
        session.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (%s, %s, %s, %s)",
            (migration.version, migration.name, migration.checksum, datetime.now(UTC)),
        )
        applied.append(migration)
    return applied


def current_version(session: Session, settings: Settings) -> int:
    versions = applied_versions(session, settings.cassandra_keyspace)
    return max(versions, default=0)
