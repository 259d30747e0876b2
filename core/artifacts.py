"""The S3 artifact store: model files and update files, addressed by key, checked by sha256.

Large payloads never ride Kafka; events carry the key, size and sha256 (claim check).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from settings import Settings

CHUNK = 1024 * 1024


def s3_client(settings: Settings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key.get_secret_value(),
        region_name=settings.s3_region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=3,
            read_timeout=30,
        ),
    )


class ArtifactNotFound(LookupError):
    pass


class ArtifactStoreUnavailable(ConnectionError):
    """S3 did not answer; callers turn this into 503, never into a lost write."""


@dataclass(frozen=True)
class StoredArtifact:
    key: str
    size: int
    sha256: str


class ArtifactStore(ABC):
    """Where large payloads live; S3 in every environment, memory in unit tests."""

    @abstractmethod
    def put(
        self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream"
    ) -> StoredArtifact: ...

    @abstractmethod
    def head(self, key: str) -> StoredArtifact: ...

    @abstractmethod
    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    def get(self, key: str) -> bytes:
        return b"".join(self.stream(key))

    def put_path(self, key: str, path: Path) -> StoredArtifact:
        """Store a local file; S3 streams it in parts instead of reading it into memory."""
        with path.open("rb") as handle:
            return self.put(key, handle)


class MemoryArtifactStore(ArtifactStore):
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.available = True  # flip to simulate an outage in unit tests

    def _check(self) -> None:
        if not self.available:
            raise ArtifactStoreUnavailable("memory store switched off")

    def put(
        self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream"
    ) -> StoredArtifact:
        self._check()
        body = data if isinstance(data, bytes) else data.read()
        self.objects[key] = body
        return StoredArtifact(key, len(body), hashlib.sha256(body).hexdigest())

    def head(self, key: str) -> StoredArtifact:
        self._check()
        if key not in self.objects:
            raise ArtifactNotFound(key)
        body = self.objects[key]
        return StoredArtifact(key, len(body), hashlib.sha256(body).hexdigest())

    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        self._check()
        if key not in self.objects:
            raise ArtifactNotFound(key)
        body = self.objects[key]
        for start in range(0, len(body), chunk_size):
            yield body[start : start + chunk_size]

    def delete(self, key: str) -> None:
        self._check()
        self.objects.pop(key, None)


class S3ArtifactStore(ArtifactStore):
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.bucket = settings.s3_bucket
        self.client = client or s3_client(settings)

    def put(self, key: str, data: bytes | IO[bytes], content_type: str = "application/octet-stream") -> StoredArtifact:
        """Store an object and return its size and sha256 (also saved as object metadata)."""
        body = data if isinstance(data, bytes) else data.read()
        digest = hashlib.sha256(body).hexdigest()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata={"sha256": digest}
            )
        except ClientError:
            raise
        except Exception as exc:  # connection refused, timeouts
            raise ArtifactStoreUnavailable(str(exc)) from exc
        return StoredArtifact(key=key, size=len(body), sha256=digest)

    def put_path(self, key: str, path: Path) -> StoredArtifact:
        """Multipart upload of a local file (model files may be gigabytes), sha256 in its metadata."""
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK), b""):
                digest.update(chunk)
        sha256 = digest.hexdigest()
        try:
            self.client.upload_file(str(path), self.bucket, key,
                                    ExtraArgs={"Metadata": {"sha256": sha256},
                                               "ContentType": "application/octet-stream"})
        except ClientError:
            raise
        except Exception as exc:
            raise ArtifactStoreUnavailable(str(exc)) from exc
        return StoredArtifact(key=key, size=path.stat().st_size, sha256=sha256)

    def head(self, key: str) -> StoredArtifact:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFound(key) from exc
            raise
        except Exception as exc:
            raise ArtifactStoreUnavailable(str(exc)) from exc
        return StoredArtifact(key=key, size=int(meta["ContentLength"]), sha256=meta["Metadata"].get("sha256", ""))

    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object in chunks without holding it in memory."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise ArtifactNotFound(key) from exc
            raise
        except Exception as exc:
            raise ArtifactStoreUnavailable(str(exc)) from exc
        yield from obj["Body"].iter_chunks(chunk_size)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)
