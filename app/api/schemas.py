"""Request and answer schemas: they validate what comes in and generate the OpenAPI document."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask_smorest.fields import Upload
from marshmallow import validate
from werkzeug.datastructures import FileStorage

from domain import optimize
from domain.models import Status
from domain.webhooks import EVENTS

MAX_EMAIL = 254  # RFC 5321's longest address
MIN_PASSWORD, MAX_PASSWORD = 12, 128
MAX_TITLE = 200
MAX_PER_PAGE, MAX_PAGE = 100, 100_000


def Text(**kwargs: Any) -> ma.fields.String:
    """A string field that refuses NUL characters (PostgreSQL can't store them; no real input has them)."""
    checks = [validate.Regexp(r"^[^\x00]*$", error="Must not contain NUL characters.")]
    extra = kwargs.pop("validate", None)
    if extra is not None:
        checks.append(extra)
    return ma.fields.String(validate=checks, **kwargs)


class Strict(ma.Schema):
    """A request schema: unknown fields are an error."""

    class Meta:
        unknown = ma.RAISE


class SignupSchema(Strict):
    email = Text(required=True, validate=validate.Length(1, MAX_EMAIL))
    password = Text(
        required=True,
        validate=validate.Length(1, MAX_PASSWORD),
        metadata={"description": f"{MIN_PASSWORD} to {MAX_PASSWORD} characters, not easy to guess (zxcvbn score 3+)"},
    )
    password_confirm = Text(required=True, validate=validate.Length(max=MAX_PASSWORD))
    first_name = Text(allow_none=True, validate=validate.Length(max=100))
    last_name = Text(allow_none=True, validate=validate.Length(max=100))
    city = Text(allow_none=True, validate=validate.Length(max=100))
    country = Text(allow_none=True, validate=validate.Length(max=100))


class LoginSchema(Strict):
    email = Text(required=True, validate=validate.Length(max=MAX_EMAIL))
    password = Text(required=True, validate=validate.Length(max=MAX_PASSWORD))


class File(Upload):
    """A multipart file part (a text field of the same name is not a file)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> FileStorage:
        if not isinstance(value, FileStorage):
            raise ma.ValidationError("Must be a file part, with a file name.")
        return value


class UploadSchema(Strict):
    title = Text(required=True, validate=validate.Length(1, MAX_TITLE))
    video_file = File(required=True, metadata={"description": "The clip: mp4 or mov by content, not by name"})


class ListArgsSchema(ma.Schema):
    class Meta:
        unknown = ma.EXCLUDE

    page = ma.fields.Integer(load_default=1, validate=validate.Range(1, MAX_PAGE))
    per_page = ma.fields.Integer(load_default=20, validate=validate.Range(1, MAX_PER_PAGE))


class ErrorBodySchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={"description": "Stable, machine-readable: `rate_limited`, …"})
    message = ma.fields.String(required=True, metadata={"description": "For people; never a path or FFmpeg's output"})
    fields = ma.fields.Dict(metadata={"description": "Per-field problems of an `invalid_request`"})  # type: ignore[assignment]  # the answer's key


class ErrorSchema(ma.Schema):
    """Every error: ``{"error": {"code", "message"}}``, sometimes with more top-level fields."""

    error = ma.fields.Nested(ErrorBodySchema, required=True)


class AccountSchema(ma.Schema):
    id = ma.fields.Integer(required=True)
    email = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class TokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "seconds"})


class VideoErrorSchema(ma.Schema):
    code = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class RenditionSchema(ma.Schema):
    codec = ma.fields.String(required=True, metadata={"description": "`libx264` or `libsvtav1`"})
    preset = ma.fields.String(required=True)
    crf = ma.fields.Integer(required=True, metadata={"description": "the highest whose SSIM ≥ target_ssim"})
    ssim = ma.fields.Float(required=True, metadata={"description": "on the probe window of this clip"})
    target_ssim = ma.fields.Float(required=True, metadata={"description": "the fast rendition's, on the same window"})
    probes = ma.fields.Integer(required=True)
    bytes = ma.fields.Integer(required=True)
    probe_cpu_seconds = ma.fields.Float(required=True, metadata={"description": "its CRF probes"})
    cpu_seconds = ma.fields.Float(required=True, metadata={"description": "its encode"})
    published = ma.fields.Boolean(
        required=True,
        metadata={
            "description": "whether it serves the video: false when its SSIM missed target_ssim by more than "
            "0.002 (then it was not encoded: bytes 0) or it was not smaller than the published file"
        },
    )


class OptimizationSchema(ma.Schema):
    """The optimize stage: smaller renditions at the published one's quality, made after it is published."""

    status = ma.fields.String(required=True, validate=validate.OneOf(optimize.STATUSES))
    progress = ma.fields.Integer(required=True, validate=validate.Range(0, 100))
    optimized_at = ma.fields.String(required=True, allow_none=True)
    error = ma.fields.String(required=True, allow_none=True)
    renditions = ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Nested(RenditionSchema),
        required=True,
        metadata={"description": "`h264` and, with OPTIMIZE=h264+av1, `av1`: once optimized"},
    )
    cpu_seconds = ma.fields.Float(
        required=True,
        allow_none=True,
        metadata={"description": "the whole stage's, once optimized: the probes' window, every probe and encode"},
    )


