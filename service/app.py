"""The HTTP API (v1) assembled: routers, error handlers, request metrics, the web painter.

Routes live in service.routes; they translate HTTP to calls of the jobs layer (the queue client,
the edit rules) and back. Every error is JSON: {"error": {"status", "message"}}.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from jobs.connection import connect, stop_embedded
from jobs.queue import JobQueue
from jobs.settings import Settings, get_settings
from service.errors import install_handlers
from service.metrics import ApiMetrics
from service.middleware import ObserveAndProtect
from service.routes import batches, edits, system, webhooks


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
    app.state.settings = settings
    app.state.metrics = metrics = ApiMetrics(settings.models)
    install_handlers(app, settings.retry_after_s)

    app.add_middleware(ObserveAndProtect, metrics=metrics)
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
