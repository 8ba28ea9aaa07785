"""Uploaded build contexts (issue 20): a private, content-addressed S3 bucket.

``POST /contexts {"sha256": hex, "size": bytes}`` answers either "already uploaded" (the
object is there: HEAD) or a presigned S3 POST whose policy pins the key (the digest), the
exact size (``content-length-range``) and the SHA-256 checksum S3 checks on upload
(``x-amz-checksum-sha256``), valid for a few minutes. A build names the context by digest;
its instance gets a presigned GET URL in its user-data and holds no S3 permission at all,
and checks the digest again after the download (the host script). The bucket expires
objects after ``CONTEXT_EXPIRY_DAYS`` (the template's lifecycle rule); a context used
again after that is uploaded again.
"""

from __future__ import annotations

import base64
import re

from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field

from chalicelib.errors import BadRequest, PayloadTooLarge

HEX = re.compile(r"^[0-9a-f]{64}$")
KEY_PREFIX = "sha256/"


class ContextRequest(BaseModel):
    """Body of ``POST /contexts``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the tarball (tar or tar.gz)")
    size: int = Field(ge=1, description="the tarball's size in bytes")


class ContextUpload(BaseModel):
    context: str = Field(description="sha256:<hex>: what a build's source.context names")
    uploaded: bool = Field(description="true: the context is there already, nothing to upload")
    upload: dict | None = Field(None, description="the presigned S3 POST: POST `fields` + the file to `url`")
    expires_in: int | None = Field(None, description="seconds the upload target stays valid")
    max_size: int


def _size(s3, bucket: str, digest: str) -> int | None:
    """The stored size of a context, None when it is not there (never uploaded, or expired)."""
    if not bucket:
        raise BadRequest("uploaded contexts are not configured in this deployment (no CONTEXTS_BUCKET)")
    try:
        head = s3.head_object(Bucket=bucket, Key=key_of(digest))
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return int(head["ContentLength"])


def key_of(digest: str) -> str:
    return KEY_PREFIX + digest.removeprefix("sha256:")


class _Bucket:
    def __init__(self, s3, bucket: str, *, max_bytes: int, upload_seconds: int = 300, expiry_days: int = 7) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.upload_seconds = upload_seconds
        self.expiry_days = expiry_days

    def require(self, digest: str) -> int:
        """The size of an uploaded context; an unknown (or expired) one is a 400."""
        size = _size(self.s3, self.bucket, digest)
        if size is None:
            raise BadRequest(f"source.context: no context {digest} was uploaded (or it expired after "
                             f"{self.expiry_days} days): upload it through POST /contexts first",
                             field="source.context")
        return size


class Contexts(_Bucket):
    """The API's side of the contexts bucket: upload targets, and checking a build's
    context is there. Takes a boto3 S3 client (SigV4)."""

    def request_upload(self, req: ContextRequest) -> ContextUpload:
        digest = "sha256:" + req.sha256
        if req.size > self.max_bytes:
            raise PayloadTooLarge(f"size: a context is at most {self.max_bytes} bytes; this one is {req.size} "
                                  "(leave large files out with .dockerignore)")
        if _size(self.s3, self.bucket, digest) is not None:
            return ContextUpload(context=digest, uploaded=True, max_size=self.max_bytes)
        checksum = base64.b64encode(bytes.fromhex(req.sha256)).decode()
        post = self.s3.generate_presigned_post(
            Bucket=self.bucket, Key=key_of(digest),
            Fields={"x-amz-checksum-sha256": checksum},
            Conditions=[["content-length-range", req.size, req.size], {"x-amz-checksum-sha256": checksum}],
            ExpiresIn=self.upload_seconds,
        )
        return ContextUpload(context=digest, uploaded=False, upload=post, expires_in=self.upload_seconds,
                             max_size=self.max_bytes)


class ContextLinks(_Bucket):
    """The launcher's side: a presigned GET for the build instance (which has no S3
    permission of its own). Takes a boto3 S3 client (SigV4)."""

    def download_url(self, digest: str, expires_seconds: int) -> str:
        """Valid for the build's whole attempt (at most SigV4's 7 days; with a Lambda role's
        temporary credentials, at most as long as those)."""
        return self.object_url(key_of(digest), expires_seconds)

    def object_url(self, key: str, expires_seconds: int) -> str:
        """A presigned GET of any object of the bucket (a catalog context, issue 19): signing
        is local, no AWS call."""
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key},
                                              ExpiresIn=max(60, min(expires_seconds, 7 * 24 * 3600)))
