"""Progress bars that stay quiet when nobody is watching (stderr not a terminal), and the short
per-epoch line shown on a terminal instead of the JSON record."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None, desc: str, mode: str = "auto") -> Iterator[T]:
    """Wrap `items` in a tqdm bar when `mode` is "always", or "auto" and stderr is a terminal."""
    show = mode == "always" or (mode == "auto" and sys.stderr.isatty())
    return iter(tqdm(items, total=total, desc=desc, disable=not show, leave=False, file=sys.stderr))


def epoch_line(stage: str, record: dict[str, Any]) -> str:
    """One short human line for an epoch record, e.g.
    ``warmup epoch 3: loss 0.912/0.887, val 80.20%, test 81.05% (2.3 s)``.

    Epochs count from 1 here, as on the progress bars; the JSON records count from 0.
    """
    parts = []
    if "loss" in record:
        losses = record["loss"] if isinstance(record["loss"], list) else [record["loss"]]
        parts.append("loss " + "/".join(f"{float(v):.3f}" for v in losses))
    for key, name in (("val_acc", "val"), ("test_acc", "test")):
        if key in record and not math.isnan(value := float(record[key])):  # NaN: the split is empty
            parts.append(f"{name} {100 * value:.2f}%")
    kind = f" ({record['kind']})" if "kind" in record else ""
    line = f"{stage} epoch {int(record.get('epoch', -1)) + 1}{kind}: " + ", ".join(parts)
    return line + (f" ({float(record['train_seconds']):.1f} s)" if "train_seconds" in record else "")
