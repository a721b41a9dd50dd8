"""Wall-clock timings, kept out of the stages' cached outputs.

An epoch's ``train_seconds`` differs between two otherwise identical runs. Left in a training stage's
``history.json`` it would give the output a new hash on every run, so `dvc.lock` would change with nothing
else changed. Once the stage's output is in place (`Checkpoint.clear`), `move_timings` moves those fields
to ``<out_dir>.timings.json`` beside it: not a DVC output, never cached, git-ignored under artifacts/.
`with_timings` puts them back for readers that want them (the benchmarks, `evaluate`'s timings file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from labelsieve.atomic import write_json

WALL_CLOCK = ("train_seconds",)


def timings_path(out_dir: str | Path) -> Path:
    """Where a stage output's timings go: ``<out_dir>.timings.json``."""
    return Path(f"{Path(out_dir)}.timings.json")


def move_timings(out_dir: str | Path) -> None:
    """Move the wall-clock fields of ``<out_dir>/history.json`` to ``<out_dir>.timings.json``.

    A history without such fields (already moved, or a stage that passed through) is left as it is.
    """
    history_path = Path(out_dir) / "history.json"
    if not history_path.is_file():
        return
    history = json.loads(history_path.read_text())
    if not any(key in record for record in history for key in WALL_CLOCK):
        return
    timings = [
        {"epoch": record.get("epoch"), **{key: record.pop(key) for key in WALL_CLOCK if key in record}}
        for record in history
    ]
    write_json(timings_path(out_dir), timings)
    write_json(history_path, history)


def with_timings(out_dir: str | Path, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`history` with the wall-clock fields of ``<out_dir>.timings.json`` put back, epoch by epoch.

    Records whose epoch has no timing (no file, or a file of another run) are returned unchanged.
    """
    path = timings_path(out_dir)
    if not path.is_file():
        return history
    by_epoch = {entry.get("epoch"): entry for entry in json.loads(path.read_text())}
    merged = []
    for record in history:
        entry = by_epoch.get(record.get("epoch"), {})
        merged.append({**record, **{key: entry[key] for key in WALL_CLOCK if key in entry}})
    return merged
