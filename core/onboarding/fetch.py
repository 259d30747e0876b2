"""Fetching a model file from a user-given ``source_url``: a server-side request, so guarded.

Schemes:

- ``https://`` always; ``http://`` only with ``TRIBUTARY_MODEL_FETCH_ALLOW_HTTP``.
- ``s3://bucket/key`` only from our own S3 (``TRIBUTARY_S3_ENDPOINT``) and only from
  ``TRIBUTARY_S3_BUCKET`` or a bucket listed in ``TRIBUTARY_MODEL_SOURCE_S3_BUCKETS``: our
  credentials are never sent anywhere else.
- ``file://`` only under ``TRIBUTARY_MODEL_SOURCE_FILE_ROOT`` (symlinks resolved first).

HTTP(S) fetches (the SSRF guard):

- The host is resolved once per hop and *every* address must be public (``ipaddress.is_global``,
  which excludes loopback, private, link-local incl. 169.254.169.254, CGNAT, documentation and
  reserved ranges; IPv4-mapped IPv6 is unwrapped first) unless it lies in
  ``TRIBUTARY_MODEL_FETCH_ALLOWED_NETWORKS``.
- The connection goes to the checked address (the URL's host is replaced by the IP, the
  ``Host`` header and TLS SNI keep the name, so certificates are still verified against it):
  no second DNS lookup a rebinding resolver could answer differently.
- Redirects are followed by hand, at most ``MAX_REDIRECTS``, each hop checked like the first
  (scheme, then addresses).
- ``trust_env=False``: no proxy variables and no ``.netrc`` credentials; the request carries
  no ``Authorization`` or cookie of ours.
- Size (``Content-Length`` when sent, and the bytes actually read) and total time are capped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpx

from settings import Settings

MAX_REDIRECTS = 5
CHUNK = 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # longest silence between two chunks

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
Progress = Callable[[int, int | None], None]


class FetchError(Exception):
    """Why a source could not be fetched; ``code`` is the registry's ``status_reason`` code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def refused(message: str) -> FetchError:
    return FetchError("SOURCE_NOT_ALLOWED", message)


@dataclass(frozen=True)
class FetchPolicy:
    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()
    file_root: Path | None = None
    s3_buckets: frozenset[str] = frozenset()
    max_bytes: int = 2 * 1024**3
    timeout_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        networks = tuple(ipaddress.ip_network(n.strip(), strict=False)
                         for n in settings.model_fetch_allowed_networks.split(",") if n.strip())
        buckets = {b.strip() for b in settings.model_source_s3_buckets.split(",") if b.strip()}
        root = settings.model_source_file_root.strip()
        return cls(allow_http=settings.model_fetch_allow_http, allowed_networks=networks,
                   file_root=Path(root).resolve() if root else None,
                   s3_buckets=frozenset({settings.s3_bucket, *buckets}),
                   max_bytes=settings.model_fetch_max_bytes, timeout_s=settings.model_fetch_timeout_s)


@dataclass(frozen=True)
class Fetched:
    size: int
    sha256: str
    final_url: str  # after redirects


def redact(url: str) -> str:
    """The URL without user info or query (which may hold a signature): safe for events and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_source_url(url: str, policy: FetchPolicy) -> None:
    """Refuse what no fetch would accept, before anything is stored (no DNS here: that is per fetch)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https" or (scheme == "http" and policy.allow_http):
        if not parts.hostname:
            raise refused("the source_url has no host")
        if parts.username or parts.password:
            raise refused("credentials in a source_url are not accepted")
        return
    if scheme == "http":
        raise refused("plain http:// source URLs are off (TRIBUTARY_MODEL_FETCH_ALLOW_HTTP); use https://")
    if scheme == "s3":
        if parts.hostname not in policy.s3_buckets or not parts.path.strip("/"):
            raise refused(f"s3:// sources must name an object in one of our buckets: {sorted(policy.s3_buckets)}")
        return
    if scheme == "file":
        _local_path(url, policy)
        return
    raise refused(f"unsupported source_url scheme {scheme!r}: https, http (if allowed), s3 or file")


def _local_path(url: str, policy: FetchPolicy) -> Path:
    if policy.file_root is None:
        raise refused("file:// sources are off (TRIBUTARY_MODEL_SOURCE_FILE_ROOT is not set)")
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise refused("file:// sources must be local paths")
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(policy.file_root):
        raise refused(f"file:// sources must lie under {policy.file_root}")
    return path


