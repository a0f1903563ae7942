"""S3 only: object keys, multipart upload and download, deletion and presigned URLs."""

from __future__ import annotations

import os
import posixpath
import threading
import time
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError
from flask import Flask, current_app
from werkzeug.utils import secure_filename

from config import Settings
from domain import timing
from domain.extensions import get_settings

# Files above 16 MiB go up in 16 MiB parts, four at a time: memory stays bounded.
MAX_KEY_NAME = 100  # S3 keys are at most 1024 bytes
MAX_CACHED_URLS = 10_000  # presigned URLs kept per process for reuse
ORIGINALS, QUARANTINE = "originals/", "quarantine/"
TRANSFER = TransferConfig(multipart_threshold=16 * 1024**2, multipart_chunksize=16 * 1024**2, max_concurrency=4)


def original_key(video_id: str, filename: str | None, container: str) -> str:
    """Return the key of an upload's original file."""
    name = secure_filename(filename or "")[-MAX_KEY_NAME:].lstrip("._") or f"original.{container}"
    return f"{ORIGINALS}{video_id}/{name}"


def quarantine_key(key: str) -> str:
    """Return where an original the checks refused is kept until the bucket's lifecycle rule expires it."""
    return QUARANTINE + key.removeprefix(ORIGINALS)


def processed_video_key(video_id: str) -> str:
    """Return the deterministic key of the processed video (a rerun overwrites it)."""
    return f"processed/{video_id}/video.mp4"


def rendition_key(video_id: str, codec: str, attempt: str) -> str:
    """Return the key of one optimize attempt's rendition: its own, so a losing attempt removes only its files."""
    return f"processed/{video_id}/{codec}-{attempt.replace(':', '-')}.mp4"


def poster_key(video_id: str) -> str:
    """Return the deterministic key of the poster image."""
    return f"processed/{video_id}/poster.jpg"


def video_prefixes(video_id: str) -> list[str]:
    """Return every key prefix that holds objects of one video."""
    processed = posixpath.dirname(processed_video_key(video_id)) + "/"
    return [f"{ORIGINALS}{video_id}/", f"{QUARANTINE}{video_id}/", processed]


def aws_client(service: str, s: Settings, **config: Any) -> Any:
    """Return a boto3 client for ``service`` using the endpoint and credentials in settings."""
    endpoint = {"s3": s.S3_ENDPOINT_URL, "sqs": s.SQS_ENDPOINT_URL}.get(service) or s.AWS_ENDPOINT_URL
    options: dict[str, Any] = {"retries": {"mode": "standard", "max_attempts": 3}, "connect_timeout": 5}
    if service == "s3" and endpoint:
        options["s3"] = {"addressing_style": "path"}  # the local endpoint has no per-bucket hostnames
    options.update(config)
    client = boto3.session.Session().client(
        service,
        region_name=s.AWS_REGION,
        endpoint_url=endpoint,
        aws_access_key_id=s.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=s.AWS_SECRET_ACCESS_KEY,
        config=Config(signature_version="s3v4" if service == "s3" else None, **options),
    )
    return timing.watch(client, service)


