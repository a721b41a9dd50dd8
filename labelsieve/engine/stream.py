"""Streamed splits: uint8 images left in the memory-mapped store and brought to the device batch by batch.

`StreamedImages` stands in for a resident (N, C, H, W) uint8 device tensor in everything the stages do with
one: ``len()``, ``.shape``, ``.device``, indexing with an integer index tensor (any order, repeats allowed)
and slicing. Rows are gathered on the CPU with ``torch.index_select`` from the memmap (into pinned memory on
CUDA) and copied with ``non_blocking`` on a side stream, which the consumer's stream waits for.

`prefetch` tells a split which batches an epoch will ask for, in order; a background thread then gathers up
to `depth` batches ahead. A request that is not the next planned batch is gathered at once, so a plan only
changes speed, never the rows returned; a slice is followed by read-ahead of the next slices of its size
(the evaluation passes). Augmentation runs after the batch is on the device, from the same generators, so a
streamed run equals a resident one bit for bit. Returned batches must not be written in place: a request
repeating the previous one (a MixMatch step's two views) is served from it.

`choose_data_path` resolves ``runtime.data_path``: ``auto`` keeps the splits resident when they fit with a
margin, else streams them.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import warnings
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain, zip_longest
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

Key = Tensor | slice  # a CPU int64 index tensor, or a slice with step 1 and bounds within [0, N]

# auto keeps the splits resident only while they take at most this share of the free memory: the rest is
# for the networks, their activations and optimiser state (on CUDA) or the rest of the process (CPU).
RESIDENT_SHARE = 0.5


class StreamedImages:
    """A uint8 (N, C, H, W) split read from a memory-mapped array, delivered to `device` per request.

    Args:
        array: the split as the store maps it (``Dataset.images(split)``); never written.
        device: where batches go; on CUDA they are staged in pinned memory and copied asynchronously.
        depth: planned batches gathered ahead of the consumer.
    """

    def __init__(self, array: np.ndarray, device: torch.device, *, depth: int = 2):
        if array.ndim != 4 or array.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, C, H, W) images, got {array.dtype} {array.shape}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only memmap: it is only ever read
            source = torch.from_numpy(array)
        self._array = array
        self.device = torch.device(device)
        self.shape = torch.Size(array.shape)
        self.dtype = torch.uint8
        self._depth = depth
        self._reader = _Reader(source, self.device)
        self._plan: deque[Key] = deque()
        self._ready: queue.Queue | None = None
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._last: tuple[Key, Tensor] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __del__(self) -> None:
        if (stop := getattr(self, "_stop", None)) is not None:
            stop.set()  # a worker still waiting to hand over a batch ends

    def __repr__(self) -> str:
        return f"StreamedImages(shape={tuple(self.shape)}, device={self.device})"

    def __getitem__(self, item: Tensor | slice | int | Sequence[int]) -> Tensor:
        """Rows `item` on the device, as indexing a resident tensor would return them."""
        if isinstance(item, int | np.integer) or (isinstance(item, Tensor) and item.ndim == 0):
            return self[torch.tensor([int(item)])][0]
        key = self._key(item)
        if _length(key) == 0:
            return torch.empty((0, *self.shape[1:]), dtype=torch.uint8, device=self.device)
        if self._last is not None and _same(self._last[0], key):
            return self._last[1].clone()
        planned = bool(self._plan) and _covers(key, self._plan[0])
        batch = self._take(key) if planned else self._deliver(*self._reader.gather(key))
        self._last = (key, batch)
        if isinstance(key, slice) and not planned and not self._plan:
            size = key.stop - key.start
            self.plan(slice(s, min(s + size, len(self))) for s in range(key.stop, len(self), size))
        return batch

    def view(self, part: slice) -> StreamedImages:
        """Rows `part` (step 1) as a streamed split of their own; nothing is read."""
        start, stop, step = part.indices(len(self))
        if step != 1:
            raise IndexError(f"a streamed view needs a slice with step 1, got {part}")
        if (start, stop) == (0, len(self)):
            return self
        return StreamedImages(self._array[start : max(start, stop)], self.device, depth=self._depth)

    def plan(self, batches: Iterable[Tensor | slice]) -> None:
        """Gather `batches` (the requests to come, in order) in a background thread, replacing any plan."""
        self._cancel()
        batches = list(batches)
        tensors = [b for b in batches if isinstance(b, Tensor)]
        if any(t.device.type != "cpu" for t in tensors):  # one host sync for the whole plan
            host = iter(torch.cat([t.flatten() for t in tensors]).cpu().split([t.numel() for t in tensors]))
            batches = [next(host) if isinstance(b, Tensor) else b for b in batches]
        keys = [k for k in map(self._key, batches) if _length(k)]
        if not keys:
            return
        self._plan = deque(keys)
        self._ready, self._stop = queue.Queue(maxsize=self._depth), threading.Event()
        self._worker = threading.Thread(
            target=_produce,
            args=(self._reader, keys, self._ready, self._stop),
            name="labelsieve-stream",
            daemon=True,
        )
        self._worker.start()

    def _key(self, item: Tensor | slice | Sequence[int]) -> Key:
        """`item` as a CPU int64 index tensor with negative indices wrapped, or a normalised slice."""
        n = len(self)
        if isinstance(item, slice):
            start, stop, step = item.indices(n)
            if step == 1:
                return slice(start, max(start, stop), 1)
            item = torch.arange(start, stop, step)
        index = torch.as_tensor(item)
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        if index.dtype.is_floating_point or index.dtype.is_complex or index.ndim != 1:
            raise IndexError(
                f"index rows with a 1-d integer tensor or a slice, got {index.dtype} {index.shape}"
            )
        index = index.to("cpu", torch.int64)
        return torch.where(index < 0, index + n, index)

    def _deliver(self, batch: Tensor, done: torch.cuda.Event | None) -> Tensor:
        """`batch`, made safe to use on the current stream."""
        if done is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(done)
            batch.record_stream(stream)
        return batch

    def _take(self, key: Key) -> Tensor:
        """The next planned batch, plus any rows `key` asks for past it, gathered now."""
        head = self._plan.popleft()
        got = self._ready.get()
        if isinstance(got, BaseException):
            self._cancel()
            raise got
        batch = self._deliver(*got)
        extra = _length(key) - _length(head)
        if extra:
            batch = torch.cat([batch, self._deliver(*self._reader.gather(key[_length(head) :]))])
        return batch

    def _cancel(self) -> None:
        """Stop the current plan's worker and drop what it gathered."""
        self._stop.set()
        if self._ready is not None:
            while True:
                try:
                    self._ready.get_nowait()
                except queue.Empty:
                    break
        if self._worker is not None:
            self._worker.join()
        self._plan.clear()
        self._ready, self._worker = None, None