def address_allowed(ip: IPAddress, policy: FetchPolicy) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in policy.allowed_networks if network.version == ip.version):
        return True
    return ip.is_global and not ip.is_multicast


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FetchError("DOWNLOAD_FAILED", f"cannot resolve {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve_checked(host: str, port: int, policy: FetchPolicy, resolver: Resolver) -> str:
    """One address of ``host`` to connect to; every address it resolves to must be allowed."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    addresses = [str(literal)] if literal is not None else resolver(host, port)
    if not addresses:
        raise FetchError("DOWNLOAD_FAILED", f"{host!r} resolves to no address")
    for address in addresses:
        if not address_allowed(ipaddress.ip_address(address.split("%")[0]), policy):
            raise refused(f"{host!r} resolves to {address}, a non-public address (loopback, private, "
                          "link-local or metadata); see TRIBUTARY_MODEL_FETCH_ALLOWED_NETWORKS")
    return addresses[0]


class SourceFetcher:
    """Copies a source into ``out`` (hashing and counting as it goes) under the policy's limits."""

    def __init__(self, policy: FetchPolicy, *, s3_client: Callable[[], Any] | None = None,
                 resolver: Resolver = system_resolver, transport: httpx.BaseTransport | None = None) -> None:
        self.policy = policy
        self._s3_client = s3_client
        self.resolver = resolver
        self.transport = transport  # tests may pass one; production uses httpx's default

    def fetch(self, url: str, out: IO[bytes], progress: Progress | None = None) -> Fetched:
        check_source_url(url, self.policy)
        deadline = time.monotonic() + self.policy.timeout_s
        scheme = urlsplit(url).scheme.lower()
        if scheme == "file":
            path = _local_path(url, self.policy)
            if not path.is_file():
                raise FetchError("DOWNLOAD_FAILED", f"no such file: {path.name}")
            with path.open("rb") as source:
                return self._copy(iter(lambda: source.read(CHUNK), b""), path.stat().st_size, out, progress,
                                  deadline, url)
        if scheme == "s3":
            return self._fetch_s3(url, out, progress, deadline)
        return self._fetch_http(url, out, progress, deadline)

    def _copy(self, chunks: Iterator[bytes], total: int | None, out: IO[bytes], progress: Progress | None,
              deadline: float, final_url: str) -> Fetched:
        if total is not None and total > self.policy.max_bytes:
            raise FetchError("FILE_TOO_LARGE", f"the source is {total} bytes; the limit is {self.policy.max_bytes}")
        digest, size = hashlib.sha256(), 0
        for chunk in chunks:
            size += len(chunk)
            if size > self.policy.max_bytes:
                raise FetchError("FILE_TOO_LARGE", f"the source exceeds the limit of {self.policy.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError("DOWNLOAD_FAILED", f"the fetch took longer than {self.policy.timeout_s:.0f}s")
            digest.update(chunk)
            out.write(chunk)
            if progress is not None:
                progress(size, total)
        if size == 0:
            raise FetchError("DOWNLOAD_FAILED", "the source is empty")
        return Fetched(size, digest.hexdigest(), redact(final_url))

    def _fetch_s3(self, url: str, out: IO[bytes], progress: Progress | None, deadline: float) -> Fetched:
        if self._s3_client is None:
            raise refused("s3:// sources need our S3 client")
        from botocore.exceptions import ClientError

        parts = urlsplit(url)
        try:
            obj = self._s3_client().get_object(Bucket=parts.hostname, Key=unquote(parts.path.lstrip("/")))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise FetchError("DOWNLOAD_FAILED", f"S3 answered {code} for {redact(url)}") from exc
        except Exception as exc:  # endpoint unreachable
            raise FetchError("DOWNLOAD_FAILED", f"S3 is unavailable: {exc}") from exc
        return self._copy(obj["Body"].iter_chunks(CHUNK), int(obj.get("ContentLength") or 0) or None, out,
                          progress, deadline, url)

    def _fetch_http(self, url: str, out: IO[bytes], progress: Progress | None, deadline: float) -> Fetched:
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        with httpx.Client(follow_redirects=False, trust_env=False, timeout=timeout,
                          transport=self.transport) as client:
            for _ in range(MAX_REDIRECTS + 1):
                check_source_url(url, self.policy)  # every hop: a redirect to file:// or http:// is refused too
                target = httpx.URL(url)
                address = resolve_checked(target.host, target.port or (443 if target.scheme == "https" else 80),
                                          self.policy, self.resolver)
                pinned = target.copy_with(host=address)
                host_header = target.host if target.port is None else f"{target.host}:{target.port}"
                extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
                request = client.build_request("GET", pinned, headers={"Host": host_header},
                                               extensions=extensions)
                try:
                    response = client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise FetchError("DOWNLOAD_FAILED", f"cannot fetch {redact(url)}: {exc}") from exc
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise FetchError("DOWNLOAD_FAILED", "a redirect without a Location")
                        url = str(target.join(location))
                        continue
                    if response.status_code != 200:
                        raise FetchError("DOWNLOAD_FAILED", f"{redact(url)} answered HTTP {response.status_code}")
                    length = response.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                    try:
                        return self._copy(response.iter_bytes(CHUNK), total, out, progress, deadline, url)
                    except httpx.HTTPError as exc:
                        raise FetchError("DOWNLOAD_FAILED", f"the fetch of {redact(url)} broke off: {exc}") from exc
                finally:
                    response.close()
        raise FetchError("DOWNLOAD_FAILED", f"more than {MAX_REDIRECTS} redirects")

