"""The deployable model package that `retrain` writes and `labelsieve predict` loads.

A package is a directory of plain files:

- ``weights.pt``: the network's state dict, CPU tensors only; read back with ``weights_only=True`` so
  loading a package never unpickles arbitrary objects. An ensemble package (``retrain.package:
  ensemble``) adds ``weights_2.pt``, ``weights_3.pt``, ...: one state dict per further member, all of the
  same architecture; it predicts the mean of the members' logits, as DivideMix's ensemble does.
- ``model.json``: what it takes to rebuild and feed the network: ``format_version``, ``model`` (registry
  name), ``num_classes``, ``in_channels``, ``image_size`` (px, square), ``channels``, ``mean`` and ``std``
  (per channel, 0..1 pixel units), ``classes`` (names, index = logit) and ``members`` (the weight files,
  ``weights.pt`` first). Version 1 packages, written before ensembles existed, have no ``members`` and
  hold ``weights.pt`` alone; they still load.
- ``model_card.json``: where it came from: the dataset content hash, the noise key, the resolved params,
  the metrics and the labelsieve version that created it.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from labelsieve.atomic import save_torch, write_json
from labelsieve.config import Params
from labelsieve.engine.resident import TrainingData
from labelsieve.errors import LabelsieveError, field_problems
from labelsieve.models import Classifier, build_model

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: a single weights.pt, before ``members`` existed
WEIGHTS, MODEL_JSON, MODEL_CARD = "weights.pt", "model.json", "model_card.json"
# key -> the JSON types it may hold; checked on load so a hand-edited file fails with the key's name.
_FIELDS: dict[str, tuple[type, ...]] = {
    "format_version": (int,),
    "model": (str,),
    "num_classes": (int,),
    "in_channels": (int,),
    "image_size": (int,),
    "channels": (int,),
    "mean": (list,),
    "std": (list,),
    "classes": (list,),
}


class PackageError(LabelsieveError):
    """A model package that is missing, incomplete or not what labelsieve writes."""


class Ensemble(nn.Module):
    """Networks of one architecture that predict together: the mean of their logits."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C): the members' mean, in float32 (a member's may be bf16 under autocast)."""
        return torch.stack([member(x).float() for member in self.members]).mean(dim=0)


def member_file(k: int) -> str:
    """The weight file of member `k` (0-based): ``weights.pt``, then ``weights_2.pt``, ..."""
    return WEIGHTS if k == 0 else f"weights_{k + 1}.pt"


def package_files(directory: str | Path) -> list[str]:
    """Every file name of the package in `directory`: its weight files, ``model.json`` and the card.

    Raises:
        PackageError: ``model.json`` is missing or invalid.
    """
    return [*read_meta(directory)["members"], MODEL_JSON, MODEL_CARD]


def labelsieve_version() -> str:
    """The installed labelsieve version, or "unknown" when run from a source tree without metadata."""
    try:
        return importlib.metadata.version("labelsieve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_package(
    directory: str | Path,
    models: Sequence[Classifier],
    *,
    params: Params,
    data: TrainingData,
    metrics: dict[str, Any],
) -> None:
    """Write the weight files, ``model.json`` and ``model_card.json`` into `directory`, each atomically.

    Args:
        models: the trained network, or the members of an ensemble, first the one ``weights.pt`` holds
            (any device, any memory format; all of the architecture ``params.model.name``).
        params: the resolved params the network was trained with (recorded in the card).
        data: the training context: classes, normalisation, image geometry and data identity.
        metrics: headline figures to record in the card (JSON-serialisable).
    """
    directory = Path(directory)
    _, height, width = data.train_images.shape[1:]
    if width != height:
        raise PackageError(f"images are {height}x{width}; a package describes square images only")
    if not models:
        raise PackageError("a package needs at least one network")
    for k, model in enumerate(models):
        # contiguous(): channels_last weights would be saved with their strides; plain layout loads anywhere.
        weights = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
        save_torch(directory / member_file(k), weights)
    write_json(
        directory / MODEL_JSON,
        {
            "format_version": FORMAT_VERSION,
            "model": params.model.name,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "image_size": int(height),
            "channels": data.in_channels,
            "mean": list(data.mean),
            "std": list(data.std),
            "classes": list(data.dataset.classes),
            "members": [member_file(k) for k in range(len(models))],
        },
    )
    content_hash, _, noise_key = data.key.partition(":")  # TrainingData.key is "<content hash>:<noise key>"
    write_json(
        directory / MODEL_CARD,
        {
            "format_version": FORMAT_VERSION,
            "dataset_content_hash": content_hash,
            "noise_key": noise_key,
            "params": params.to_dict(),
            "metrics": metrics,
            "created_by": f"labelsieve {labelsieve_version()}",
        },
    )


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The validated ``model.json`` of a package; a version 1 file gains ``members: ["weights.pt"]``.

    Raises:
        PackageError: the directory or file is missing, not JSON, or a key is missing or of a wrong type.
    """
    directory = Path(directory)
    path = directory / MODEL_JSON
    if not directory.is_dir():
        raise PackageError(f"model package {directory} does not exist (expected the retrain stage's output)")
    if not path.is_file():
        raise PackageError(f"{directory} is not a model package: {MODEL_JSON} is missing")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PackageError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise PackageError(f"{path} must hold a JSON object")
    problems = field_problems(meta, _FIELDS)
    if not problems and meta["format_version"] not in READABLE_VERSIONS:
        problems.append(
            f"format_version {meta['format_version']} is not one this labelsieve reads "
            f"({', '.join(map(str, READABLE_VERSIONS))}); a newer labelsieve wrote it"
        )
    elif not problems:
        if meta["format_version"] == 1:
            meta.setdefault("members", [WEIGHTS])
        members = meta.get("members")
        expected = [member_file(k) for k in range(len(members))] if isinstance(members, list) else None
        if not members or members != expected:
            problems.append(f"members must list weights.pt, weights_2.pt, ... in order, got {members!r}")
        if len(meta["classes"]) != meta["num_classes"]:
            problems.append(f"{len(meta['classes'])} classes listed for num_classes {meta['num_classes']}")
        if not len(meta["mean"]) == len(meta["std"]) == meta["channels"] == meta["in_channels"]:
            problems.append("mean, std, channels and in_channels disagree on the channel count")
    if problems:
        raise PackageError(f"{path} is invalid: " + "; ".join(problems))
    return meta


def load_package(directory: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network of a package, or its `Ensemble`, in eval mode on `device`.

    Returns:
        ``(model, meta)``: meta is ``model.json``, plus ``card`` (``model_card.json``) when present.

    Raises:
        PackageError: the package is missing, incomplete, or a weight file is not a state dict that fits.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    members = [_load_member(directory / name, meta) for name in meta["members"]]
    model: nn.Module = members[0] if len(members) == 1 else Ensemble(members)
    card_path = directory / MODEL_CARD
    if card_path.is_file():
        try:
            meta = {**meta, "card": json.loads(card_path.read_text(encoding="utf-8"))}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PackageError(f"{card_path} is not valid JSON: {err}") from err
    return model.to(device).eval(), meta


def _load_member(path: Path, meta: dict[str, Any]) -> Classifier:
    """One member network from its weight file."""
    if not path.is_file():
        raise PackageError(f"{path.parent} is not a complete model package: {path.name} is missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise PackageError(f"{path} is not a weights-only state dict: {err}") from err
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PackageError(f"{path} is not a state dict (name -> tensor), got {type(state).__name__}")
    try:
        model = build_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"])
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as err:
        raise PackageError(f"{path} does not fit a {meta['model']} network: {err}") from err
    return model
