"""Path rules shared by every reader and writer: class names as folder names, and manifest paths.

Class folders: `export` writes each class to the folder `class_folder(name)` and a folder ingest reads
class `class_name(folder)`. The encoding is injective and reversible: ``%`` and every character that is
unsafe in a path component (``/``, ``\\``, ``:``, ``*``, ``?``, ``"``, ``<``, ``>``, ``|``, control
characters) become ``%XX`` (upper-case hex of the ASCII code), and so does a leading ``.`` or ``_``, which
would make a hidden or reserved folder (``.``, ``..``, ``.hidden``, ``_dropped``). Any other name,
non-ASCII included, is its own folder name.

Manifest paths (`ingest` and `predict` alike): a row's path is relative to the manifest's folder and
must stay inside it; an absolute path, a ``..`` or a link leading out is refused.

An export (labelsieve/export.py) is a folder with ``export.json``, whose ``layout`` tells folder ingest to
read ``train/``, ``val/`` and ``test/`` as split folders of class folders, and ``manifest.csv``.
"""

from __future__ import annotations

import re
from pathlib import Path

UNSAFE = frozenset('%/\\:*?"<>|')
EXPORT_META = "export.json"
EXPORT_MANIFEST = "manifest.csv"
EXPORT_LAYOUT = "split/class"  # export.json's "layout" of a folder export
EXPORT_SPLITS = ("train", "val", "test")  # an export's split folders, and manifest.csv's splits
DROPPED = "dropped"  # manifest.csv's split of the samples purify dropped
DROPPED_FOLDER = "_dropped"  # their folder, which plain folder ingest skips (a leading "_")
_ESCAPE = re.compile(r"%([0-7][0-9A-F])")


def class_folder(name: str) -> str:
    """The folder name of class `name`.

    Raises:
        ValueError: an empty name, which no folder can stand for.
    """
    if not name:
        raise ValueError("an empty class name cannot be a folder name")
    out = []
    for i, char in enumerate(name):
        unsafe = char in UNSAFE or ord(char) < 32 or ord(char) == 127 or (i == 0 and char in "._")
        out.append(f"%{ord(char):02X}" if unsafe else char)
    return "".join(out)


def class_name(folder: str) -> str:
    """The class a folder name stands for: the inverse of `class_folder`."""
    return _ESCAPE.sub(lambda m: chr(int(m[1], 16)), folder)


def inside(path: Path, root: Path) -> bool:
    """True if `path`, with symlinks resolved, stays inside `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def manifest_file(manifest: Path, ref: str) -> Path | None:
    """The file a manifest row's path `ref` names, relative to the manifest's folder; None if `ref` is
    absolute or leads outside that folder."""
    root = manifest.parent
    if Path(ref).is_absolute():
        return None
    file = root / ref
    return file if inside(file, root) else None
