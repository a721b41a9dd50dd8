"""Object storage through boto3. The endpoint and credentials come from the standard AWS variables
(`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), so the same code
reads AWS S3, MinIO or SeaweedFS."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from labelsieve.errors import LabelsieveError

# Transient errors (throttling, 5xx, dropped connections) are retried with backoff by botocore.
RETRY_CONFIG = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)


class StorageError(LabelsieveError):
    """Object storage cannot be used: unreachable endpoint, bad credentials, missing bucket or key."""


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/prefix`` into (bucket, key). Raises ValueError if it is not one."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key


def make_client() -> Any:
    """An S3 client configured from the environment, with retries."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", region_name=region, config=RETRY_CONFIG)


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
    """The bytes of one object. Raises StorageError with the URI on failure."""
    try:
        return client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except (ClientError, BotoCoreError) as err:
        raise StorageError(_explain(err, f"s3://{bucket}/{key}")) from err


def _explain(err: Exception, uri: str) -> str:
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "the default AWS endpoint")
    if isinstance(err, EndpointConnectionError):
        return f"cannot reach object storage at {endpoint} for {uri}: {err}"
    if isinstance(err, NoCredentialsError):
        return f"no S3 credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return f"object storage at {endpoint} refused the credentials for {uri} ({code})"
        if code in ("NoSuchBucket", "NoSuchKey", "404"):
            return f"{uri} does not exist at {endpoint} ({code})"
    return f"object storage error for {uri} at {endpoint}: {err}"