class VideoFieldsSchema(ma.Schema):
    """What every view of a video shows (``domain.webhooks.video_fields``)."""

    id = ma.fields.String(required=True)
    title = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf([s.value for s in Status]))
    progress = ma.fields.Integer(required=True, validate=validate.Range(0, 100))
    task_id = ma.fields.String(required=True)
    created_at = ma.fields.String(required=True, allow_none=True)
    processed_at = ma.fields.String(required=True, allow_none=True)
    error = ma.fields.Nested(VideoErrorSchema, required=True, allow_none=True)
    optimization = ma.fields.Nested(
        OptimizationSchema,
        required=True,
        allow_none=True,
        metadata={"description": "null unless the video is published with OPTIMIZE on"},
    )


class VideoSchema(VideoFieldsSchema):
    original_url = ma.fields.String(required=True, allow_none=True)
    processed_url = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "H.264: the fast rendition, then the smaller one once optimized"},
    )
    av1_url = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "AV1, once optimized with OPTIMIZE=h264+av1: offer it first, "
            '`<video><source src="{av1_url}" type="video/mp4; codecs=av01.0.08M.08">'
            '<source src="{processed_url}" type="video/mp4"></video>`'
        },
    )
    poster_url = ma.fields.String(required=True, allow_none=True)
    queue_position = ma.fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "approximate place in the queue while waiting (1 = next)"},
    )
    seconds_left = ma.fields.Float(
        required=True, allow_none=True, metadata={"description": "estimated processing time left while processing"}
    )
    upload_id = ma.fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "while uploading: its direct upload (GET /api/uploads/{id})"},
    )


class PageSchema(ma.Schema):
    page = ma.fields.Integer(required=True)
    per_page = ma.fields.Integer(required=True)
    total = ma.fields.Integer(required=True)
    pages = ma.fields.Integer(required=True)


class VideoPageSchema(PageSchema):
    items = ma.fields.List(ma.fields.Nested(VideoSchema), required=True)


class UploadAcceptedSchema(ma.Schema):
    task_id = ma.fields.String(required=True)
    video_id = ma.fields.String(required=True)
    status = ma.fields.String(required=True)
    message = ma.fields.String(required=True)


class HealthSchema(ma.Schema):
    status = ma.fields.String(required=True)


class ReadySchema(ma.Schema):
    status = ma.fields.String(required=True)
    checks = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), required=True)


class UploadStartSchema(Strict):
    title = Text(required=True, validate=validate.Length(1, MAX_TITLE))
    filename = Text(required=True, validate=validate.Length(1, 1024), metadata={"example": "match.mp4"})
    size = ma.fields.Integer(
        required=True, strict=True, validate=validate.Range(0, 2**62), metadata={"description": "bytes"}
    )
    content_type = Text(required=True, validate=validate.Length(max=255), metadata={"example": "video/mp4"})


class PartUrlSchema(ma.Schema):
    part_number = ma.fields.Integer(required=True)
    size = ma.fields.Integer(required=True, metadata={"description": "bytes: exactly these, S3 refuses others"})
    url = ma.fields.String(
        required=True, metadata={"description": "presigned, Content-Length signed: PUT exactly `size` bytes here"}
    )


class SentPartSchema(ma.Schema):
    part_number = ma.fields.Integer(required=True)
    size = ma.fields.Integer(required=True)
    etag = ma.fields.String(required=True)