class Storage:
    """The bucket that holds originals and processed outputs."""

    def __init__(self, client: Any, bucket: str, url_expires: int = 3600) -> None:
        self.client, self.bucket, self.url_expires = client, bucket, url_expires
        self._urls: dict[str, tuple[float, str]] = {}  # key: (reuse until, presigned GET URL)

    def upload_file(self, path: str | os.PathLike[str], key: str, content_type: str) -> None:
        """Upload a local file, in parts when large."""
        self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type}, Config=TRANSFER)

    def download_file(self, key: str, path: str | os.PathLike[str]) -> None:
        """Download an object to a local file."""
        self.client.download_file(self.bucket, key, str(path), Config=TRANSFER)

    def size(self, key: str) -> int:
        """Return the object's size in bytes (raises ``ClientError`` 404 when there is none)."""
        return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def read_range(self, key: str, first: int, last: int) -> Any:
        """Return the body (a stream to ``read`` and ``close``) of bytes ``first`` to ``last`` included."""
        return self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}")["Body"]

    def start_multipart(self, key: str, content_type: str) -> str:
        """Start a multipart upload of ``key``; return S3's upload id."""
        return str(
            self.client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)["UploadId"]
        )

    def part_url(self, key: str, upload_id: str, part_number: int, expires: int, length: int) -> str:
        """Return a presigned URL to PUT one part's bytes to: exactly ``length`` of them.

        botocore signs ``Content-Length`` when it is in the parameters (``X-Amz-SignedHeaders=
        content-length;host``): S3 refuses a part of any other size, so a URL can't store more
        than the upload declared.
        """
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": part_number}
        params["ContentLength"] = length
        return str(self.client.generate_presigned_url("upload_part", Params=params, ExpiresIn=expires))

    def list_parts(self, key: str, upload_id: str) -> list[dict[str, Any]]:
        """Return the parts S3 has of a multipart upload (``PartNumber``, ``Size``, ``ETag``)."""
        pages = self.client.get_paginator("list_parts").paginate(Bucket=self.bucket, Key=key, UploadId=upload_id)
        return [part for page in pages for part in page.get("Parts", [])]

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        """Join the parts, given as (number, ETag), into the object."""
        listed = [{"PartNumber": n, "ETag": etag} for n, etag in parts]
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed}
        )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        """Abort a multipart upload (S3 drops its parts); one already gone is no error."""
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise

    def exists(self, key: str) -> bool:
        """Return whether the object exists."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def head_bytes(self, key: str, count: int) -> tuple[bytes, int]:
        """Return the object's first ``count`` bytes and its whole size, from one ranged GET."""
        got = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{count - 1}")
        data: bytes = got["Body"].read()
        whole = got.get("ContentRange", "").rpartition("/")[2]  # "bytes 0-65535/12345678"
        return data, int(whole) if whole.isdigit() else len(data)

    def delete(self, key: str) -> None:
        """Delete one object (S3 answers the same whether it was there or not)."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; return how many."""
        deleted = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted

    def quarantine(self, video_id: str) -> str | None:
        """Move a refused video's original under ``quarantine/`` (copied, then deleted); return its new key.

        Never deleted in line: the bucket's lifecycle rule expires it (``QUARANTINE_DAYS``), and
        deleting the video deletes it.
        """
        moved = None
        for key in self.keys(f"{ORIGINALS}{video_id}/"):
            moved = quarantine_key(key)
            self.client.copy({"Bucket": self.bucket, "Key": key}, self.bucket, moved, Config=TRANSFER)
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return moved

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        """Return the objects under ``prefix`` as S3 lists them (``Key``, ``LastModified``, ``Size``, ...)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [obj for page in pages for obj in page.get("Contents", [])]

    def keys(self, prefix: str) -> list[str]:
        """Return the keys under ``prefix``."""
        return [obj["Key"] for obj in self.objects(prefix)]

    def multipart_uploads(self, prefix: str) -> list[dict[str, Any]]:
        """Return the multipart uploads in progress under ``prefix`` (``Key``, ``UploadId``, ``Initiated``)."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
        return [upload for page in pages for upload in page.get("Uploads", [])]

    def url(self, key: str | None) -> str | None:
        """Return a presigned GET URL for ``key``, or None.

        A URL is reused for the first half of its life: a client polling a video gets the same
        URLs (its browser caches the poster and the video), and the API signs once, not per poll.
        """
        if not key:
            return None
        now = time.monotonic()
        reuse_until, url = self._urls.get(key, (0.0, ""))
        if now < reuse_until:
            return url
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_expires
        )
        if len(self._urls) >= MAX_CACHED_URLS:
            self._urls.clear()
        self._urls[key] = (now + self.url_expires / 2, url)
        return str(url)

    def ping(self) -> None:
        """Raise unless the bucket is reachable."""
        self.client.head_bucket(Bucket=self.bucket)

    def warm(self) -> None:
        """Load what the client's first request would (endpoint rules, the signer) by signing one; no network."""
        self.client.generate_presigned_url("head_object", Params={"Bucket": self.bucket, "Key": "warm-up"})


_making = threading.Lock()


def _after_fork() -> None:
    global _making
    _making = threading.Lock()  # a parent's thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork)


def get_storage() -> Storage:
    """Return this process's ``Storage``; made after fork, as boto3 clients must not cross one.

    Made once: a thread that finds it missing makes it, and the others wait for that one
    (making a client costs about 60 ms of CPU, loading the service's model).
    """
    cache = current_app.extensions["storage"]
    pid = os.getpid()
    if pid not in cache:
        with _making:
            if pid not in cache:
                s = get_settings()
                storage = Storage(aws_client("s3", s), s.S3_BUCKET, s.PRESIGNED_URL_EXPIRES)
                cache.clear()
                cache[pid] = storage
    return cache[pid]


def init_app(app: Flask) -> None:
    """Make room for the per-process ``Storage``."""
    app.extensions["storage"] = {}
