"""``tributary api`` runs ``main(settings)``: the ingress (REST and gRPC) under uvicorn."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from core.logs import configure
from settings import Settings


def main(settings: Settings) -> None:
    """Serve on ``settings.api_host:api_port`` until SIGTERM/SIGINT (uvicorn lets requests finish)."""
    configure("api")
    # log_config=None keeps our JSON handler instead of uvicorn's own formatting. Proxy headers only
    # from the proxies we were told to trust: uvicorn's default believes anyone on 127.0.0.1.
    trusted = settings.trusted_proxies.strip()
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info",
                log_config=None, proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None)
