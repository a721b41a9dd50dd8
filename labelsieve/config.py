"""Typed params: `params.yaml` + preset overlays + `--set` overrides -> frozen dataclasses.

One loader validates everything and reports every problem at once, each with the key's full path,
the value given and what is allowed, e.g. ``inject_noise.rate: 1.3 is outside [0, 1)``.

Layout: one section per stage (named like the stage) plus `data`, `model` and `runtime`. Stages read
only their own section and the shared ones. Presets are YAML overlays in `labelsieve/presets/`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from labelsieve.errors import LabelsieveError

PRESET_DIR = Path(__file__).with_name("presets")
PRESETS_KEY = "presets"  # params.yaml's top-level list of presets to apply


class ConfigError(LabelsieveError, ValueError):
    """Params that fail validation. `problems` lists one message per bad key."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid params:\n  " + "\n  ".join(problems))


def bounded(
    default: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    hi_open: bool = False,
    lo_open: bool = False,
    doc: str = "",
) -> Any:
    """A numeric field restricted to [lo, hi] (either end may be open or absent)."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open), "doc": doc})


def pattern(default: str, regex: str, *, doc: str = "") -> Any:
    """A string field that must fully match `regex`."""
    return field(default=default, metadata={"pattern": regex, "doc": doc})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """How images are stored; every stage that reads pixels relies on it."""

    image_size: int = bounded(28, 4, 1024, doc="px; side of the square stored images")
    channels: Literal[1, 3] = 1  # 1 = grayscale (L), 3 = RGB


@dataclass(frozen=True)
class ModelConfig:
    """The network every training stage builds, and how it is optimised and augmented.

    The learning rate follows one schedule over the whole budget (warm-up epochs + SSL epochs), so a
    method split over several stages sees the same schedule as plain CE with the same budget.
    """

    name: Literal["small_cnn", "preact_resnet18", "tv_resnet18", "tv_resnet50"] = "small_cnn"
    pretrained_path: str | None = None  # local state-dict file; never downloaded at run time
    batch_size: int = bounded(128, 1, 65536, doc="samples per step in CE-style epochs")
    lr: float = bounded(0.1, 0.0, 10.0, lo_open=True, doc="peak learning rate")
    schedule: Literal["onecycle", "step", "constant"] = "onecycle"  # step: lr/10 at half the budget
    warmup_fraction: float = bounded(0.25, 0.0, 1.0, hi_open=True, doc="onecycle: share of the budget rising")
    momentum: float = bounded(0.9, 0.0, 1.0, hi_open=True)
    nesterov: bool = True
    weight_decay: float = bounded(5e-4, 0.0, 1.0)
    crop_padding: int = bounded(2, 0, 64, doc="px; random-crop padding")
    flip: bool = True  # random horizontal flips (off for digits)
    eval_batch_size: int = bounded(
        256, 1, 1 << 20, doc="samples per no-grad forward (256 was fastest on CPU)"
    )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the stages run. Results depend on `seed` only, never on wall-clock or order."""

    seed: int = bounded(0, 0, 2**31 - 1)
    device: str = pattern("auto", r"auto|cpu|cuda(:\d+)?")
    threads: int = bounded(0, 0, 512, doc="torch intra-op threads; 0 keeps torch's default")
    progress: Literal["auto", "always", "never"] = "auto"  # auto: only when stderr is a terminal
    compile: bool = False  # torch.compile the networks
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on CUDA and on CPUs with native bf16
    # resident: every split on the device; stream: images stay memory-mapped and arrive per batch (data larger
    # than the device); auto: resident when they fit in half the free device (or host) memory
    data_path: Literal["auto", "resident", "stream"] = "auto"


