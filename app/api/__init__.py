"""The JSON API: auth, videos and health."""

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api")

from app.api import auth, videos  # noqa: E402,F401  (routes register on bp)
