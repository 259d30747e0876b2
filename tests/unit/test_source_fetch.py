"""The source_url fetcher's guards (core/onboarding/fetch.py), against a real HTTP server on loopback.

Loopback is refused unless the policy allows it explicitly, so the tests that need the server
allow 127.0.0.1; the refusals need no server at all (nothing is connected to).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import ipaddress
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.onboarding.fetch import FetchError, FetchPolicy, SourceFetcher, check_source_url, redact

pytestmark = pytest.mark.unit

BODY = b"model bytes " * 1000
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


class Handler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        Handler.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        if self.path.startswith("/redirect-private"):
            self._redirect("http://10.0.0.7/model.onnx")
        elif self.path.startswith("/redirect-metadata"):
            self._redirect("http://169.254.169.254/latest/meta-data/")
        elif self.path.startswith("/redirect-file"):
            self._redirect("file:///etc/passwd")
        elif self.path.startswith("/redirect-ok"):
            self._redirect("/model.onnx")
        elif self.path.startswith("/loop"):
            self._redirect("/loop")
        elif self.path.startswith("/model.onnx"):
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def fetch(url: str, policy: FetchPolicy, **kwargs: object) -> tuple[bytes, str]:
    out = io.BytesIO()
    fetched = SourceFetcher(policy, **kwargs).fetch(url, out)  # type: ignore[arg-type]
    return out.getvalue(), fetched.sha256


def refused_code(url: str, policy: FetchPolicy, **kwargs: object) -> str:
    with pytest.raises(FetchError) as caught:
        fetch(url, policy, **kwargs)
    return caught.value.code


def test_an_allowed_loopback_server_is_fetched_whole_with_its_sha256_and_without_our_credentials(
        server: str) -> None:
    data, sha256 = fetch(f"{server}/model.onnx", FetchPolicy(allow_http=True, allowed_networks=LOOPBACK))
    assert data == BODY and sha256 == hashlib.sha256(BODY).hexdigest()
    request = Handler.seen[-1]
    assert "authorization" not in request and "cookie" not in request


def test_loopback_is_refused_unless_allowed(server: str) -> None:
    before = len(Handler.seen)
    assert refused_code(f"{server}/model.onnx", FetchPolicy(allow_http=True)) == "SOURCE_NOT_ALLOWED"
    assert len(Handler.seen) == before  # refused before connecting


@pytest.mark.parametrize("url", [
    "https://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
    "https://10.1.2.3/model.onnx", "https://192.168.0.10/m.onnx", "https://172.16.5.5/m.onnx",
    "https://100.64.0.1/m.onnx",  # carrier-grade NAT
    "https://[::1]/m.onnx", "https://[fe80::1]/m.onnx", "https://[::ffff:127.0.0.1]/m.onnx",
    "https://0.0.0.0/m.onnx",
])
def test_private_link_local_and_metadata_addresses_are_refused(url: str) -> None:
    assert refused_code(url, FetchPolicy()) == "SOURCE_NOT_ALLOWED"


def test_a_dns_name_resolving_to_a_private_address_is_refused() -> None:
    def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "10.0.0.5"]  # one private answer among public ones is enough to refuse

    assert refused_code("https://models.example.com/m.onnx", FetchPolicy(), resolver=resolver) == \
        "SOURCE_NOT_ALLOWED"


def test_the_connection_goes_to_the_checked_address_with_the_name_in_host(server: str) -> None:
    """The name is resolved once (by the guard); httpx connects to that IP, so a rebinding resolver
    gets no second question. ``models.test`` does not exist in DNS: the fetch works only if pinned."""
    port = server.rsplit(":", 1)[1]
    lookups: list[str] = []

    def resolver(host: str, _: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    data, _ = fetch(f"http://models.test:{port}/model.onnx",
                    FetchPolicy(allow_http=True, allowed_networks=LOOPBACK), resolver=resolver)
    assert data == BODY and lookups == ["models.test"]
    assert Handler.seen[-1]["host"] == f"models.test:{port}"


@pytest.mark.parametrize("path", ["/redirect-private", "/redirect-metadata", "/redirect-file"])
def test_every_redirect_is_checked_again(server: str, path: str) -> None:
    assert refused_code(f"{server}{path}", FetchPolicy(allow_http=True, allowed_networks=LOOPBACK)) == \
        "SOURCE_NOT_ALLOWED"


def test_allowed_redirects_are_followed_and_loops_end(server: str) -> None:
    policy = FetchPolicy(allow_http=True, allowed_networks=LOOPBACK)
    assert fetch(f"{server}/redirect-ok", policy)[0] == BODY
    assert refused_code(f"{server}/loop", policy) == "DOWNLOAD_FAILED"


def test_not_found_and_oversized_sources_fail_with_the_reason(server: str) -> None:
    policy = FetchPolicy(allow_http=True, allowed_networks=LOOPBACK)
    with pytest.raises(FetchError, match="HTTP 404") as caught:
        fetch(f"{server}/missing.onnx", policy)
    assert caught.value.code == "DOWNLOAD_FAILED"
    small = FetchPolicy(allow_http=True, allowed_networks=LOOPBACK, max_bytes=1024)
    assert refused_code(f"{server}/model.onnx", small) == "FILE_TOO_LARGE"


def test_schemes_http_file_and_s3_follow_their_settings(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="http:// source URLs are off"):
        check_source_url("http://models.example.com/m.onnx", FetchPolicy())
    with pytest.raises(FetchError, match="credentials"):
        check_source_url("https://user:pw@models.example.com/m.onnx", FetchPolicy())
    for url in ("ftp://x/m.onnx", "gopher://x/", "data:,abc"):
        with pytest.raises(FetchError, match="unsupported"):
            check_source_url(url, FetchPolicy())
    with pytest.raises(FetchError, match="file:// sources are off"):
        check_source_url("file:///etc/passwd", FetchPolicy())
    root = tmp_path / "models"
    root.mkdir()
    (root / "m.onnx").write_bytes(BODY)
    (root / "escape").symlink_to("/etc")
    policy = FetchPolicy(file_root=root.resolve(), s3_buckets=frozenset({"ours"}))
    assert fetch(f"file://{root}/m.onnx", policy)[0] == BODY
    for url in (f"file://{root}/../secret", f"file://{root}/escape/passwd", "file://otherhost/m.onnx"):
        with pytest.raises(FetchError):
            check_source_url(url, policy)
    check_source_url("s3://ours/models/m.onnx", policy)
    with pytest.raises(FetchError, match="our buckets"):
        check_source_url("s3://someone-elses/m.onnx", policy)


def test_redact_drops_user_info_and_query() -> None:
    assert redact("https://u:p@host.example:8443/a/m.onnx?X-Amz-Signature=abc") == "https://host.example:8443/a/m.onnx"
