"""S3 only: object keys, multipart upload and download, deletion and presigned URLs."""

from __future__ import annotations

import os
import posixpath
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from flask import Flask, current_app
from werkzeug.utils import secure_filename

from app.extensions import get_settings
from config import Settings

# Files above 16 MiB go up in 16 MiB parts, four at a time: memory stays bounded.
MAX_KEY_NAME = 100  # S3 keys are at most 1024 bytes
TRANSFER = TransferConfig(multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2, max_concurrency=4)


def original_key(video_id: str, filename: str | None, container: str) -> str:
    """Return the key of an upload's original file."""
    name = secure_filename(filename or "")[-MAX_KEY_NAME:].lstrip("._") or f"original.{container}"
    return f"originals/{video_id}/{name}"


def processed_video_key(video_id: str) -> str:
    """Return the deterministic key of the processed video (a rerun overwrites it)."""
    return f"processed/{video_id}/video.mp4"


def poster_key(video_id: str) -> str:
    """Return the deterministic key of the poster image."""
    return f"processed/{video_id}/poster.jpg"


def video_prefixes(video_id: str) -> list[str]:
    """Return every key prefix that holds objects of one video."""
    return [f"originals/{video_id}/", posixpath.dirname(processed_video_key(video_id)) + "/"]


def aws_client(service: str, s: Settings, **config: Any) -> Any:
    """Return a boto3 client for ``service`` using the endpoint and credentials in settings."""
    endpoint = {"s3": s.S3_ENDPOINT_URL, "sqs": s.SQS_ENDPOINT_URL}.get(service) or s.AWS_ENDPOINT_URL
    options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 5}
    if service == "s3" and endpoint:
        options["s3"] = {"addressing_style": "path"}  # the local endpoint has no per-bucket hostnames
    options.update(config)
    return boto3.session.Session().client(
        service,
        region_name=s.AWS_REGION,
        endpoint_url=endpoint,
        aws_access_key_id=s.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=s.AWS_SECRET_ACCESS_KEY,
        config=Config(signature_version="s3v4" if service == "s3" else None, **options),
    )


class Storage:
    """The bucket that holds originals and processed outputs."""

    def __init__(self, client: Any, bucket: str, url_expires: int = 3600) -> None:
        self.client, self.bucket, self.url_expires = client, bucket, url_expires

    def upload_file(self, path: str | os.PathLike[str], key: str, content_type: str) -> None:
        """Upload a local file, in parts when large."""
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download an object to a local file."""
        self.client.download_file(self.bucket, key, str(path), Config=TRANSFER)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many."""
        deleted = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted

    def keys(self, prefix: str) -> list[str]:
        """Return the keys under ``prefix``."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def url(self, key: str | None) -> str | None:
        """Return a presigned GET URL for ``key``, or None."""
        if not key:
            return None
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_expires
        )

    def ping(self) -> None:
        """Raise unless the bucket is reachable."""
        self.client.head_bucket(Bucket=self.bucket)


def get_storage() -> Storage:
    """Return this process's ``Storage``; made after fork, as boto3 clients must not cross one."""
    cache = current_app.extensions["storage"]
    pid = os.getpid()
    if pid not in cache:
        cache.clear()
        s = get_settings()
        cache[pid] = Storage(aws_client("s3", s), s.S3_BUCKET, s.PRESIGNED_URL_EXPIRES)
    return cache[pid]


def init_app(app: Flask) -> None:
    """Make room for the per-process ``Storage``."""
    app.extensions["storage"] = {}
