"""``tributary api`` runs ``main(settings)``: the ingress (REST and gRPC) under uvicorn."""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI

from api.app import create_app
from core.logs import configure
from settings import Settings, get_settings


def worker_app() -> FastAPI:
    """The app of one uvicorn worker process (``TRIBUTARY_API_WORKERS`` > 1): each reads the settings
    from the environment it inherited and wires itself (its own producer, reply consumer, audit chain)."""
    configure("api")
    return create_app(get_settings())


def main(settings: Settings) -> None:
    """Serve on ``settings.api_host:api_port`` until SIGTERM/SIGINT (uvicorn lets requests finish).

    With ``api_workers`` > 1 uvicorn binds the port once and runs that many worker processes on it
    (the kernel spreads connections); each is a replica of its own, as separate ``tributary api``
    processes would be, and gRPC binds its port in each with SO_REUSEPORT.
    """
    configure("api")
    # log_config=None keeps our JSON handler instead of uvicorn's own formatting. Proxy headers only
    # from the proxies we were told to trust: uvicorn's default believes anyone on 127.0.0.1.
    trusted = settings.trusted_proxies.strip()
    common = {"host": settings.api_host, "port": settings.api_port, "log_level": "info", "log_config": None,
              "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}
    if settings.api_workers > 1:
        uvicorn.run("api.serve:worker_app", factory=True, workers=settings.api_workers, **common)  # type: ignore[arg-type]
    else:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
