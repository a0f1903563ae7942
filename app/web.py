"""The page at ``/``: sign up, log in, upload straight to S3 with progress, watch the videos.

One HTML template and a small script (``static/app.js``) over the JSON API; no framework.
Its Content-Security-Policy lets it talk to this origin and to the bucket's, and nothing else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, make_response, render_template

from domain.storage import get_storage

bp = Blueprint("web", __name__)


def _bucket_origin() -> str:
    """Return the origin presigned URLs point at (the same for every key), worked out once per app."""
    if "bucket_origin" not in current_app.extensions:
        parts = urlsplit(get_storage().url("originals/") or "")
        current_app.extensions["bucket_origin"] = f"{parts.scheme}://{parts.netloc}"
    origin: str = current_app.extensions["bucket_origin"]
    return origin


def page_csp() -> str:
    """Return the page's CSP: scripts and styles from here; parts, videos and posters from the bucket."""
    bucket = _bucket_origin()
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"connect-src 'self' {bucket}; media-src {bucket}; img-src 'self' {bucket}; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


@bp.get("/")
def index() -> Response:
    """Serve the page."""
    response = make_response(render_template("index.html"))
    response.headers["Content-Security-Policy"] = page_csp()
    response.headers["Cache-Control"] = "no-cache"
    return response
