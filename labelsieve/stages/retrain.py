"""Stage 8, `retrain`: SSSL (Lu & He, arXiv 2406.16966; docs/algorithms.md §5), one deployable network trained
with synthetic neighbour samples and soft targets, on the purified labels or on the raw noisy ones.

Schedule over `retrain.epochs` (0-based epoch e, lr from `loop.lr_at` over that budget):
- e < warmup_epochs: CE against the soft targets t (still onehot then).
- warmup_epochs ≤ e < synthetic_start (e_s): ordinary mixup, λ' = max(λ, 1 − λ), soft targets mixed.
- e ≥ e_s: each sample b is mixed with its K − 1 nearest neighbours, x̃_b = Σ_k λ_bk x_k and
  t̃_b = Σ_k λ_bk t_k with λ_bk ∝ w_k, and the loss is CE(f(x̃), t̃).

Every epoch after warm-up starts with an evaluation pass (eval mode, no augmentation) over the training
samples. On correction epochs (every `correction_period`-th from e_s) its predictions first correct the soft
targets, t_i ← m t_i + (1 − m) softmax(z_i); then its CE against argmax t feeds the seeded GMM of §2.1,
giving this epoch's clean probabilities w.

Labels: with `retrain.use_purified`, ``<purified_dir>/labels.npz`` (`train_labels`, `train_decision`: 0 keep,
1 relabel, 2 drop; `train_probs`: the co-trained ensemble's prediction). `retrain.dropped: exclude` leaves
dropped samples out; `unlabeled` keeps them with loss weight zero, target uniform (their label is unknown) and
clean probability zero, so they never dominate a synthetic sample; `ensemble` keeps them with the ensemble's
prediction as their target. `retrain.distill` = β mixes the ensemble into every kept target,
t = (1 − β) onehot(label) + β p_ensemble: the single network learns from the ensemble it replaces
(knowledge distillation). Otherwise (preset `sssl`) the noisy labels of `inject_noise` are used as given.
`retrain.flag_threshold` τ_r, when set, re-decides the samples at that τ from purify's ``scores.npz``
(`posterior_score`, `predicted`, `confidence`: its posterior over the true class) by purify's own rule
(`purification.decide`), so the model can learn from a looser or stricter cut than the dataset handed back.
τ_r was chosen on `posterior_score`, the final networks' posterior read as robust; purify's own flags use
`noise_score`, its mean with the unmixed reading (rule 5), which was measured for τ only.

Start: `retrain.init_from: ssl` starts the network from the first co-trained network of ``<ssl_dir>``
(fine-tuning it on the purified targets); `scratch` from a fresh initialisation.

Package: `retrain.package: single` holds the retrained network; `ensemble` adds the co-trained networks of
``<ssl_dir>``, and the package predicts their mean logits (three forwards per image instead of one).

Outputs: the model package (labelsieve/package.py), ``history.json`` and ``soft_targets.npz`` (`targets`
(N, C) float32, `trained` (N,) bool, `loss_weight` (N,) float32, indexed by training sample id).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import atomic_dir, write_json, write_npz
from labelsieve.config import Params, RetrainConfig
from labelsieve.engine import distributed, loop
from labelsieve.engine.augment import to_float
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.device import autocast, resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.stream import prefetch
from labelsieve.errors import LabelsieveError
from labelsieve.maths import division, forward, mixmatch, neighbours, purification
from labelsieve.maths.purification import DROP, KEEP, RELABEL
from labelsieve.models import Classifier
from labelsieve.package import save_package
from labelsieve.progress import progress
from labelsieve.seeding import numpy_rng

Phase = Literal["ce", "mixup", "synthetic"]
# Distances held at once by the dataset-wide kNN (64 MB in float32): the query chunk is sized from N so the
# search stays O(N) in memory at web scale.
KNN_DISTANCES_PER_CHUNK = 1 << 24


@dataclass(frozen=True)
class TrainingLabels:
    """The labels retrain starts from, indexed by training sample id.

    Attributes:
        labels: int64 (N,) class ids; ignored (conventionally -1) where ``decision == DROP``.
        decision: int8 (N,) KEEP, RELABEL or DROP; all KEEP for the raw noisy labels.
        source: "purified" or "noisy".
        probs: float32 (N, C) the co-trained ensemble's prediction (purify's `train_probs`), or None.
        noise_matrix: float64 (C, C) the matrix `retrain.forward_correction` learns ``labels`` through:
            λ T_r + (1 − λ) I, T_r[i, j] = P(label = i | y* = j) (`forward.expected_noise_matrix`).
    """

    labels: np.ndarray
    decision: np.ndarray
    source: str
    probs: np.ndarray | None = None
    noise_matrix: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """Identity of the labels, for the checkpoint key."""
        probs = b"" if self.probs is None else self.probs.tobytes()
        matrix = b"" if self.noise_matrix is None else self.noise_matrix.tobytes()
        return hashlib.sha256(self.labels.tobytes() + self.decision.tobytes() + probs + matrix).hexdigest()


@dataclass
class SampleState:
    """Per-sample training state on the device, indexed by sample id (N = training samples).

    Attributes:
        train_ids: int64 (M,) the sample ids iterated over (dropped ones left out under `exclude`).
        loss_weight: float32 (N,) 1 for a labelled sample, 0 for a dropped one kept as unlabeled.
        targets: float32 (N, C) soft targets t; rows of samples outside ``train_ids`` are never used.
        labels: int64 (N,) each sample's label (clamped into range where dropped); None without forward
            correction.
        label_mass: float32 (N,) how much of t is onehot(label), 1 − β, and 0 for a dropped sample: the part
            corrected through ``noise_matrix``; None without forward correction.
        noise_matrix: float32 (C, C) the labels' P(label = i | y* = j), or None.
    """

    train_ids: torch.Tensor
    loss_weight: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor | None = None
    label_mass: torch.Tensor | None = None
    noise_matrix: torch.Tensor | None = None


def read_labels(params: Params, data: TrainingData, purified_dir: str | Path | None) -> TrainingLabels:
    """The purified labels from ``<purified_dir>/labels.npz``, or the noisy ones when `use_purified` is off.

    Raises:
        LabelsieveError: the file is missing or unreadable, or its arrays do not fit the training set.
    """
    n, classes = len(data.train_labels), data.num_classes
    if not params.retrain.use_purified:
        return TrainingLabels(data.train_labels.cpu().numpy(), np.zeros(n, dtype=np.int8), "noisy")
    path = Path(purified_dir if purified_dir is not None else "") / "labels.npz"
    if purified_dir is None or not path.is_file():
        raise LabelsieveError(
            f"{path} is missing: retrain.use_purified is true, so retrain trains on the purify stage's "
            "labels. Run `labelsieve purify` first (or pass its output as --purified-dir), or set "
            "retrain.use_purified: false to train on the raw noisy labels (the sssl preset)"
        )
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"train_labels", "train_decision"} - set(arrays.files)
            if missing:
                raise LabelsieveError(f"{path} lacks array(s) {', '.join(sorted(missing))}")
            labels, decision = arrays["train_labels"], arrays["train_decision"]
            probs = arrays["train_probs"] if "train_probs" in arrays.files else None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise LabelsieveError(f"{path} is not a readable .npz file: {err}") from err
    problems = []
    for name, array in (("train_labels", labels), ("train_decision", decision)):
        if array.shape != (n,) or array.dtype.kind not in "iu":
            problems.append(f"{name} must be integers of shape ({n},), got {array.dtype} {array.shape}")
    cfg = params.retrain
    wants_probs = cfg.distill > 0 or cfg.dropped == "ensemble" or cfg.forward_correction > 0
    if probs is None and wants_probs:
        problems.append(
            "it has no train_probs (the ensemble's prediction; purify writes it), which "
            "retrain.distill > 0, retrain.dropped: ensemble or retrain.forward_correction > 0 needs"
        )
    elif probs is not None and (probs.shape != (n, classes) or not np.isfinite(probs).all()):
        problems.append(f"train_probs must be finite of shape ({n}, {classes}), got {probs.shape}")
    if not problems:
        if not np.isin(decision, (KEEP, RELABEL, DROP)).all():
            problems.append("train_decision holds values other than 0 (keep), 1 (relabel), 2 (drop)")
        used = labels[decision != DROP]
        if used.size and (used.min() < 0 or used.max() >= classes):
            problems.append(f"a kept or relabelled sample has a label outside [0, {classes})")
        if used.size < 2 and params.retrain.epochs > 0:  # with no epoch the stage only passes through
            problems.append(f"only {used.size} sample(s) are kept; retrain needs at least 2")
    if problems:
        raise LabelsieveError(f"{path} does not fit the training set of {n} samples: " + "; ".join(problems))
    given = data.train_labels.cpu().numpy()
    if cfg.flag_threshold is not None:
        decision, labels = redecide(Path(purified_dir), given, classes, cfg.flag_threshold)
    used_probs = probs.astype(np.float32) if probs is not None and wants_probs else None
    matrix = None
    if cfg.forward_correction > 0:
        used = decision != DROP
        estimate = purify_noise_matrix(Path(purified_dir), classes)
        expected = forward.expected_noise_matrix(labels[used], given[used], probs[used], estimate)
        strength = cfg.forward_correction  # λ: T_r shrunk towards the identity (docs/algorithms.md §5.2)
        matrix = strength * expected + (1.0 - strength) * np.eye(classes)
    return TrainingLabels(labels.astype(np.int64), decision.astype(np.int8), "purified", used_probs, matrix)


def purify_noise_matrix(purified_dir: Path, num_classes: int) -> np.ndarray:
    """Purify's estimated noise matrix of the given labels (``summary.json``), for forward correction.

    Raises:
        LabelsieveError: the summary is missing or unreadable, or its matrix is not a (C, C) matrix of
            probabilities whose columns sum to 1.
    """
    path = purified_dir / "summary.json"
    fix = "rerun `labelsieve purify`, or set retrain.forward_correction: 0"
    try:
        matrix = np.asarray(json.loads(path.read_text())["noise_estimate"]["noise_matrix"], dtype=np.float64)
    except (OSError, KeyError, TypeError, ValueError) as err:
        raise LabelsieveError(
            f"{path} has no readable noise_estimate.noise_matrix ({err}), which "
            f"retrain.forward_correction needs; {fix}"
        ) from err
    shape = (num_classes, num_classes)
    if matrix.shape != shape or not np.isfinite(matrix).all() or (matrix < 0).any():
        raise LabelsieveError(
            f"{path}: noise_matrix must hold {shape} probabilities, got {matrix.shape}; {fix}"
        )
    if not np.allclose(matrix.sum(axis=0), 1.0, atol=1e-3):
        raise LabelsieveError(f"{path}: the columns of noise_matrix must sum to 1; {fix}")
    return matrix


def redecide(
    purified_dir: Path, given: np.ndarray, num_classes: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(decision, new labels) by purify's rule again at retrain's own τ (`retrain.flag_threshold`): the
    same `purification.decide` on purify's posterior (``scores.npz``: `posterior_score`, `predicted`,
    `confidence`).

    Raises:
        LabelsieveError: the scores are missing, unreadable, of the wrong shape or out of range.
    """
    path = purified_dir / "scores.npz"
    fix = "set retrain.flag_threshold: null to train on purify's own decisions"
    fields = ("posterior_score", "predicted", "confidence")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            score, predicted, confidence = (arrays[name] for name in fields)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise LabelsieveError(
            f"{path} has no readable {', '.join(fields)} ({err}), which retrain.flag_threshold needs; {fix}"
        ) from err
    problems = [
        f"{name} must be of shape {given.shape}, got {array.shape}"
        for name, array in zip(fields, (score, predicted, confidence), strict=True)
        if array.shape != given.shape
    ]
    if not problems:
        if not (np.isfinite(score).all() and np.isfinite(confidence).all()):
            problems.append("posterior_score and confidence must be finite")
        if predicted.dtype.kind not in "iu" or not np.isin(predicted, np.arange(num_classes)).all():
            problems.append(f"predicted must be class indices in [0, {num_classes})")
    if problems:
        raise LabelsieveError(f"{path}: " + "; ".join(problems) + f"; {fix}")
    return purification.decide(
        given, score.astype(np.float64), predicted.astype(np.int64), confidence.astype(np.float64), threshold
    )