@dataclass(frozen=True)
class IngestConfig:
    """`ingest`: read a source into the dataset store (see labelsieve/data/store.py)."""

    # fashion-mnist | digits | path to an image folder | path to a .csv/.jsonl manifest | s3://bucket/prefix
    source: str = "fashion-mnist"
    fashion_mnist_dir: str = "/usr/share/datasets/fashion-mnist"  # IDX files; downloaded when absent
    download: bool = True  # download Fashion-MNIST from `download_url` when the directory lacks it
    download_url: str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    cache_dir: str = "~/.cache/labelsieve"  # where downloads are kept
    classes: list[str] | None = None  # explicit class list; default: sorted labels found
    val_fraction: float = bounded(0.05, 0.0, 0.5, hi_open=True, doc="share of train held out, stratified")
    test_fraction: float = bounded(
        0.2, 0.0, 0.9, lo_open=True, doc="used only if the source has no test split"
    )
    per_class_limit: int = bounded(0, 0, None, doc="keep the first n train images of each class; 0 = all")
    max_image_pixels: int = bounded(50_000_000, 1, None, doc="decoded width*height above this is a bomb")
    workers: int = bounded(0, 0, 64, doc="decode threads; 0 = one per CPU core")
    # An existing dataset directory to add the source's new images to (retraining on a new crawl): images
    # already there (same content hash) are skipped, old samples keep their split, label and index, and
    # new ones are split by the same seeded rules. None: build the dataset from the source alone. A run with
    # --crawl-root keeps it as the accumulated store: a folder or an s3:// prefix (labelsieve/crawls.py).
    append_to: str | None = None
    min_class_size: int = bounded(
        2, 1, None, doc="a class with fewer usable samples outside the test split is dropped and reported"
    )
    # false: a class left empty or under min_class_size is dropped with a warning (an error only if no class
    # is left), and appending a crawl with classes the dataset lacks adds them with a warning. true: both
    # are errors naming the classes.
    strict_classes: bool = False
    near_duplicate_bits: int = bounded(
        14, -1, 195, doc="a train image within this Hamming distance of a test image's hash leaks; -1 = off"
    )


@dataclass(frozen=True)
class InjectNoiseConfig:
    """`inject_noise`: synthetic label noise for benchmarks (docs/algorithms.md §1); rate 0 passes through."""

    mode: Literal["symmetric", "symmetric_exclusive", "asymmetric", "pairflip", "instance"] = "symmetric"
    rate: float = bounded(0.0, 0.0, 1.0, hi_open=True, doc="share of samples whose label is redrawn")
    class_map: Literal["fashion_mnist", "cifar10", "cifar100", "custom"] = "fashion_mnist"  # asymmetric
    custom_map: dict[str, str] = field(
        default_factory=dict
    )  # class name -> class name, for class_map: custom


@dataclass(frozen=True)
class WarmupConfig:
    """`warmup`: train the networks on the full noisy set (docs/algorithms.md §3.1)."""

    epochs: int = bounded(3, 0, 100_000)
    networks: Literal[1, 2] = 2  # 1 for plain CE
    loss: Literal["mixup", "ce"] = "mixup"  # mixup: SMR; ce: DivideMix / plain CE
    alpha: float = bounded(4.0, 0.0, None, lo_open=True, doc="Beta(alpha, alpha) of the mixup loss")
    confidence_penalty: float = bounded(
        0.0, 0.0, None, doc="weight of +NE(p); DivideMix uses 1 at asym noise"
    )
    # "": fresh networks (seeded). "latest": every network starts from the weights of the model publish.to's
    # latest.json names (a fresh head where the classes changed); fresh networks while none is published.
    init_from: Literal["", "latest"] = ""


@dataclass(frozen=True)
class CoDivideConfig:
    """`co_divide`: per-sample losses -> 2-component GMM -> clean probability (§2.1)."""

    threshold: float = bounded(0.5, 0.0, 1.0, lo_open=True, hi_open=True, doc="tau; labeled if w > tau")
    history: int = bounded(
        0, 0, 100, doc="average the normalised losses of the last this many epochs, this one included"
    )
    per_class: bool = False  # normalise the losses and fit one GMM per given class (class-balanced)
    gmm_max_iter: int = bounded(10, 1, 10_000)
    gmm_tol: float = bounded(1e-2, 0.0, None, lo_open=True)
    gmm_reg_covar: float = bounded(5e-4, 0.0, None)


