"""Webhook endpoints and their deliveries: add, list, remove, rotate a secret, see and replay deliveries."""

from __future__ import annotations

from typing import Any

from flask import g

from app.api import BEARER, bp, error_answers
from app.api.schemas import (
    ListArgsSchema,
    WebhookCreateSchema,
    WebhookDeliveryPageSchema,
    WebhookDeliverySchema,
    WebhookEndpointSchema,
    WebhookListSchema,
    WebhookSecretSchema,
)
from app.auth import login_required
from domain import webhooks
from domain.models import WebhookDelivery, WebhookEndpoint
from domain.webhooks import iso

# The event bodies, documented as callbacks of the route that adds an endpoint (OpenAPI 3.0's way).
CALLBACKS = {
    event: {
        "{$request.body#/url}": {
            "post": {
                "summary": f"`{event}`, signed in Videoproc-Signature",
                "description": "Acknowledge with any 2xx within 10 s; anything else is retried with backoff for 24 h.",
                "parameters": [
                    {
                        "name": "Videoproc-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": '`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` (one `v1` '
                        "per secret: two for 24 h after a rotation)",
                    },
                    {"name": "Videoproc-Event-Id", "in": "header", "required": True, "schema": {"type": "string"}},
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookEvent"}}},
                },
                "responses": {"2XX": {"description": "Acknowledged"}},
            }
        }
    }
    for event in webhooks.EVENTS
}


def endpoint_json(endpoint: WebhookEndpoint, secret: bool = False) -> dict[str, Any]:
    """Return the public representation of ``endpoint``; its secret only when ``secret`` (once)."""
    body = {
        "id": endpoint.id,
        "url": endpoint.url,
        "events": endpoint.events.split(","),
        "created_at": iso(endpoint.created_at),
        "disabled_at": iso(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
        "previous_secret_expires_at": iso(endpoint.previous_secret_expires_at) if endpoint.previous_secret else None,
    }
    return {**body, "secret": endpoint.secret} if secret else body


def delivery_json(delivery: WebhookDelivery) -> dict[str, Any]:
    """Return the public representation of ``delivery``, with its attempts."""
    return {
        "id": delivery.id,
        "event_id": delivery.event_id,
        "event_type": delivery.event.type,
        "video_id": delivery.video_id,
        "status": delivery.status,
        "created_at": iso(delivery.created_at),
        "finished_at": iso(delivery.finished_at),
        "next_attempt_at": iso(delivery.next_attempt_at) if delivery.status == webhooks.PENDING else None,
        "attempts": [
            {
                "started_at": iso(a.started_at),
                "status_code": a.status_code,
                "duration_ms": a.duration_ms,
                "error": a.error,
            }
            for a in delivery.tries
        ],
    }


@bp.route("/webhooks", methods=["POST"])
@bp.doc(security=BEARER, callbacks=CALLBACKS)
@bp.arguments(WebhookCreateSchema)
@bp.response(201, WebhookSecretSchema)
@error_answers(400, 401, 409)
@login_required
def add_webhook(args: dict[str, Any]) -> dict[str, Any]:
    """Add an endpoint: the answer shows its signing secret, once. Its events default to all."""
    endpoint = webhooks.create_endpoint(g.user.id, args["url"], args.get("events"))
    return endpoint_json(endpoint, secret=True)


@bp.route("/webhooks", methods=["GET"])
@bp.doc(security=BEARER)
@bp.response(200, WebhookListSchema)
@error_answers(401)
@login_required
def list_webhooks() -> dict[str, Any]:
    """List the caller's endpoints (without their secrets)."""
    return {"items": [endpoint_json(e) for e in webhooks.list_endpoints(g.user.id)]}


@bp.route("/webhooks/<endpoint_id>", methods=["GET"])
@bp.doc(security=BEARER)
@bp.response(200, WebhookEndpointSchema)
@error_answers(401, 404)
@login_required
def get_webhook(endpoint_id: str) -> dict[str, Any]:
    """Return one endpoint: disabled, and why, when its deliveries kept failing."""
    return endpoint_json(webhooks.own_endpoint(g.user.id, endpoint_id))


@bp.route("/webhooks/<endpoint_id>", methods=["DELETE"])
@bp.doc(security=BEARER)
@bp.response(204)
@error_answers(401, 404)
@login_required
def delete_webhook(endpoint_id: str) -> None:
    """Remove an endpoint and its deliveries; nothing more is sent to it."""
    webhooks.delete_endpoint(webhooks.own_endpoint(g.user.id, endpoint_id))


@bp.route("/webhooks/<endpoint_id>/rotate-secret", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(200, WebhookSecretSchema)
@error_answers(401, 404)
@login_required
def rotate_webhook_secret(endpoint_id: str) -> dict[str, Any]:
    """Give the endpoint a new secret, shown once; the old one signs beside it for 24 hours."""
    return endpoint_json(webhooks.rotate_secret(webhooks.own_endpoint(g.user.id, endpoint_id)), secret=True)


@bp.route("/webhooks/<endpoint_id>/enable", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(200, WebhookEndpointSchema)
@error_answers(401, 404)
@login_required
def enable_webhook(endpoint_id: str) -> dict[str, Any]:
    """Turn a disabled endpoint back on: new events reach it again."""
    return endpoint_json(webhooks.enable(webhooks.own_endpoint(g.user.id, endpoint_id)))


@bp.route("/webhooks/<endpoint_id>/deliveries", methods=["GET"])
@bp.doc(security=BEARER)
@bp.arguments(ListArgsSchema, location="query")
@bp.response(200, WebhookDeliveryPageSchema)
@error_answers(400, 401, 404)
@login_required
def list_deliveries(args: dict[str, Any], endpoint_id: str) -> dict[str, Any]:
    """List the endpoint's deliveries, newest first, each with its attempts and the next one's time."""
    endpoint = webhooks.own_endpoint(g.user.id, endpoint_id)
    page, per_page = args["page"], args["per_page"]
    items, total = webhooks.deliveries(endpoint, per_page, (page - 1) * per_page)
    return {
        "items": [delivery_json(d) for d in items],
        "page": page,
        "per_page": per_page,
        "total": total,
        "pages": -(-total // per_page),
    }


@bp.route("/webhooks/<endpoint_id>/deliveries/<delivery_id>/redeliver", methods=["POST"])
@bp.doc(security=BEARER)
@bp.response(202, WebhookDeliverySchema)
@error_answers(401, 404, 409)
@login_required
def redeliver(endpoint_id: str, delivery_id: str) -> dict[str, Any]:
    """Send a delivery again now, with the same event id and body (sent once this answer is committed)."""
    endpoint = webhooks.own_endpoint(g.user.id, endpoint_id)
    return delivery_json(webhooks.redeliver(webhooks.own_delivery(endpoint, delivery_id)))
