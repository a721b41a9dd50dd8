"""A local folder or an s3:// prefix seen as a few file operations, for the stores a scheduled run keeps
between runs: the accumulated dataset (labelsieve/crawls.py) and the published models
(labelsieve/registry.py).

Names are relative, "/"-separated paths under the location. A local write is atomic (temporary sibling,
then rename: labelsieve/atomic.py); an S3 object is complete or absent, since a PUT or a multipart upload
becomes visible only once it has finished. Neither makes several objects appear together: callers write
their data first and the one object that names it (a ledger, a pointer) last.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelsieve.errors import LabelsieveError


class LocationError(LabelsieveError):
    """A location that is not a usable folder or s3:// prefix, or a name that would leave it."""


@dataclass(frozen=True)
class Location:
    """A folder (``path``) or an S3 prefix (``bucket`` and ``prefix``, "" or ending in "/")."""

    uri: str
    path: Path | None = None
    bucket: str = ""
    prefix: str = ""

    @property
    def is_s3(self) -> bool:
        """Whether the location is in object storage."""
        return self.path is None

    @functools.cached_property
    def _client(self) -> Any:
        """One boto3 client for every operation on this location (made on first use)."""
        from labelsieve.data import s3  # boto3: imported only for an s3:// location

        return s3.make_client()

    def child(self, name: str) -> Location:
        """The location `name` under this one (a sub-folder or a longer prefix)."""
        name = _checked(name).strip("/")
        if self.path is not None:
            return Location(str(self.path / name), path=self.path / name)
        return Location(f"{self.uri.rstrip('/')}/{name}", bucket=self.bucket, prefix=f"{self.prefix}{name}/")

    def describe(self, name: str = "") -> str:
        """The full folder path or s3:// URI of `name` (of the location itself when "")."""
        if not name:
            return self.uri
        if self.path is not None:
            return str(self.path / _checked(name))
        return f"s3://{self.bucket}/{self.prefix}{_checked(name)}"

    def read_bytes(self, name: str) -> bytes | None:
        """The content of `name`, or None if it does not exist.

        Raises:
            s3.StorageError: object storage cannot be used (anything but a missing key).
        """
        if self.path is not None:
            file = self.path / _checked(name)
            return file.read_bytes() if file.is_file() else None
        from labelsieve.data import s3

        try:
            return s3.read_object(self._client, self.bucket, self.prefix + _checked(name))
        except s3.ObjectMissing:
            return None

    def write_bytes(self, name: str, data: bytes) -> None:
        """Replace `name` with `data` as one atomic write (a temporary file renamed, or one PUT)."""
        if self.path is not None:
            from labelsieve.atomic import write_bytes

            write_bytes(self.path / _checked(name), data)
            return
        from labelsieve.data import s3

        s3.write_object(self._client, self.bucket, self.prefix + _checked(name), data)

    def upload(self, source: Path, name: str) -> None:
        """Copy the local file `source` to `name` (complete or absent, never half there)."""
        if self.path is not None:
            from labelsieve.atomic import atomic_path

            with atomic_path(self.path / _checked(name)) as tmp:
                shutil.copyfile(source, tmp)
            return
        from labelsieve.data import s3

        s3.upload_file(self._client, source, self.bucket, self.prefix + _checked(name))

    def download(self, name: str, target: Path) -> None:
        """Copy `name` to the local file `target`.

        Raises:
            LocationError: `name` does not exist.
        """
        if self.path is not None:
            source = self.path / _checked(name)
            if not source.is_file():
                raise LocationError(f"{source} does not exist")
            from labelsieve.atomic import atomic_path

            with atomic_path(target) as tmp:
                shutil.copyfile(source, tmp)
            return
        from labelsieve.data import s3

        try:
            s3.download_file(self._client, self.bucket, self.prefix + _checked(name), target)
        except s3.ObjectMissing as err:
            raise LocationError(str(err)) from err

    def files(self, under: str = "") -> list[str]:
        """The names of every file under `under` ("" = the whole location), sorted; [] if there is none."""
        if self.path is not None:
            top = self.path / _checked(under) if under else self.path
            if not top.is_dir():
                return []
            found = (p for p in top.rglob("*") if p.is_file() and not p.name.startswith("."))
            return sorted(p.relative_to(self.path).as_posix() for p in found)
        from labelsieve.data import s3

        start = self.prefix + (_checked(under).rstrip("/") + "/" if under else "")
        keys = s3.list_keys(self._client, self.bucket, start)
        return sorted(key[len(self.prefix) :] for key in keys)

    def delete(self, names: list[str]) -> None:
        """Remove the files `names` (those already gone are skipped), and local folders left empty."""
        if not names:
            return
        if self.path is not None:
            for name in names:
                file = self.path / _checked(name)
                file.unlink(missing_ok=True)
                for parent in file.parents:
                    if parent == self.path or not parent.is_dir() or any(parent.iterdir()):
                        break
                    parent.rmdir()
            return
        from labelsieve.data import s3

        s3.delete_keys(self._client, self.bucket, [self.prefix + _checked(name) for name in names])


def open_location(uri: str) -> Location:
    """The folder or s3:// prefix `uri` (which need not exist yet).

    Raises:
        LocationError: `uri` is empty, or an s3:// URI without a bucket.
    """
    if not uri:
        raise LocationError("the location is empty: give a folder or s3://bucket/prefix")
    if uri.startswith("s3://"):
        from labelsieve.data.s3 import parse_uri

        try:
            bucket, prefix = parse_uri(uri)
        except ValueError as err:
            raise LocationError(str(err)) from err
        prefix = prefix.strip("/")
        return Location(uri, bucket=bucket, prefix=f"{prefix}/" if prefix else "")
    if "://" in uri:
        raise LocationError(f"{uri}: only local folders and s3:// prefixes are supported")
    return Location(uri, path=Path(os.path.expanduser(uri)))


def _checked(name: str) -> str:
    """`name` if it is a relative path that stays inside the location.

    Raises:
        LocationError: an absolute name, or one with an empty, "." or ".." part.
    """
    parts = name.rstrip("/").split("/")
    if not name or name.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise LocationError(f"{name!r} is not a relative name inside the location")
    return name


def download_tree(location: Location, target: Path) -> list[str]:
    """Copy every file under `location` into the local folder `target` (made if missing); their names.

    Raises:
        LocationError: nothing is there.
    """
    names = location.files()
    if not names:
        raise LocationError(f"{location.describe()} holds no files")
    for name in names:
        file = target / name
        file.parent.mkdir(parents=True, exist_ok=True)
        location.download(name, file)
    return names


def upload_tree(source: Path, location: Location) -> list[str]:
    """Copy every file under the local folder `source` (hidden ones left out) to `location`; their names."""
    names = sorted(
        p.relative_to(source).as_posix()
        for p in source.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    for name in names:
        location.upload(source / name, name)
    return names
