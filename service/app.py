"""The HTTP API (v1) assembled: routers, error handlers, request metrics, the web painter.

Routes live in service.routes; they translate HTTP to calls of the jobs layer (the queue client,
the edit rules) and back. Every error is JSON: {"error": {"status", "message"}}.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from jobs.connection import connect, stop_embedded
from jobs.queue import JobQueue
from jobs.settings import Settings, get_settings
from service.errors import install_handlers
from service.metrics import ApiMetrics
from service.routes import batches, edits, system, webhooks

SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}
# The painter is plain files of this origin: no inline script or style, images from blob: URLs
# (results and loaded photos). /docs (Swagger UI loads its script from a CDN) is left out.
PAINTER_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
               "data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")
API_PATHS = ("/v1/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/metrics")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        connection = connect(settings)
        app.state.queue = JobQueue(connection, settings)
        yield
        stop_embedded(connection)

    app = FastAPI(title="SDEdit service", version="1", lifespan=lifespan,
                  description="Guided image synthesis and editing with SDEs (Meng et al., 2022).")
    app.dependency_overrides[get_settings] = lambda: settings
    app.state.metrics = metrics = ApiMetrics(settings.models)
    install_handlers(app, settings.retry_after_s)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith(API_PATHS):  # the painter's pages and files
            response.headers["Content-Security-Policy"] = PAINTER_CSP
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - start)
        return response

    if settings.cors_origins:  # off unless origins are configured
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
                           expose_headers=["Retry-After", "Location"])
    app.include_router(edits.router)
    app.include_router(batches.router)
    app.include_router(webhooks.router)
    app.include_router(system.router)
    # The web painter: static files, mounted last so the API routes take precedence.
    app.mount("/", StaticFiles(directory=Path(__file__).parent / "static", html=True),
              name="painter")
    return app
