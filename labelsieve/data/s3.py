"""Object storage through boto3. The endpoint and credentials come from the standard AWS variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), so the same code
reads AWS S3, MinIO or SeaweedFS.

Two kinds of failure: a missing key or bucket is one sample's problem (`ObjectMissing`); anything else
(unreachable or silent endpoint, refused credentials, throttling or 5xx still there after the retries) is
the store's, and stops whatever is reading (`StorageError`). Timeouts and retries are bounded so that an
endpoint that accepts connections but never answers fails within a minute; each retry is logged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from labelsieve.errors import LabelsieveError

# Transient errors (throttling, 5xx, dropped connections, timeouts) are retried with backoff by botocore.
# Worst case for a silent endpoint: 3 attempts x 15 s read timeout + at most 1 + 2 s of backoff = 48 s.
# The read timeout bounds each wait for bytes, not a whole download, so large objects still arrive.
RETRY_CONFIG = Config(
    retries={"total_max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15
)
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "404"})
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
THROTTLING_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"})

log = logging.getLogger(__name__)


class StorageError(LabelsieveError):
    """Object storage cannot be used: unreachable or silent endpoint, refused credentials, throttling."""


class ObjectMissing(StorageError):
    """One object (its key or its bucket) does not exist: a bad sample, not a broken store."""


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into (bucket, key). Raises ValueError if it is not one."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def make_client() -> Any:
    """An S3 client configured from the environment, with bounded timeouts and logged retries."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    client = boto3.client("s3", region_name=region, config=RETRY_CONFIG)
    client.meta.events.register("needs-retry.s3", _log_retry)
    return client


def _log_retry(
    attempts: int,
    operation: Any,
    request_dict: dict[str, Any],
    response: Any = None,
    caught_exception: Exception | None = None,
    **_: Any,
) -> None:
    """Log a failed attempt that botocore's standard retry mode retries (a botocore event handler)."""
    if caught_exception is not None:
        why = f"{type(caught_exception).__name__}: {caught_exception}"
    else:
        status = response[0].status_code if response else 0
        code = (response[1].get("Error", {}).get("Code", "") if response else "") or str(status)
        if status not in TRANSIENT_STATUS and code not in THROTTLING_CODES:
            return None  # a success or a final answer (403, 404): nothing is retried
        why = f"HTTP {status} {code}"
    limit = _attempts()
    then = "retrying" if attempts < limit else "giving up"
    url = request_dict.get("url", "")
    log.warning(
        "object storage: %s %s attempt %d of %d failed (%s); %s",
        operation.name,
        url,
        attempts,
        limit,
        why,
        then,
    )
    return None


def list_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    """Every key under `prefix`, in the store's (lexicographic) order.

    Raises:
        StorageError: the endpoint is unreachable, the credentials are refused or the bucket is missing.
    """
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]
    except (ClientError, BotoCoreError) as err:
        raise StorageError(_explain(err, f"s3://{bucket}/{prefix}")) from err


def list_prefixes(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    """The immediate sub-prefixes of `prefix` ("folders", each ending in "/").

    Raises:
        StorageError: as `list_keys`.
    """
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"]
    except (ClientError, BotoCoreError) as err:
        raise StorageError(_explain(err, f"s3://{bucket}/{prefix}")) from err


def read_object(client: Any, bucket: str, key: str) -> bytes:
    """The bytes of one object.

    Raises:
        ObjectMissing: the key or the bucket does not exist.
        StorageError: the store cannot be used (see the module docstring); the message names the URI.
    """
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as err:
        message = _explain(err, f"s3://{bucket}/{key}")
        if isinstance(err, ClientError) and _code(err) in MISSING_CODES:
            raise ObjectMissing(message) from err
        raise StorageError(message) from err


def write_object(client: Any, bucket: str, key: str, data: bytes) -> None:
    """Store `data` as one object (a single PUT: readers see the old object or the new one, never a part).

    Raises:
        StorageError: the store cannot be used or refuses the write; the message names the URI.
    """
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data)
    except (ClientError, BotoCoreError) as err:
        raise StorageError(_explain(err, f"s3://{bucket}/{key}")) from err


def upload_file(client: Any, path: str | os.PathLike[str], bucket: str, key: str) -> None:
    """Upload a local file as one object (multipart above boto3's threshold; visible only when complete).

    Raises:
        StorageError: as `write_object`.
    """
    try:
        client.upload_file(os.fspath(path), bucket, key)
    except (ClientError, BotoCoreError, S3UploadFailedError) as err:
        raise StorageError(_explain(err, f"s3://{bucket}/{key}")) from err


def download_file(client: Any, bucket: str, key: str, path: str | os.PathLike[str]) -> None:
    """Download one object to a local file (written to a temporary sibling, then renamed).

    Raises:
        ObjectMissing: the key or the bucket does not exist.
        StorageError: the store cannot be used; the message names the URI.
    """
    from labelsieve.atomic import atomic_path  # numpy: not needed just to list or read objects

    try:
        with atomic_path(path) as tmp:
            client.download_file(bucket, key, os.fspath(tmp))
    except (ClientError, BotoCoreError) as err:
        message = _explain(err, f"s3://{bucket}/{key}")
        if isinstance(err, ClientError) and _code(err) in MISSING_CODES:
            raise ObjectMissing(message) from err
        raise StorageError(message) from err


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    """Delete the objects `keys` (1,000 per request, S3's limit); keys already gone are not an error.

    Raises:
        StorageError: the store cannot be used or refuses a deletion; the message names the first key.
    """
    for start in range(0, len(keys), 1000):
        batch = keys[start : start + 1000]
        try:
            answer = client.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True}
            )
        except (ClientError, BotoCoreError) as err:
            raise StorageError(_explain(err, f"s3://{bucket}/{batch[0]}")) from err
        if failed := answer.get("Errors"):
            first = failed[0]
            raise StorageError(
                f"object storage refused to delete {len(failed)} object(s), first s3://{bucket}/"
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
            )


def _attempts() -> int:
    """Attempts per request under RETRY_CONFIG (botocore's default is 3)."""
    retries = RETRY_CONFIG.retries or {}
    if "total_max_attempts" in retries:
        return int(retries["total_max_attempts"])
    return int(retries.get("max_attempts", 2)) + 1


def _code(err: ClientError) -> str:
    return str(err.response.get("Error", {}).get("Code", ""))


def _explain(err: Exception, uri: str) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    tries = f"{_attempts()} attempt(s)"
    if isinstance(err, (ReadTimeoutError, ConnectTimeoutError)):
        read = isinstance(err, ReadTimeoutError)
        seconds = RETRY_CONFIG.read_timeout if read else RETRY_CONFIG.connect_timeout
        return f"object storage at {endpoint} did not answer within {seconds} s ({tries}) for {uri}"
    if isinstance(err, EndpointConnectionError):
        return f"cannot reach object storage at {endpoint} for {uri}: {err}"
    if isinstance(err, NoCredentialsError):
        return f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(err, ClientError):
        code = _code(err)
        if code in THROTTLING_CODES or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 503:
            return f"object storage at {endpoint} is throttling requests ({code}) for {uri} ({tries})"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return f"object storage at {endpoint} refused the credentials for {uri} ({code})"
        if code in MISSING_CODES:
            return f"{uri} does not exist at {endpoint} ({code})"
    return f"object storage error for {uri} at {endpoint}: {err}"