def initial_state(
    labels: TrainingLabels, num_classes: int, cfg: RetrainConfig, device: torch.device
) -> SampleState:
    """Soft targets, loss weights and the iterated ids (the module docstring's `dropped` and `distill`).

    A kept sample's target is onehot(label), mixed with the ensemble's prediction when `cfg.distill` > 0;
    a dropped one's is uniform with weight 0 (`unlabeled`) or the ensemble's prediction (`ensemble`).
    """
    decision = torch.from_numpy(labels.decision).to(device)
    kept = decision != DROP
    safe = torch.from_numpy(labels.labels).to(device).clamp(0, num_classes - 1)  # -1 would break one_hot
    targets = F.one_hot(safe, num_classes).float()
    ensemble = None if labels.probs is None else torch.from_numpy(labels.probs).to(device)
    if ensemble is not None and cfg.distill > 0:
        targets = (1.0 - cfg.distill) * targets + cfg.distill * ensemble
    if cfg.dropped == "ensemble" and ensemble is not None:
        targets = torch.where(kept[:, None], targets, ensemble)
        loss_weight = torch.ones(len(decision), device=device)
    else:
        targets = torch.where(kept[:, None], targets, torch.full_like(targets, 1.0 / num_classes))
        loss_weight = kept.float()
    ids = torch.arange(len(decision), device=device)
    train_ids = ids[loss_weight > 0] if cfg.dropped == "exclude" else ids
    if labels.noise_matrix is None:
        return SampleState(train_ids=train_ids, loss_weight=loss_weight, targets=targets)
    beta = cfg.distill if ensemble is not None else 0.0
    label_mass = (1.0 - beta) * kept.float()
    matrix = torch.from_numpy(labels.noise_matrix).float().to(device)
    return SampleState(train_ids, loss_weight, targets, safe, label_mass, matrix)