@dataclass(frozen=True)
class SslTrainConfig:
    """`ssl_train`: DivideMix co-training epochs with SMR recalibration (§2.2, §3.2)."""

    epochs: int = bounded(12, 0, 100_000)
    batch_size: int = bounded(64, 1, 65536, doc="B, labeled (and unlabeled) samples per step")
    alpha: float = bounded(4.0, 0.0, None, lo_open=True, doc="Beta(alpha, alpha) of MixMatch")
    temperature: float = bounded(0.5, 0.0, None, lo_open=True, doc="T, sharpening temperature")
    lambda_u: float = bounded(25.0, 0.0, None, doc="weight of L_u; 0 = web-scale variant")
    lambda_u_ramp_epochs: float = bounded(16.0, 0.0, None, lo_open=True)
    prior_weight: float = bounded(1.0, 0.0, None, doc="weight of the uniform-prior term L_reg")
    recalibration_period: int = bounded(6, 0, 100_000, doc="P: every P-th epoch is plain CE; 0 = off")
    recalibration_until: float = bounded(
        1.0, 0.0, 1.0, doc="no recalibration after this share of the SSL epochs (published: 1, none barred)"
    )
    recalibration_fraction: float = bounded(
        1.0, 0.0, 1.0, lo_open=True, doc="share of a recalibration epoch's batches trained (published: 1)"
    )


@dataclass(frozen=True)
class GroupRegularizeConfig:
    """`group_regularize`: GRIP fine-tuning with class soft labels and maximum entropy (§4)."""

    epochs: int = bounded(3, 0, 100_000, doc="0 passes the networks through")
    lr: float = bounded(0.01, 0.0, 10.0, lo_open=True, doc="peak lr; linear warm-up then cosine to 0")
    # grip: GRIP's own lr shape (`lr`, `lr_warmup_epochs`); continue: these epochs are the tail of the model's
    # schedule, whose budget then spans warmup + ssl_train + these epochs (`Params.total_epochs`).
    schedule: Literal["grip", "continue"] = "grip"
    lr_warmup_epochs: int = bounded(
        0, 0, 100_000, doc="linear lr warm-up; 0: the networks arrive trained, no re-warm"
    )
    soft_weight: float = bounded(0.5, 0.0, 1.0, doc="w: weight of the soft-label CE")
    entropy_weight: float = bounded(0.5, 0.0, None, doc="gamma: weight of +NE(p)")
    threshold_alpha: float = bounded(0.5, 0.0, None, doc="JS threshold = mean + alpha * std")
    relabel_tau: float = bounded(
        0.04, 0.0, 1.0, doc="JS (base 2) to S[argmax] below which a sample is revised"
    )
    momentum: float = bounded(0.5, 0.0, 1.0, doc="m: soft-label EMA weight of the old matrix")
    warmup_epochs: int = bounded(5, 1, 100_000, doc="E_warm: purification starts at epoch E_warm - 1")


@dataclass(frozen=True)
class PurifyConfig:
    """`purify`: keep / relabel / drop for every training sample (docs/purification.md)."""

    # Which training-dynamics average feeds confident learning: every co-divide's prediction, or only
    # those of the networks that trained on a guessed label for the sample (README, Purification).
    pred_probs: Literal["dynamics", "held_out"] = "dynamics"
    # Whose final prediction is the relabel target: the GRIP fine-tuned networks or the co-trained ones.
    relabel_from: Literal["group", "ssl"] = "ssl"
    # τ: flag a sample whose label is wrong with at least this posterior probability (docs/purification.md);
    # the same default as `labelsieve.maths.purification.WRONG_THRESHOLD`, the in-memory API's.
    flag_threshold: float = bounded(0.4, 0.0, 1.0, lo_open=True, hi_open=True, doc="τ, a probability")


