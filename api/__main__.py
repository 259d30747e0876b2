"""``python -m api``: serve the ingress with uvicorn on the configured host and port."""

from __future__ import annotations

import uvicorn

from api.app import create_app
from core.logs import configure
from settings import get_settings


def main() -> None:
    settings = get_settings()
    configure("api")
    # log_config=None keeps our JSON handler instead of uvicorn's own formatting.
    uvicorn.run(create_app(settings), host=settings.api_host, port=settings.api_port, log_level="info",
                log_config=None)


if __name__ == "__main__":
    main()