def starting_network(
    params: Params, data: TrainingData, ssl_dir: str | Path | None, device: torch.device
) -> Classifier:
    """The network retrain starts from: the first co-trained one (`init_from: ssl`) or a fresh one.

    Raises:
        LabelsieveError: `init_from` is ``ssl`` and `ssl_dir` holds no networks.
    """
    if params.retrain.init_from == "scratch":
        (model,) = loop.build_networks(params, data, 1, device)
        return model
    return co_trained(params, data, ssl_dir, device, key="retrain.init_from", value="ssl", other="scratch")[0]


def package_members(
    model: Classifier, params: Params, data: TrainingData, ssl_dir: str | Path | None, device: torch.device
) -> list[Classifier]:
    """The networks of the package: the retrained one, then with `retrain.package: ensemble` the co-trained.

    Raises:
        LabelsieveError: an ensemble package is asked for and `ssl_dir` holds no networks.
    """
    if params.retrain.package == "single":
        return [model]
    key = "retrain.package"
    return [model, *co_trained(params, data, ssl_dir, device, key=key, value="ensemble", other="single")]


def co_trained(
    params: Params,
    data: TrainingData,
    ssl_dir: str | Path | None,
    device: torch.device,
    *,
    key: str,
    value: str,
    other: str,
) -> list[Classifier]:
    """The ssl_train stage's networks, which `key: value` needs; `key: other` would not.

    Raises:
        LabelsieveError: `ssl_dir` holds no networks.
    """
    if ssl_dir is None or not (Path(ssl_dir) / "networks.json").is_file():
        raise LabelsieveError(
            f"{Path(ssl_dir or '') / 'networks.json'} is missing: {key}: {value} uses the ssl_train stage's "
            "networks. Run `labelsieve ssl-train` first (or pass its output as --ssl-dir), "
            f"or set {key}: {other}"
        )
    return loop.load_networks(ssl_dir, params, data, device)