class DirectUploadSchema(ma.Schema):
    upload_id = ma.fields.String(required=True)
    video_id = ma.fields.String(required=True)
    size = ma.fields.Integer(required=True)
    part_size = ma.fields.Integer(required=True, metadata={"description": "bytes per part; the last one is shorter"})
    parts = ma.fields.List(ma.fields.Nested(PartUrlSchema), required=True, metadata={"description": "parts to send"})
    parts_done = ma.fields.List(ma.fields.Nested(SentPartSchema), required=True)
    expires_at = ma.fields.String(required=True, metadata={"description": "when an unfinished upload is dropped"})


class PartSchema(Strict):
    part_number = ma.fields.Integer(required=True, strict=True, validate=validate.Range(1, 10_000))
    etag = Text(
        required=True, validate=validate.Length(1, 128), metadata={"description": "the ETag S3 answered the PUT with"}
    )


class PartsSchema(Strict):
    parts = ma.fields.List(ma.fields.Nested(PartSchema), required=True, validate=validate.Length(1, 10_000))


class WebhookCreateSchema(Strict):
    url = Text(
        required=True,
        validate=validate.Length(1, 2048),
        metadata={"description": "https:// only in production; it must resolve to public addresses only"},
    )
    events = ma.fields.List(
        ma.fields.String(validate=validate.OneOf(EVENTS)),
        validate=validate.Length(1, len(EVENTS)),
        metadata={"description": f"default: all ({', '.join(EVENTS)})"},
    )


class WebhookEndpointSchema(ma.Schema):
    id = ma.fields.String(required=True)
    url = ma.fields.String(required=True)
    events = ma.fields.List(ma.fields.String(), required=True)
    created_at = ma.fields.String(required=True)
    disabled_at = ma.fields.String(required=True, allow_none=True)
    disabled_reason = ma.fields.String(
        required=True, allow_none=True, metadata={"description": "why deliveries stopped (failed in a row)"}
    )
    previous_secret_expires_at = ma.fields.String(
        required=True, allow_none=True, metadata={"description": "after a rotation: the old secret signs until then"}
    )


class WebhookSecretSchema(WebhookEndpointSchema):
    secret = ma.fields.String(
        required=True, metadata={"description": "signs every delivery (Videoproc-Signature); shown only now"}
    )


class WebhookListSchema(ma.Schema):
    items = ma.fields.List(ma.fields.Nested(WebhookEndpointSchema), required=True)


class WebhookAttemptSchema(ma.Schema):
    started_at = ma.fields.String(required=True)
    status_code = ma.fields.Integer(required=True, allow_none=True, metadata={"description": "the receiver's answer"})
    duration_ms = ma.fields.Integer(required=True, allow_none=True)
    error = ma.fields.String(required=True, allow_none=True)


class WebhookDeliverySchema(ma.Schema):
    id = ma.fields.String(required=True)
    event_id = ma.fields.String(
        required=True, metadata={"description": "the same on every attempt: de-duplicate by it"}
    )
    event_type = ma.fields.String(required=True, validate=validate.OneOf(EVENTS))
    video_id = ma.fields.String(required=True)
    status = ma.fields.String(required=True, validate=validate.OneOf(["pending", "succeeded", "failed"]))
    created_at = ma.fields.String(required=True)
    finished_at = ma.fields.String(required=True, allow_none=True)
    next_attempt_at = ma.fields.String(required=True, allow_none=True, metadata={"description": "while pending"})
    attempts = ma.fields.List(ma.fields.Nested(WebhookAttemptSchema), required=True)


class WebhookDeliveryPageSchema(PageSchema):
    items = ma.fields.List(ma.fields.Nested(WebhookDeliverySchema), required=True)


class EventVideoSchema(VideoFieldsSchema):
    status = ma.fields.String(required=True, validate=validate.OneOf(["processed", "failed", "cancelled"]))


class EventDataSchema(ma.Schema):
    video = ma.fields.Nested(
        EventVideoSchema,
        required=True,
        metadata={"description": "as GET /api/videos/{id} shows it when the event happened, without its URLs"},
    )


class WebhookEventSchema(ma.Schema):
    """The body POSTed to an endpoint, signed in ``Videoproc-Signature``."""

    id = ma.fields.String(required=True, metadata={"description": "the event's id, the same on every retry"})
    type = ma.fields.String(required=True, validate=validate.OneOf(EVENTS))
    created_at = ma.fields.String(required=True)
    data = ma.fields.Nested(EventDataSchema, required=True)