@dataclass(frozen=True)
class RetrainConfig:
    """`retrain`: SSSL, one deployable network with neighbour synthetic samples and soft targets (§5)."""

    epochs: int = bounded(15, 0, 100_000)
    use_purified: bool = True  # labels from the purify manifest; false: the raw noisy labels (sssl preset)
    dropped: Literal["exclude", "unlabeled", "ensemble"] = "exclude"  # unlabeled: loss weight zero;
    # ensemble: kept, with the co-trained ensemble's prediction as target
    distill: float = bounded(
        0.0, 0.0, 1.0, doc="β: weight of the ensemble's prediction in each kept target (distillation)"
    )
    init_from: Literal["scratch", "ssl"] = "scratch"  # ssl: fine-tune the first co-trained network
    package: Literal["single", "ensemble"] = "single"  # ensemble: + the co-trained networks, mean logits
    flag_threshold: float | None = bounded(
        None, 0.0, 1.0, lo_open=True, hi_open=True, doc="τ of the labels retrain learns; null: purify's"
    )
    warmup_epochs: int = bounded(1, 0, 100_000, doc="CE epochs first (published 10 of 300)")
    mixup_alpha: float = bounded(1.0, 0.0, None, lo_open=True, doc="ordinary mixup until synthetic_start")
    synthetic_start: int = bounded(
        3, 0, 100_000, doc="e_s: first epoch of neighbour mixing (published 60 of 300)"
    )
    neighbours: int = bounded(2, 2, 64, doc="K: the sample and its K-1 nearest neighbours")
    knn_scope: Literal["batch", "dataset"] = "batch"
    correction_period: int = bounded(
        2, 1, 100_000, doc="soft-target correction every this many epochs from e_s"
    )
    correction_momentum: float = bounded(0.9, 0.0, 1.0, doc="m: t <- m t + (1 - m) softmax(z)")
    forward_correction: float = bounded(
        0.5, 0.0, 1.0, doc="λ: learn each label through λ T_r + (1 − λ) I (docs/algorithms.md §5.2); 0: off"
    )


@dataclass(frozen=True)
class EvaluateConfig:
    """`evaluate`: metrics, plots and the HTML report of the whole run."""

    gallery_size: int = bounded(24, 0, 1000, doc="most suspicious training samples shown in the report")
    thumbnail_px: int = bounded(64, 8, 512, doc="px; side of each gallery thumbnail (nearest upscaling)")


@dataclass(frozen=True)
class PublishConfig:
    """`publish` (a pipeline step after evaluate, not a DVC stage): gate the retrained model, publish it."""

    to: str = ""  # folder or s3://bucket/prefix of published models (models/<version>/, latest.json); "": off
    max_drop: float = bounded(
        0.01, 0.0, 1.0, doc="refuse a model whose test accuracy is more than this below the published one's"
    )


@dataclass(frozen=True)
class Params:
    """Every section of params.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    inject_noise: InjectNoiseConfig = field(default_factory=InjectNoiseConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    co_divide: CoDivideConfig = field(default_factory=CoDivideConfig)
    ssl_train: SslTrainConfig = field(default_factory=SslTrainConfig)
    group_regularize: GroupRegularizeConfig = field(default_factory=GroupRegularizeConfig)
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)

    @property
    def total_epochs(self) -> int:
        """The epoch budget the model's learning-rate schedule spans: warm-up plus SSL epochs, plus the GRIP
        epochs when they continue that schedule (`group_regularize.schedule: continue`)."""
        grip = self.group_regularize.epochs if self.group_regularize.schedule == "continue" else 0
        return self.warmup.epochs + self.ssl_train.epochs + grip

    def to_dict(self) -> dict[str, Any]:
        """The resolved params as plain YAML-able data."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- loading