def _start_digest(params: Params, ssl_dir: str | Path | None) -> str:
    """Identity of the starting weights, for the checkpoint key ("scratch" or the hash of net1.pt)."""
    if params.retrain.init_from == "scratch" or ssl_dir is None:
        return "scratch"
    return hashlib.sha256((Path(ssl_dir) / "net1.pt").read_bytes()).hexdigest()


def phase(epoch: int, cfg: RetrainConfig) -> Phase:
    """Which loss epoch `epoch` uses: CE warm-up, then ordinary mixup, then synthetic samples from e_s."""
    if epoch < cfg.warmup_epochs:
        return "ce"
    return "mixup" if epoch < cfg.synthetic_start else "synthetic"


@torch.no_grad()
def eval_pass(
    model: torch.nn.Module,
    data: TrainingData,
    ids: torch.Tensor,
    *,
    batch_size: int,
    features: bool,
    precision: str = "auto",
    shard: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (M, C) and, if asked, penultimate features (M, D) of training samples `ids` (M,).

    Eval mode and no augmentation, like the co-divide pass of §2.1; chunked over `ids` so only one batch
    of float images exists at a time. Data-parallel: each rank passes its block of `ids`, all-gathered
    (`shard` false: this process's pass over all of `ids`).
    """
    if shard and len(ids) >= distributed.world_size() > 1:
        block = distributed.row_block(len(ids))
        logits, feats = eval_pass(
            model,
            data,
            ids[block],
            batch_size=batch_size,
            features=features,
            precision=precision,
            shard=False,
        )
        gathered = distributed.gather_rows(logits, len(ids))
        return gathered, None if feats is None else distributed.gather_rows(feats, len(ids))
    was_training = model.training
    model.eval()
    logits, feats = [], []
    prefetch(data.train_images, ids.split(batch_size))
    for chunk in ids.split(batch_size):
        x = to_float(data.train_images[chunk], data.mean, data.std).contiguous(
            memory_format=torch.channels_last
        )
        with autocast(x.device, precision):
            f = model.features(x)
            logits.append(model.head(f).float())
        if features:
            feats.append(f.float())
    model.train(was_training)
    return torch.cat(logits), (torch.cat(feats) if features else None)


def clean_probabilities(logits: torch.Tensor, state: SampleState, *, seed: int) -> torch.Tensor:
    """GMM clean probability w (N,) of every labelled sample from its CE against argmax t (§2.1, §5).

    Args:
        logits: (M, C) eval-pass logits of ``state.train_ids``.
        seed: seed of the GMM initialisation.

    Returns:
        w (N,), 0 for samples without a label (dropped) or not trained on.
    """
    ids = state.train_ids
    losses = division.per_sample_loss(logits, state.targets[ids].argmax(dim=1))
    labelled = state.loss_weight[ids] > 0
    w = torch.zeros(len(state.loss_weight), device=logits.device)
    # Dropped samples have no label to measure a loss against; they stay out of the fit.
    w[ids[labelled]] = division.clean_probability(losses[labelled], seed=seed).float()
    return w


def weighted_soft_ce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of CE(z_b, t_b) over the rows of weight 1; rows of weight 0 (dropped, kept unlabeled) add nothing.

    Args:
        logits: (B, C); targets: (B, C) soft targets; weight: (B,) loss weight of each row's own sample.
    """
    # With every weight 1 both factors are exactly 1, so this is bit for bit soft_cross_entropy.
    scale = weight.numel() / weight.sum().clamp_min(1.0)
    return neighbours.soft_cross_entropy(logits, targets * weight[:, None]) * scale


def prepare_epoch(
    model: torch.nn.Module, data: TrainingData, state: SampleState, *, params: Params, epoch: int
) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, Any]]:
    """The start of an epoch after warm-up: eval pass, soft-target correction, GMM, dataset-wide kNN.

    Updates ``state.targets`` in place on correction epochs.

    Returns:
        ``(w, neighbour_table, record)``: w (N,) clean probabilities (None in CE epochs); for the
        dataset-wide search, (M, K') positions into ``state.train_ids`` of each sample's neighbours
        (None otherwise); and the figures to log.
    """
    cfg = params.retrain
    kind = phase(epoch, cfg)
    if kind == "ce":
        return None, None, {}
    dataset_knn = kind == "synthetic" and cfg.knn_scope == "dataset"
    batch_size = params.model.eval_batch_size
    logits, feats = eval_pass(
        model,
        data,
        state.train_ids,
        batch_size=batch_size,
        features=dataset_knn,
        precision=params.runtime.precision,
    )
    record: dict[str, Any] = {"corrected": False, "target_shift": 0.0}
    if kind == "synthetic" and neighbours.is_correction_epoch(
        epoch, cfg.synthetic_start, cfg.correction_period
    ):
        old = state.targets
        state.targets = neighbours.soft_target_update(
            old, F.softmax(logits, dim=1), state.train_ids, momentum=cfg.correction_momentum
        )
        # Total-variation distance moved per sample: measured, not inferred from the schedule.
        moved = (state.targets - old)[state.train_ids].abs().sum(dim=1).mean() / 2
        record.update(corrected=True, target_shift=float(moved))
    seed = int(numpy_rng(params.runtime.seed, "retrain", "gmm", str(epoch)).integers(0, 2**31 - 1))
    w = clean_probabilities(logits, state, seed=seed)
    record.update(_clean_figures(w, state, data))
    table = None
    if dataset_knn:
        k = min(cfg.neighbours - 1, len(state.train_ids) - 1)
        positions = torch.arange(len(state.train_ids), device=feats.device)
        chunk = max(1, KNN_DISTANCES_PER_CHUNK // len(state.train_ids))
        table = neighbours.knn_dataset(feats, feats, k, query_ids=positions, chunk_size=chunk)
    return w, table, record


def _clean_figures(w: torch.Tensor, state: SampleState, data: TrainingData) -> dict[str, float]:
    """Share of labelled samples the GMM calls clean and, with ground truth, how right argmax t is."""
    labelled = state.loss_weight > 0
    clean = (w > 0.5) & labelled
    out = {"clean_fraction": float(clean.sum() / labelled.sum())}
    if data.train_true_labels is not None:
        right = (state.targets.argmax(dim=1) == data.train_true_labels) & labelled
        out["target_accuracy"] = float(right.sum() / labelled.sum())
        out["clean_precision"] = float((right & clean).sum() / clean.sum().clamp_min(1))
    return out


def synthetic_batch(
    model: torch.nn.Module,
    data: TrainingData,
    state: SampleState,
    pos: torch.Tensor,
    *,
    w: torch.Tensor,
    table: torch.Tensor | None,
    params: Params,
    generators: loop.Generators,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic inputs (B, c, H, W) and targets (B, C) for the batch at positions `pos` of train_ids (§5).

    Batch scope: neighbours among the batch by the features of a no-grad forward of its augmented views
    (eval mode, so the BatchNorm running statistics are not updated twice per step). Dataset scope:
    neighbours from `table`, fetched and augmented independently of their own appearance as a sample.
    """
    cfg = params.retrain
    idx = state.train_ids[pos]  # (B,) sample ids
    if table is None:
        x = loop.views(data.train_images[idx], params.model, data.mean, data.std, generators.device)
        model.eval()
        with torch.no_grad(), autocast(x.device, params.runtime.precision):
            feats = model.features(x)  # (B, D)
        model.train()
        nbr = neighbours.knn_within_batch(feats, min(cfg.neighbours - 1, len(idx) - 1))  # (B, K') rows of x
        nbr_ids = idx[nbr]
        pool_targets = state.targets[idx]
    else:
        nbr_ids = state.train_ids[table[pos]]  # (B, K') sample ids
        pool = torch.cat([idx, nbr_ids.flatten()])  # the batch first, then its neighbours
        x = loop.views(data.train_images[pool], params.model, data.mean, data.std, generators.device)
        nbr = len(idx) + torch.arange(nbr_ids.numel(), device=idx.device).view_as(nbr_ids)
        pool_targets = state.targets[pool]
    lam = neighbours.mixing_weights(w[idx], w[nbr_ids])  # (B, K)
    x_mixed, t_mixed = neighbours.synthesize(x, pool_targets, nbr, lam)
    return x_mixed.contiguous(memory_format=torch.channels_last), t_mixed


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    state: SampleState,
    *,
    params: Params,
    epoch: int,
    w: torch.Tensor | None,
    table: torch.Tensor | None,
    generators: loop.Generators,
) -> dict[str, float]:
    """One pass over ``state.train_ids`` with the loss of this epoch's phase; returns the mean loss.

    Data-parallel: each rank takes its slice of every batch (`distributed.shard`); mixup partners and
    in-batch neighbours come from that slice.
    """
    cfg, model_cfg = params.retrain, params.model
    kind = phase(epoch, cfg)
    device = state.targets.device
    model.train()
    trainer = distributed.wrap(model)
    order = distributed.shard(loop.batches(len(state.train_ids), model_cfg.batch_size, generators.cpu))
    prefetch(data.train_images, [pos for pos, _ in order], ids=state.train_ids)
    steps, total = len(order), 0.0
    desc = f"retrain {epoch + 1}/{cfg.epochs} {kind}"
    for step, (pos, size) in enumerate(progress(order, total=steps, desc=desc, mode=params.runtime.progress)):
        loop.set_lr(optimizer, loop.lr_at(epoch + step / steps, model_cfg, cfg.epochs))
        pos = pos.to(device)
        idx = state.train_ids[pos]
        if kind == "synthetic":
            x, t = synthetic_batch(
                model, data, state, pos, w=w, table=table, params=params, generators=generators
            )
        else:
            x = loop.views(data.train_images[idx], model_cfg, data.mean, data.std, generators.device)
            t = state.targets[idx]
            if kind == "mixup":
                lam = mixmatch.sample_lambda(cfg.mixup_alpha, generators.cpu)
                perm = loop.local_permutation(torch.randperm(size, generator=generators.cpu)).to(device)
                x, t = mixmatch.mix(x, t, lam, perm)
        with autocast(x.device, params.runtime.precision):
            logits = trainer(x).float()
        weight = state.loss_weight[idx]
        if state.noise_matrix is not None and kind == "ce":  # mixed targets mix label and belief: not split
            a = state.label_mass[idx, None] * F.one_hot(state.labels[idx], t.shape[1]).float()
            raw = forward.forward_corrected_ce(logits, a, t - a, weight, state.noise_matrix)
        else:
            raw = weighted_soft_ce(logits, t, weight)
        loss = distributed.scaled(raw, len(idx), size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return {"loss": distributed.mean(total) / max(steps, 1)}


def run_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    state: SampleState,
    *,
    params: Params,
    epoch: int,
    generators: loop.Generators,
) -> dict[str, Any]:
    """One retrain epoch: `prepare_epoch` then `train_epoch`; returns the record to log (no evaluation)."""
    w, table, figures = prepare_epoch(model, data, state, params=params, epoch=epoch)
    result = train_epoch(
        model, optimizer, data, state, params=params, epoch=epoch, w=w, table=table, generators=generators
    )
    return {"kind": phase(epoch, params.retrain), **result, **figures}


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    purified_dir: str | Path | None,
    ssl_dir: str | Path | None = None,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Train the deployable network for `params.retrain.epochs` epochs; resumable from a per-epoch checkpoint.

    Args:
        purified_dir: the purify stage's output; read only when `retrain.use_purified` is true.
        ssl_dir: the ssl_train stage's output; read only when `retrain.init_from` is ``ssl``.

    Raises:
        LabelsieveError: the purified labels or the networks to start from are missing or do not fit.
    """
    cfg = params.retrain
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    labels = read_labels(params, data, purified_dir)
    state = initial_state(labels, data.num_classes, cfg, device)
    model = starting_network(params, data, ssl_dir, device)
    optimizer = loop.make_optimizer(model, params.model)
    generators = loop.Generators(params.runtime.seed, "retrain", device)
    checkpoint = Checkpoint(
        out_dir,
        {
            "stage": "retrain",
            "data": data.key,
            "labels": labels.digest,
            "start": _start_digest(params, ssl_dir),
            "model": params.model,
            "retrain": cfg,
            "seed": params.runtime.seed,
        },
    )
    start, history = 0, []
    if (saved := checkpoint.load()) is not None:
        start, history = loop.restore_training_state(saved, [model], [optimizer], generators)
        state.targets = saved["targets"].to(device)
    counts = {
        "samples": len(state.train_ids),
        "kept": int((state.loss_weight > 0).sum()),
        "relabelled": int((labels.decision == RELABEL).sum()),
        "dropped": int((labels.decision == DROP).sum()),
    }
    for epoch in range(start, cfg.epochs):
        generators.begin_epoch(epoch)
        with loop.Timer() as timer:
            record = run_epoch(
                model, optimizer, data, state, params=params, epoch=epoch, generators=generators
            )
        record = {
            "epoch": epoch,
            **record,
            "kept": counts["kept"],
            "train_seconds": timer.seconds,
            **loop.evaluate([model], data, params),
        }
        history.append(record)
        loop.log_epoch("retrain", record)
        state_dict = loop.training_state([model], [optimizer], generators, epoch, history)
        checkpoint.save({**state_dict, "targets": state.targets.cpu()})
    last = history[-1] if history else loop.evaluate([model], data, params)
    best = loop.best_epoch(history)
    metrics = {
        "epochs": cfg.epochs,
        "labels": labels.source,
        **counts,
        "val_acc": last["val_acc"],
        "test_acc": last["test_acc"],
        "best_val_epoch": best.get("epoch"),
        "best_val_test_acc": best.get("test_acc"),
    }
    members = package_members(model, params, data, ssl_dir, device)
    if len(members) > 1:
        figures = loop.evaluate(members, data, params)
        metrics |= {"package_val_acc": figures["val_acc"], "package_test_acc": figures["test_acc"]}
    metrics["package_members"] = len(members)
    trained = torch.zeros(len(state.loss_weight), dtype=torch.bool, device=device)
    trained[state.train_ids] = True
    if distributed.is_main():
        with atomic_dir(out_dir) as tmp:
            save_package(tmp, members, params=params, data=data, metrics=metrics)
            write_json(tmp / "history.json", history)
            write_npz(
                tmp / "soft_targets.npz",
                targets=state.targets.cpu().numpy(),
                trained=trained.cpu().numpy(),
                loss_weight=state.loss_weight.cpu().numpy(),
            )
    checkpoint.clear()  # waits for rank 0's outputs
    return {**(history[-1] if history else {}), **metrics}
