"""Request metrics and security headers, as a plain ASGI middleware.

Plain ASGI rather than `@app.middleware("http")`: Starlette's BaseHTTPMiddleware runs every
request through extra tasks and memory streams, which cost about a millisecond per request on
the submit path.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import ApiMetrics

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY")]
# The painter is plain files of this origin: no inline script or style, images from blob: URLs
# (results and loaded photos). /docs (Swagger UI loads its script from a CDN) is left out.
PAINTER_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
               "data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
               "frame-ancestors 'none'; form-action 'self'")
API_PATHS = ("/v1/", "/docs", "/redoc", "/openapi.json", "/healthz", "/readyz", "/metrics")


class ObserveAndProtect:
    """Counts and times every request by route; adds the security headers (and the painter's
    Content-Security-Policy to everything that is not the API)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        extra = list(SECURITY_HEADERS)
        if not scope["path"].startswith(API_PATHS):
            extra.append((b"content-security-policy", PAINTER_CSP.encode()))

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route, scope["method"]).observe(
                time.perf_counter() - start)
