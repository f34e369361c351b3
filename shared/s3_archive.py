"""Archive segments as S3 objects (``ARCHIVE_URL=s3://bucket/prefix``).

The client is boto3's: credentials, region and endpoint (``AWS_ENDPOINT_URL_S3``, for a local S3) come from
the usual AWS environment and roles. An S3 PUT is atomic, so a reader never sees half a segment, and the
archiver's are conditional (``If-None-Match: *``, S3 since 2024), so none replaces another; S3 is strongly
consistent for reads after writes and for listings.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from shared.archive import SegmentMissing, same_or_conflict
from shared.errors import ArchiveUnavailable


class S3Storage:
    def __init__(self, bucket: str, prefix: str = "", **client_options: Any) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self._options = client_options

    @cached_property
    def _s3(self) -> Any:
        """Made on first use: most requests never reach the archive, and a Lambda cold start should not pay
        for boto3's client (about 100 ms) before it needs one."""
        import boto3
        from botocore.config import Config

        # Retries with backoff inside the client ("standard" mode), then our error: a request has a deadline.
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=2, read_timeout=5)
        return boto3.client("s3", config=config, **self._options)

    def create(self, name: str, blob: bytes) -> None:
        # If-None-Match: * makes S3 refuse the write (412) when the key exists: a create-only write.
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=blob, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise ArchiveUnavailable.unreachable() from exc
            same_or_conflict(name, blob, self.get(name))
        except BotoCoreError as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def put(self, name: str, blob: bytes) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=blob)
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def get(self, name: str) -> bytes:
        try:
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + name)["Body"].read()
            return body
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise SegmentMissing(name) from None
            raise ArchiveUnavailable.unreachable() from exc
        except BotoCoreError as exc:
            raise ArchiveUnavailable.unreachable() from exc

    def names(self, folder: str) -> list[str]:
        start = f"{self.prefix}{folder}/"
        found: list[str] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start,
                                                                             Delimiter="/"):
                found += [item["Key"][len(start):] for item in page.get("Contents", ())]
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveUnavailable.unreachable() from exc
        return sorted(found)

    def delete(self, name: str) -> None:
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveUnavailable.unreachable() from exc