class _Reader:
    """Reads rows of the mapped split and starts their copy to the device; what the worker thread holds."""

    def __init__(self, source: Tensor, device: torch.device):
        self.source = source
        self.device = device
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def gather(self, key: Key) -> tuple[Tensor, torch.cuda.Event | None]:
        """Rows `key`; on CUDA also the event that ends their asynchronous copy to the device."""
        if self.copy_stream is None:
            rows = self.source[key].clone() if isinstance(key, slice) else self.source.index_select(0, key)
            return rows.to(self.device), None
        host = torch.empty((_length(key), *self.source.shape[1:]), dtype=torch.uint8, pin_memory=True)
        if isinstance(key, slice):
            host.copy_(self.source[key])
        else:
            torch.index_select(self.source, 0, key, out=host)
        with torch.cuda.stream(self.copy_stream):
            # The caching host allocator reuses the pinned block only once this copy has finished.
            batch = host.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.copy_stream)
        return batch, done


def _produce(reader: _Reader, keys: list[Key], ready: queue.Queue, stop: threading.Event) -> None:
    """Worker thread: gather `keys` in order into `ready`, until done or stopped. It holds the reader, not
    the split, so a dropped split stops its worker (`StreamedImages.__del__`)."""
    try:
        for key in keys:
            if not _put(ready, reader.gather(key), stop):
                return
    except BaseException as err:  # handed to the consumer, which raises it
        _put(ready, err, stop)


def _put(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put `item` into `ready`, waiting for room; False once `stop` is set."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _length(key: Key) -> int:
    return key.stop - key.start if isinstance(key, slice) else len(key)


def _same(a: Key, b: Key) -> bool:
    if isinstance(a, slice) or isinstance(b, slice):
        return a == b
    return a.shape == b.shape and torch.equal(a, b)


def _covers(key: Key, head: Key) -> bool:
    """Whether request `key` starts with the planned batch `head`."""
    if isinstance(key, slice) or isinstance(head, slice):
        return key == head
    return len(key) >= len(head) and torch.equal(key[: len(head)], head)


def prefetch(images: Tensor | StreamedImages, *orders: Sequence[Tensor], ids: Tensor | None = None) -> None:
    """Announce the batches an epoch will index `images` with; a no-op on a resident tensor.

    Args:
        orders: sequences of index batches; requests alternate between them (a MixMatch step asks for its
            labeled batch, then its unlabeled one).
        ids: if given, each batch holds positions into `ids` and the rows requested are ``ids[batch]``.
    """
    if not isinstance(images, StreamedImages):
        return
    batches = [b for b in chain.from_iterable(zip_longest(*orders)) if b is not None]
    if ids is not None and batches:
        host = ids.cpu()
        batches = list(host[torch.cat(batches).cpu()].split([len(b) for b in batches]))
    images.plan(batches)


def row_range(images: Tensor | StreamedImages, part: slice) -> Tensor | StreamedImages:
    """Rows `part` of a split without reading them: a view of a resident tensor, or a streamed view."""
    return images.view(part) if isinstance(images, StreamedImages) else images[part]


def available_bytes(device: torch.device) -> int | None:
    """Free memory for resident splits: free CUDA memory, else the host's MemAvailable; None if unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def choose_data_path(setting: str, needed: int, device: torch.device) -> str:
    """``resident`` or ``stream`` for ``runtime.data_path`` = `setting`, logged as one line on stderr unless
    `auto` chose resident (the everyday case, kept quiet so a stage's stderr is its own messages).

    Args:
        setting: ``auto``, ``resident`` or ``stream``; ``auto`` is resident when `needed` is at most
            `RESIDENT_SHARE` of `available_bytes` (or when that is unknown), else stream.
        needed: bytes of every split's images.
    """
    choice, why = setting, f"images {_size(needed)}"
    if setting == "auto":
        free = available_bytes(device)
        if free is None:
            choice, why = "resident", f"{why}, free memory on {device} unknown"
        else:
            choice = "resident" if needed <= RESIDENT_SHARE * free else "stream"
            why = f"{why}, {_size(free)} free on {device}, resident up to {RESIDENT_SHARE:.0%} of it"
    if setting != "auto" or choice != "resident":
        print(f"data path: {choice} (runtime.data_path {setting}; {why})", file=sys.stderr, flush=True)
    return choice


def _size(count: float) -> str:
    """Bytes in binary units, e.g. "7.5 MiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"