def load_params(
    path: str | Path | None = "params.yaml",
    *,
    presets: typing.Sequence[str] = (),
    overrides: typing.Sequence[str] = (),
) -> Params:
    """Load params: the file (or defaults if `path` is None), then presets in order, then overrides.

    The file's top-level ``presets`` list (e.g. ``presets: [digits]``, or ``dvc exp run -S
    'presets=[digits]'``) is applied first, before `presets`.

    Args:
        path: a params.yaml; None starts from the built-in defaults.
        presets: names of overlays in `labelsieve/presets/` applied in order, after the file's.
        overrides: ``section.key=value`` strings; the value is parsed as YAML.

    Raises:
        ConfigError: listing every invalid key, value, override and unknown preset at once.
        FileNotFoundError: if the params file does not exist.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    problems: list[str] = []
    listed = raw.pop(PRESETS_KEY, None) or []
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        problems.append(f"{PRESETS_KEY}: {listed!r} must be a list of preset names")
        listed = []
    for name in [*listed, *presets]:
        preset_path = PRESET_DIR / f"{name}.yaml"
        if not preset_path.is_file():
            available = ", ".join(preset_names()) or "none"
            problems.append(f"--preset {name!r}: unknown preset; available: {available}")
            continue
        raw = _deep_merge(raw, _read_yaml(preset_path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            problems.append(f"--set {item!r}: expected section.key=value")
            continue
        *parents, leaf = key.strip().split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {item!r}: {part} is not a section")
                break
        else:
            try:
                node[leaf] = yaml.safe_load(text) if text.strip() else ""
            except yaml.YAMLError as err:
                problems.append(f"--set {item!r}: the value is not valid YAML ({_yaml_problem(err)})")
    params = _build(Params, raw, "", problems)
    if problems:
        raise ConfigError(problems)
    return params


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A one-line reason for a YAML error (PyYAML's own message spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at column {mark.column + 1}" if mark is not None else problem


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a nested dict against `Params`, collecting every problem before raising."""
    problems: list[str] = []
    params = _build(Params, raw, "", problems)
    if problems:
        raise ConfigError(problems)
    return params


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML: {err}"]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: top level must be a mapping of sections, got {type(data).__name__}"])
    return data


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    where = prefix.rstrip(".") or "params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            problems.append(f"{prefix}{key}: unknown key; allowed: {', '.join(names)}")
    values: dict[str, Any] = {}
    for name, spec in names.items():
        if name not in raw:
            continue
        path = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{path}.", problems)
            continue
        value, error = _coerce(raw[name], hint)
        error = error or _check_constraints(value, spec.metadata)
        if error:
            problems.append(f"{path}: {raw[name]!r} {error}")
        else:
            values[name] = value
    return cls(**values)


def _coerce(value: Any, hint: Any) -> tuple[Any, str | None]:
    """Check `value` against a type hint; returns (converted value, error or None)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None, None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner)
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value, None
        return value, f"is not one of {', '.join(repr(a) for a in args)}"
    if origin is list:
        if not isinstance(value, list):
            return value, "must be a list"
        out = []
        for item in value:
            converted, error = _coerce(item, args[0])
            if error:
                return value, f"has an item {item!r} that {error}"
            out.append(converted)
        return out, None
    if origin is dict:
        if not isinstance(value, dict):
            return value, "must be a mapping"
        out_map = {}
        for key, item in value.items():
            ck, key_error = _coerce(key, args[0])
            cv, value_error = _coerce(item, args[1])
            if key_error or value_error:
                return (
                    value,
                    f"has an entry {key!r}: {item!r} that is not {args[0].__name__}: {args[1].__name__}",
                )
            out_map[ck] = cv
        return out_map, None
    if hint is bool:
        return (value, None) if isinstance(value, bool) else (value, "must be true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value, None
        return value, "must be an integer"
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (float(value), None) if math.isfinite(value) else (value, "must be a finite number")
        return value, "must be a number"
    if hint is str:
        return (value, None) if isinstance(value, str) else (value, "must be a string")
    raise TypeError(f"unsupported params type {hint!r}")


def _check_constraints(value: Any, metadata: typing.Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "range" in metadata:
        lo, hi, lo_open, hi_open = metadata["range"]
        too_low = lo is not None and (value < lo or (lo_open and value == lo))
        too_high = hi is not None and (value > hi or (hi_open and value == hi))
        if too_low or too_high:
            left = "(" if lo_open or lo is None else "["
            right = ")" if hi_open or hi is None else "]"
            lo_text = "-inf" if lo is None else f"{lo:g}"
            hi_text = "inf" if hi is None else f"{hi:g}"
            return f"is outside {left}{lo_text}, {hi_text}{right}"
    if "pattern" in metadata and not re.fullmatch(metadata["pattern"], value):
        return f"does not match {metadata['pattern']}"
    return None
