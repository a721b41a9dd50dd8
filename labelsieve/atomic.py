"""Atomic file writes: write to a temporary sibling, fsync, then rename.

A killed stage therefore leaves either the old file or the new one, never a half-written file that
the next stage could mistake for output. `mkstemp` and `mkdtemp` create 0600 files and 0700 folders;
both are widened to what the process umask allows (0644 and 0755 under umask 022), as `open` and `mkdir`
would make them.

Every temporary sibling is named ``.<name>.<pid>-<host>.<random>.tmp`` (``.old`` for the output being
replaced). The next write of the same output removes the ones whose process is gone (a killed stage),
so they never pile up; an interrupted replacement's ``.old`` is put back first if the output is missing.
A full disk, a read-only folder or an unwritable parent becomes an `OutputError` naming the output.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.errors import OutputError

# errno values meaning "the disk, the quota or the file-size limit is exhausted".
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_REST = re.compile(r"(\d+)-([0-9a-f]{8})\.[A-Za-z0-9_]+\.(tmp|old)")


@functools.cache
def umask() -> int:
    """The process umask, read once: from /proc (Linux), else by setting and restoring it right away."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    current = os.umask(0o022)  # briefly changes the umask of every thread; only without /proc
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    final = Path(path)
    tmp = _make_temp(final, directory=False)
    try:
        tmp.chmod(0o666 & ~umask())
        with _no_space_is_named(final):
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory; it replaces `path` as a whole only if the block succeeds."""
    final = Path(path)
    tmp = _make_temp(final, directory=True)
    try:
        tmp.chmod(0o777 & ~umask())
        with _no_space_is_named(final):
            yield tmp
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".old", dir=final.parent))
                os.replace(final, old / final.name)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _temp_prefix(final: Path) -> str:
    """``.<name>.<pid>-<host>.``: whose temporary this is, so a later run can tell if it is stale."""
    return f".{final.name}.{os.getpid()}-{HOST}."


def _make_temp(final: Path, *, directory: bool) -> Path:
    """Create the temporary sibling of `final` (after removing stale ones).

    Raises:
        OutputError: the parent folder cannot be created or written, naming it.
    """
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = err.filename or final.parent
        raise OutputError(f"cannot write {final}: cannot create the folder {where} ({err.strerror})") from err
    remove_stale_temporaries(final)
    try:
        if directory:
            return Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent)
        os.close(fd)
        return Path(name)
    except OSError as err:
        why = err.strerror
        raise OutputError(f"cannot write {final}: the folder {final.parent} refuses it ({why})") from err


@contextlib.contextmanager
def _no_space_is_named(final: Path) -> Iterator[None]:
    """Turn a full disk, quota or file-size limit met while writing `final` into an `OutputError`."""
    try:
        yield
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise OutputError(f"cannot write {final}: {err.strerror}; nothing was replaced") from err


def _alive(pid: int) -> bool:
    """True if a process `pid` exists on this host (or might: no permission to ask)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary siblings of `final` whose creating process (on this host) has ended.

    A stale ``.old`` folder still holding the previous output is moved back to `final` first when
    `final` is missing (the replacement was killed between its two renames). Returns what was removed.
    """
    final = Path(final)
    prefix = f".{final.name}."
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(final.parent) if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_REST.fullmatch(entry.name[len(prefix) :])
        if match is None or match[2] != HOST or _alive(int(match[1])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if match[3] == "old" and (path / final.name).exists() and not final.exists():
                os.replace(path / final.name, final)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented JSON, atomically. Numpy scalars and arrays are converted."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save one array as `.npy`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def write_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Save named arrays as an uncompressed `.npz`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)


def preallocated_npy(
    path: str | os.PathLike[str], shape: tuple[int, ...], dtype: np.typing.DTypeLike = np.uint8
) -> np.memmap:
    """Create a zeroed `.npy` file of `shape`, reserve all its disk space, and map it for writing.

    A write through a memory map cannot report a full disk: the kernel kills the process with SIGBUS.
    Reserving every block first turns that into this error, before anything is mapped.

    Raises:
        OutputError: the space cannot be reserved; names the file and the bytes needed. The partial
            file is removed.
    """
    path, dtype = Path(path), np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    size = math.prod(shape) * dtype.itemsize
    offset = 0
    try:
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            offset = handle.tell()
            _reserve(handle, offset + size)
    except OSError as err:
        path.unlink(missing_ok=True)
        free = ""
        with contextlib.suppress(OSError):
            stat = os.statvfs(path.parent)
            free = f", {stat.f_bavail * stat.f_frsize:,} free"
        need = f"{offset + size:,} bytes needed{free}"
        raise OutputError(f"cannot write {path}: {need} ({err.strerror})") from err
    return np.memmap(path, dtype=dtype, mode="r+", offset=offset, shape=tuple(shape))


def _reserve(handle: Any, size: int) -> None:
    """Allocate the first `size` bytes of an open file on disk (zeros), so later writes cannot run out."""
    fallocate = getattr(os, "posix_fallocate", None)  # absent on macOS: write the zeros instead
    try:
        if fallocate is not None:
            fallocate(handle.fileno(), 0, size)
            return
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    handle.seek(0, os.SEEK_END)
    block = bytes(1 << 20)
    while (left := size - handle.tell()) > 0:
        handle.write(block[:left])
    handle.flush()


def write_csv(path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV table with a header row, atomically, streaming `rows` (a generator is never held whole)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def save_torch(path: str | os.PathLike[str], obj: dict[str, Any]) -> None:
    """Save a state dict (tensors and plain containers only) atomically with `torch.save`.

    The archive is built in memory: saved to a file, torch names the zip records after the file (here a
    random temporary name), so the same weights would give different bytes and a different DVC hash.
    From a buffer every record is ``archive/...``, and equal state dicts give equal files.
    """
    import torch  # here, so that importing this module (e.g. by the CLI) does not load torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
