"""What every answer carries: security headers, no caching of private data, CORS from settings.

Also trusts ``X-Forwarded-*`` from exactly ``TRUSTED_PROXIES`` proxies, so the client
address that rate limits key on is the real one and can't be forged past them.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from domain.extensions import get_settings

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    # JSON answers need nothing; pages that need more (the API docs) set their own.
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}
HSTS = "max-age=31536000; includeSubDomains"
# Swagger UI at /api/docs: its own scripts and styles (served by this app) and its inline start-up script.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def init_app(app: Flask) -> None:
    """Install the proxy fix, CORS for ``/api/*`` and the headers on every answer."""
    proxies = get_settings(app).TRUSTED_PROXIES
    if proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies)  # type: ignore[method-assign]
    if get_settings(app).CORS_ORIGINS:
        CORS(
            app,
            resources={r"/api/*": {"origins": get_settings(app).CORS_ORIGINS}},
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "X-Request-ID", "ETag"],
            max_age=600,
        )

    @app.after_request
    def _headers(response: Response) -> Response:
        if request.path == "/api/docs":
            response.headers.setdefault("Content-Security-Policy", DOCS_CSP)
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        if request.is_secure:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        if request.path.startswith("/api/"):
            # Tokens, presigned URLs and private video data: never in a shared or browser cache.
            response.headers.setdefault("Cache-Control", "no-store")
        return response
