"""The deployable model package that `retrain` writes and `labelsieve predict` loads.

A package is a directory of plain files:

- ``weights.pt``: the network's state dict, CPU tensors only; read back with ``weights_only=True`` so
  loading a package never unpickles arbitrary objects.
- ``model.json``: what it takes to rebuild and feed the network: ``format_version``, ``model`` (registry
  name), ``num_classes``, ``in_channels``, ``image_size`` (px, square), ``channels``, ``mean`` and ``std``
  (per channel, 0..1 pixel units) and ``classes`` (names, index = logit).
- ``model_card.json``: where it came from: the dataset content hash, the noise key, the resolved params,
  the metrics and the labelsieve version that created it.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

import torch

from labelsieve.atomic import save_torch, write_json
from labelsieve.config import Params
from labelsieve.engine.resident import TrainingData
from labelsieve.errors import LabelsieveError, field_problems
from labelsieve.models import Classifier, build_model

FORMAT_VERSION = 1
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


def labelsieve_version() -> str:
    """The installed labelsieve version, or "unknown" when run from a source tree without metadata."""
    try:
        return importlib.metadata.version("labelsieve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def save_package(
    directory: str | Path, model: Classifier, *, params: Params, data: TrainingData, metrics: dict[str, Any]
) -> None:
    """Write ``weights.pt``, ``model.json`` and ``model_card.json`` into `directory`, each atomically.

    Args:
        model: the trained network (any device, any memory format).
        params: the resolved params the network was trained with (recorded in the card).
        data: the training context: classes, normalisation, image geometry and data identity.
        metrics: headline figures to record in the card (JSON-serialisable).
    """
    directory = Path(directory)
    _, height, width = data.train_images.shape[1:]
    if width != height:
        raise PackageError(f"images are {height}x{width}; a package describes square images only")
    # contiguous(): channels_last weights would be saved with their strides; plain layout loads anywhere.
    weights = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    save_torch(directory / WEIGHTS, weights)
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
    """The validated ``model.json`` of a package.

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
    if not problems:
        if meta["format_version"] != FORMAT_VERSION:
            problems.append(f"format_version {meta['format_version']} is not {FORMAT_VERSION}")
        if len(meta["classes"]) != meta["num_classes"]:
            problems.append(f"{len(meta['classes'])} classes listed for num_classes {meta['num_classes']}")
        if not len(meta["mean"]) == len(meta["std"]) == meta["channels"] == meta["in_channels"]:
            problems.append("mean, std, channels and in_channels disagree on the channel count")
    if problems:
        raise PackageError(f"{path} is invalid: " + "; ".join(problems))
    return meta


def load_package(directory: str | Path, device: torch.device | str = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the network of a package, in eval mode on `device`.

    Returns:
        ``(model, meta)``: meta is ``model.json``, plus ``card`` (``model_card.json``) when present.

    Raises:
        PackageError: the package is missing, incomplete, or ``weights.pt`` is not a state dict that fits.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    path = directory / WEIGHTS
    if not path.is_file():
        raise PackageError(f"{directory} is not a model package: {WEIGHTS} is missing")
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
    card_path = directory / MODEL_CARD
    if card_path.is_file():
        try:
            meta = {**meta, "card": json.loads(card_path.read_text(encoding="utf-8"))}
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise PackageError(f"{card_path} is not valid JSON: {err}") from err
    return model.to(device).eval(), meta
