"""S3Store: any S3-compatible object store through boto3 (AWS, MinIO, SeaweedFS, R2, Ceph).

- One boto3 client per process (and per endpoint/identity), created with adaptive retries so
  SlowDown/503 throttling is absorbed, and a connection pool sized for concurrent part uploads.
- Files go through the TransferManager (`upload_file` + `TransferConfig`): multipart above the
  threshold, and a multipart upload that never completes leaves no visible object.
- Credentials come only from boto3's standard chain (environment, profile, SSO, instance role). No
  credential is accepted as an option, stored, logged or put into an error message.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO, Literal

from pipeline.storage.base import Progress, content_type_for
from pipeline.storage.layout import validate_key, validate_prefix
from pipeline.storage.objects import (
    LocalFile,
    ObjectInfo,
    ObjectNotFound,
    ShardIntegrityError,
    StorageError,
)
from pipeline.storage.s3_config import MIB, S3Config, s3_client
from pipeline.storage.store import Store

log = logging.getLogger(__name__)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "ExpiredToken",
    "InvalidToken",
    "403",
    "AuthorizationHeaderMalformed",
}
_AUTH_HINT = (
    "; check the credentials in the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE, instance role) and the bucket permissions"
)
_CHUNK = 8 * MIB


# --- the store ----------------------------------------------------------------------------------------


class _RangeReader(io.RawIOBase):
    """A seekable reader over ranged GETs, so pyarrow can read a Parquet footer without the whole file."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int) -> None:
        self._fetch, self._size, self._position = fetch, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer) -> int:
        length = min(len(buffer), self._size - self._position)
        if length <= 0:
            return 0
        data = self._fetch(self._position, length)
        buffer[: len(data)] = data
        self._position += len(data)
        return len(data)


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", config: S3Config | None = None) -> None:
        if not _BUCKET.fullmatch(bucket):
            raise ValueError(f"invalid S3 bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket, self.prefix = bucket, prefix
        self.config = config or S3Config()
        self.uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        self._client = s3_client(self.config)
        self.endpoint_url: str = self._client.meta.endpoint_url  # after boto3's own resolution
        self.region: str | None = self._client.meta.region_name
        self._transfer = self.config.transfer_config()

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r})"

    def _full(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    @contextmanager
    def _errors(self, operation: str, key: str) -> Iterator[None]:
        """Turn boto errors into StorageError naming the operation and object (never a credential)."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = f"{operation} {self.url(key)}"
        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            message = error.response.get("Error", {}).get("Message") or code
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"{where}: not found") from None
            hint = _AUTH_HINT if code in _AUTH_CODES or status == 403 else ""
            raise StorageError(f"S3 {where} failed: {code} (HTTP {status}): {message}{hint}") from None
        except S3UploadFailedError as error:  # the TransferManager's wrapper around a ClientError
            hint = _AUTH_HINT if any(code in str(error) for code in _AUTH_CODES) else ""
            raise StorageError(f"S3 {where} failed: {error}{hint}") from None
        except NoCredentialsError:
            raise StorageError(
                f"S3 {where} failed: no AWS credentials found in the standard chain "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance role)"
            ) from None
        except (EndpointConnectionError, ConnectTimeoutError):
            raise StorageError(
                f"S3 {where} failed: cannot reach the endpoint {self._client.meta.endpoint_url}; set the "
                "output's endpoint with --endpoint-url, the run config's storage.endpoint_url (--config) "
                "or AWS_ENDPOINT_URL"
            ) from None
        except BotoCoreError as error:
            raise StorageError(f"S3 {where} failed: {error}") from None

    def _verify(self, key: str, size: int, sha256: str) -> ObjectInfo:
        info = self.head(key)
        if info is None or info.size != size or info.sha256 != sha256:
            found = "nothing" if info is None else f"{info.size} bytes, sha256 {info.sha256}"
            raise ShardIntegrityError(
                f"{self.url(key)}: expected {size} bytes with sha256 {sha256}, found {found}"
            )
        if self.config.verify == "read":
            digest = hashlib.sha256()
            with self._errors("read back", key):
                body = self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                raise ShardIntegrityError(f"{self.url(key)}: content sha256 {digest.hexdigest()} != {sha256}")
        return info

    # --- plain object operations -----------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors("put", key):
            self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type_for(key)
            )

    def put_file(
        self, key: str, path: str | Path, *, sha256: str | None = None, progress: Progress | None = None
    ) -> ObjectInfo:
        size = os.path.getsize(path)
        sha256 = sha256 or LocalFile.from_path(path).sha256
        extra = {"Metadata": {"sha256": sha256}, "ContentType": content_type_for(key)}
        with self._errors("upload", key):
            self._client.upload_file(
                str(path),
                self.bucket,
                self._full(key),
                ExtraArgs=extra,
                Config=self._transfer,
                Callback=progress,
            )
        return self._verify(key, size, sha256)

    def get_bytes(self, key: str) -> bytes:
        with self._errors("get", key):
            return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def get_file(self, key: str, path: str | Path, *, progress: Progress | None = None) -> None:
        """Download an object to `path` through the TransferManager (parallel ranged GETs above the
        multipart threshold). The caller verifies the bytes and moves the file into place."""
        with self._errors("download", key):
            self._client.download_file(
                self.bucket, self._full(key), str(path), Config=self._transfer, Callback=progress
            )

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        with self._errors("get", key):
            response = self._client.get_object(
                Bucket=self.bucket, Key=self._full(key), Range=f"bytes={start}-{start + length - 1}"
            )
            return response["Body"].read()

    def open(self, key: str) -> BinaryIO:
        info = self.head(key)
        if info is None:
            raise ObjectNotFound(f"open {self.url(key)}: not found")
        reader = _RangeReader(lambda start, length: self._get_range(key, start, length), info.size)
        return io.BufferedReader(reader, buffer_size=MIB)

    def head(self, key: str) -> ObjectInfo | None:
        try:
            with self._errors("head", key):
                response = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        except ObjectNotFound:
            return None
        return ObjectInfo(
            key,
            response["ContentLength"],
            response["LastModified"],
            response.get("Metadata", {}).get("sha256"),
            response.get("ETag", "").strip('"') or None,
        )

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        full_prefix = f"{self.prefix}/{prefix}" if self.prefix else prefix
        found = []
        with self._errors("list", prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for item in page.get("Contents", []):
                    key = self._relative(item["Key"])
                    etag = item.get("ETag", "").strip('"') or None
                    found.append(ObjectInfo(key, item["Size"], item["LastModified"], etag=etag))
        return sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> None:
        full_keys = [self._full(key) for key in keys]
        for start in range(0, len(full_keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = full_keys[start : start + 1000]
            with self._errors("delete", self._relative(batch[0])):
                response = self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
                )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"S3 delete of {len(errors)} objects failed; "
                    f"first s3://{self.bucket}/{first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )

    # --- primitives of the commit protocol -------------------------------------------------------

    def create_if_absent(self, key: str, data: bytes) -> bool:
        if not self.config.conditional_writes and self.head(key) is not None:
            return False
        for retry in range(6):
            outcome = self._put_marker(key, data)
            if outcome == "exists":
                return False  # another attempt created it first (412)
            if outcome == "created":
                break
            time.sleep(0.05 * 2**retry)  # 409: a concurrent conditional write is in progress; retry
        else:
            raise StorageError(
                f"S3 create {self.url(key)} failed: conditional write conflicts did not settle"
            )
        # Read back: the object must hold our bytes. This closes most of the fallback's race and catches
        # a server that silently ignores If-None-Match.
        won = self.get_bytes(key) == data
        if not won and self.config.conditional_writes:
            log.warning("%s changed after our conditional create: does the server honour If-None-Match?", key)
        return won

    def _put_marker(self, key: str, data: bytes) -> Literal["created", "exists", "conflict"]:
        from botocore.exceptions import ClientError

        condition = {"IfNoneMatch": "*"} if self.config.conditional_writes else {}
        with self._errors("create", key):
            try:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._full(key),
                    Body=data,
                    ContentType=content_type_for(key),
                    **condition,
                )
                return "created"
            except ClientError as error:
                code = str(error.response.get("Error", {}).get("Code", ""))
                status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (412, 304) or code in ("PreconditionFailed", "NotModified"):
                    return "exists"
                if status == 409 or code == "ConditionalRequestConflict":
                    return "conflict"
                raise

    def publish(self, source: str, destination: str, size: int, sha256: str) -> None:
        extra = {
            "Metadata": {"sha256": sha256},
            "MetadataDirective": "REPLACE",
            "ContentType": content_type_for(destination),
        }
        with self._errors("copy from", source):
            self._client.copy(
                {"Bucket": self.bucket, "Key": self._full(source)},
                self.bucket,
                self._full(destination),
                ExtraArgs=extra,
                Config=self._transfer,
            )
        self._verify(destination, size, sha256)

    def abort_stale_multipart_uploads(self, older_than: timedelta = timedelta(hours=1)) -> int:
        cutoff = datetime.now(timezone.utc) - older_than
        aborted = 0
        with self._errors("list multipart uploads under", self.prefix or "(root)"):
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else ""
            ):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] <= cutoff:
                        aborted += self._abort_upload(upload["Key"], upload["UploadId"])
        return aborted

    def _abort_upload(self, full_key: str, upload_id: str) -> int:
        """1 if this call aborted the upload, 0 if it was already gone (completed, or aborted by a
        concurrent sweep): one vanished upload must not stop the sweep."""
        from botocore.exceptions import ClientError

        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return 0
            raise
        return 1
