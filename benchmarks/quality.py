"""Quality benchmark (docs/benchmarks.md): every method on every noise setting of the CPU profile.

The CPU profile is the Fashion-MNIST 10k subset with `small_cnn`, one seed and one epoch budget. Each
method is a preset (`labelsieve` is params.yaml as it is: the full pipeline). A run is the whole DAG,
the same registered stages `dvc repro` runs, in a fresh subprocess (so its peak RSS is its own) with its
artifacts in a temporary folder and the ingested dataset shared (ingested without the run's seed, so every
seed trains on the same splits). Per run it records, from the evaluate
stage: the last-epoch test accuracy of the final model, the test accuracy at the epoch chosen on the noisy
validation split, and purify's detection of the injected noise (F1, AUROC, relabel accuracy) for the
methods that co-divide or purify. Also the seconds per epoch of each training stage and its ratio to one
network's plain CE epoch in the same process (the CE warm-up, or SMR's recalibration epochs), each stage's
wall time, the whole run's wall time and peak RSS.

    uv run python benchmarks/quality.py                          # 7 methods x 4 settings (about 3 h, 2 cores)
    uv run python benchmarks/quality.py --methods ce,smr --noise sym50
    uv run python benchmarks/quality.py --table                  # only rewrite table.md from saved runs

Each finished run is saved to benchmarks/results/quality/<noise>-<method>.json with a key over its
resolved params; it is skipped next time unless the params changed (or --fresh), so the table can be
built over several sittings. table.md holds the per-run table and the method-by-noise summary the
README shows.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import cleanlab_peer  # noqa: E402
from benchmarks.environment import cpu_model, device_name, peak_rss_mib  # noqa: E402
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import Params, WarmupConfig, load_params, preset_names  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import prepare_process, resolve_device  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import purification  # noqa: E402
from labelsieve.stages import ARTIFACTS, STAGES, evaluate  # noqa: E402

NOISE = {
    "sym50": ["inject_noise.mode=symmetric", "inject_noise.rate=0.5"],
    "asym40": [
        "inject_noise.mode=asymmetric",
        "inject_noise.rate=0.4",
        "inject_noise.class_map=fashion_mnist",
    ],
    "inst40": ["inject_noise.mode=instance", "inject_noise.rate=0.4"],
    "sym80": ["inject_noise.mode=symmetric", "inject_noise.rate=0.8"],
}
METHODS = ("ce", "clean", "dividemix", "smr", "grip", "sssl", "cleanlab", "labelsieve")
# --methods also takes any other preset (e.g. the published smr_cifar10), run and tabled after these.
ALL_METHODS = (*METHODS, *(name for name in preset_names() if name not in METHODS))
PRESETS = {"labelsieve": [], "cleanlab": ["ce"]}  # every other method is the preset of its name
# Training stages: (stage, history folder under the run, the epoch kind whose time is reported).
TRAINING = (
    ("warmup", "warmup", None),
    ("ssl_train", "ssl", "mixmatch"),
    ("group_regularize", "group", None),
    ("retrain", "model", None),
)
RESULTS = REPO / "benchmarks" / "results" / "quality"


def method_params(base: Path, method: str, noise: str, overrides: list[str]) -> Params:
    """The resolved params of one run: base file, the method's preset, the noise setting, overrides."""
    noise_overrides = [] if method == "clean" else NOISE[noise]
    if method == "dividemix" and noise.startswith("asym"):  # DivideMix's warm-up at asymmetric noise
        noise_overrides = [*noise_overrides, "warmup.confidence_penalty=1.0"]
    presets = PRESETS.get(method, [method])
    return load_params(
        base, presets=presets, overrides=["runtime.progress=never", *noise_overrides, *overrides]
    )


def params_key(params: Params) -> str:
    """A short hash of the params a run reads (a saved run with another key is stale)."""
    text = json.dumps(params_read(params.to_dict()), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def params_read(resolved: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved params dict (`Params.to_dict`) that a run's figures depend on.

    A run without SSL epochs reads only `ssl_train.batch_size` of its section (co-divide's guard), so
    the runs of `ce`, `clean`, `grip` and `sssl` keep their key when the co-training params change. A
    stage with no epoch passes its input through, so only its `epochs` counts, and `retrain.flag_threshold`
    counts only when retrain trains on purified labels, `retrain.forward_correction` only when it is on.
    GRIP's own lr schedule counts as it did before `group_regularize.schedule` existed. Only a mixup
    warm-up reads `warmup.alpha`; other runs count it at its built-in default. A run with co-trained or
    GRIP networks reports purify's decisions, so it also counts the rule's version
    (`purification.RULE_VERSION`; without SSL epochs, and so without training dynamics,
    `RULE_VERSION_WITHOUT_DYNAMICS`) and, without SSL epochs, that the rule unmixes the networks'
    probabilities (`probs_from="noisy_labels"`).
    """
    read = copy.deepcopy(resolved)
    if read["ssl_train"]["epochs"] == 0:
        read["ssl_train"] = {k: read["ssl_train"][k] for k in ("epochs", "batch_size")}
    for section in ("group_regularize", "retrain"):
        if read[section]["epochs"] == 0:
            read[section] = {"epochs": 0}
    if not read["retrain"].get("use_purified", True):  # retrain's own τ re-decides purified labels only
        read["retrain"].pop("flag_threshold", None)
    if read["retrain"].get("forward_correction") == 0:  # off: as the runs from before the key
        read["retrain"].pop("forward_correction")
    if read["group_regularize"].get("schedule") == "grip":  # the only schedule before the key existed
        del read["group_regularize"]["schedule"]
    if read["warmup"]["loss"] != "mixup" or read["warmup"]["epochs"] == 0:
        read["warmup"]["alpha"] = WarmupConfig().alpha
    if read["ssl_train"]["epochs"] > 0:
        read["purify_rule"] = purification.RULE_VERSION
    elif read["group_regularize"]["epochs"] > 0:
        read["purify_rule"] = purification.RULE_VERSION_WITHOUT_DYNAMICS
        read["purify_probs_from"] = "noisy_labels"  # networks fitted to the given labels: probs unmixed
    return read


def run_one(params: Params, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """Run every registered stage after ingest into `run_dir`; returns the figures of the run."""
    stage_seconds = {}
    start = time.perf_counter()
    for stage in list(STAGES.values())[1:]:
        inputs = {key: _relocate(path, dataset, run_dir) for key, path in stage.inputs.items()}
        began = time.perf_counter()
        # The last stage, evaluate, returns metrics.json's figures plus final_stage.
        summary = stage.run(params, **inputs, out_dir=_relocate(stage.out_dir, dataset, run_dir))
        stage_seconds[stage.name] = time.perf_counter() - began
    wall = time.perf_counter() - start
    epoch_seconds = {}
    for name, folder, kind in TRAINING:
        history = evaluate.read_history(run_dir / folder)
        times = [h["train_seconds"] for h in history if kind is None or h.get("kind") == kind]
        epoch_seconds[name] = statistics.median(times) if times else None
    if epoch_seconds["warmup"] is not None:  # the warm-up trains each network in turn
        epoch_seconds["warmup"] /= params.warmup.networks
    ce_epoch = ce_epoch_seconds(params, run_dir)
    single = single_network_test_acc(params, summary["final_stage"], dataset, run_dir)
    detects = params.ssl_train.epochs > 0 or params.group_regularize.epochs > 0
    return {
        "final_stage": summary["final_stage"],
        "last_test_acc": summary["test_acc"],
        # absent when the noisy validation split is empty (tiny data): no epoch can be chosen
        "best_val_test_acc": summary.get("test_acc_best_val_epoch"),
        "best_val_epoch": summary.get("best_val_epoch"),
        "noise_rate_actual": summary.get("noise_rate_actual"),
        "detection": {k.split(".", 1)[1]: v for k, v in summary.items() if k.startswith("detection.")}
        | {"noise_rate_after": summary.get("noise_rate_after_purify")}
        if detects
        else None,
        "single_network_test_acc": single,
        "epoch_seconds": epoch_seconds,
        "ce_epoch_seconds": ce_epoch,
        "epoch_x_ce": {k: v / ce_epoch for k, v in epoch_seconds.items() if v and ce_epoch},
        "stage_seconds": stage_seconds,
        "wall_seconds": wall,
        "peak_rss_mb": peak_rss_mib(),
        "threads": torch.get_num_threads(),
    }


def single_network_test_acc(params: Params, final_stage: str, dataset: Path, run_dir: Path) -> float:
    """Test accuracy of the final stage's first network alone, beside the ensemble's: a like-for-like
    figure against one-network methods. The retrained model is one network already."""
    folder = {name: folder for name, folder, _ in TRAINING}[final_stage]
    if final_stage == "retrain":
        return evaluate.read_history(run_dir / folder)[-1]["test_acc"]
    device = resolve_device(params.runtime.device)
    data = TrainingData.load(dataset, run_dir / "labels", device)
    first = loop.load_networks(run_dir / folder, params, data, device)[:1]
    return loop.evaluate(first, data, params)["test_acc"]


def ce_epoch_seconds(params: Params, run_dir: Path) -> float | None:
    """One network's plain CE epoch in this run's own process, the unit of docs/benchmarks.md's ratios.

    It is the CE warm-up's epoch, else an SMR recalibration epoch (plain CE for each of the two networks);
    None when the run has neither (the mixup warm-up of a run without recalibration, or `sssl`).
    """
    if params.warmup.loss == "ce" and params.warmup.epochs > 0:
        history, networks = evaluate.read_history(run_dir / "warmup"), params.warmup.networks
    else:
        history, networks = evaluate.read_history(run_dir / "ssl"), 2
        history = [h for h in history if h.get("kind") == "recalibration"]
    times = [h["train_seconds"] / networks for h in history]
    return statistics.median(times) if times else None


def _same_run(out: Path, method: str, key: str) -> dict[str, Any] | None:
    """A saved run (another noise setting or method) with exactly these resolved params, if any.

    `cleanlab` resolves to the `ce` params but runs its own procedure, so it pairs only with itself.
    """
    for path in sorted(out.glob("*.json")):
        saved = json.loads(path.read_text())
        same_procedure = (saved.get("method") == "cleanlab") == (method == "cleanlab")
        if same_procedure and saved.get("params_key") == key:
            return saved
    return None


def _relocate(path: str, dataset: Path, run_dir: Path) -> Path:
    """A registry default path (artifacts/<name>) moved into the run folder; the dataset is shared."""
    name = Path(path).relative_to(ARTIFACTS)
    return dataset if str(name) == "dataset" else run_dir / name


def _cell(value: float | None, fmt: str = "{:.2f}", scale: float = 100.0) -> str:
    return "" if value is None else fmt.format(scale * value)


STALE = "†"  # marks a saved run whose params (or purify rule) differ from the current ones


def _mark(run: dict[str, Any] | None) -> str:
    return STALE if run and run.get("stale") else ""


def mean_std(values: list[float], fmt: str = "{:.2f}", scale: float = 100.0) -> str:
    """One run's value, or "mean ± std" (population std) over several seeds; "" when there is none."""
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return fmt.format(scale * values[0])
    return f"{fmt.format(scale * statistics.mean(values))} ± {fmt.format(scale * statistics.pstdev(values))}"


def table(results: list[dict[str, Any]]) -> str:
    """Markdown: the method-by-noise summary (mean ± std over the seeds run), then one row per run."""
    noises = [n for n in NOISE if any(r["noise"] == n for r in results)]
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in results)]
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["noise"], r["method"]), []).append(r)

    def row(label: str, noise: str, value: Any, fmt: str = "{:.2f}", scale: float = 100.0) -> str:
        entries = []
        for method in methods:
            runs = cells.get((noise, method), [])
            stale = STALE if any(r.get("stale") for r in runs) else ""
            text = mean_std([value(r) for r in runs], fmt, scale)
            count = f" (n={len(runs)})" if len(runs) > 1 else ""
            entries.append(text + count + stale if text else "")
        return f"| {noise}, {label} | " + " | ".join(entries) + " |"

    def detection(key: str) -> Any:
        return lambda r: (r.get("detection") or {}).get(key)

    lines = ["| setting | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for noise in noises:
        lines += [
            row("last epoch", noise, lambda r: r["last_test_acc"]),
            row("best noisy-val epoch", noise, lambda r: r["best_val_test_acc"]),
            row("one network, last epoch", noise, lambda r: r.get("single_network_test_acc")),
            row("detection F1", noise, detection("f1"), "{:.3f}", 1.0),
            row("detection AUROC", noise, detection("auroc"), "{:.3f}", 1.0),
            row("relabel accuracy", noise, detection("relabel_accuracy"), "{:.3f}", 1.0),
            row("noise left", noise, detection("noise_rate_after"), "{:.3f}", 1.0),
            row("noise matrix MAE", noise, detection("noise_matrix_mae"), "{:.3f}", 1.0),
        ]
    lines += [
        "",
        "| noise | method | seed | last-epoch acc | best-val acc | one-network acc | F1 | AUROC "
        "| relabel acc | noise after purify | epoch s per training stage | the same × this run's CE epoch "
        "| wall s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def order(r: dict[str, Any]) -> tuple[int, int, int]:
        return list(NOISE).index(r["noise"]), ALL_METHODS.index(r["method"]), r.get("seed", 0)

    for r in sorted(results, key=order):
        d = r["detection"] or {}
        epochs = " / ".join("-" if s is None else f"{s:.1f}" for s in r["epoch_seconds"].values())
        ratios = " / ".join(
            f"{r['epoch_x_ce'][k]:.2f}" if k in r.get("epoch_x_ce", {}) else "-" for k in r["epoch_seconds"]
        )
        line = [
            r["noise"],
            r["method"] + _mark(r),
            str(r.get("seed", 0)),
            _cell(r["last_test_acc"]),
            _cell(r["best_val_test_acc"]),
            _cell(r.get("single_network_test_acc")),
            _cell(d.get("f1"), "{:.3f}", 1),
            _cell(d.get("auroc"), "{:.3f}", 1),
            _cell(d.get("relabel_accuracy"), "{:.3f}", 1),
            _cell(d.get("noise_rate_after"), "{:.3f}", 1),
            epochs,
            ratios,
            f"{r['wall_seconds']:.0f}" + (" (resumed)" if r.get("resumed") else ""),
            f"{r['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(line) + " |")
    if any(r.get("resumed") for r in results):
        note = "(resumed): the run went on from a stopped run's checkpoints; its wall time is the rest."
        lines += ["", note]
    if any(r.get("stale") for r in results):
        lines += [
            "",
            f"{STALE} run with params or a purify rule older than the current ones: rerun it to refresh.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--noise", default=",".join(NOISE))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run"
    )
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="base params (copied at start)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; each cell is their mean ± std")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--fresh", action="store_true", help="rerun runs that already have results")
    parser.add_argument("--table", action="store_true", help="only rewrite table.md from the saved runs")
    parser.add_argument("--work", help="keep every run's artifacts in this folder (default: a temporary one)")
    parser.add_argument(
        "--one", nargs=4, metavar=("METHOD", "NOISE", "DATASET", "RUN_DIR"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:  # the child process of one run
        method, noise, dataset, run_dir = args.one
        params = method_params(Path(args.params), method, noise, args.set)
        prepare_process(params.runtime.threads)  # as every labelsieve command does
        if method == "cleanlab":
            figures = cleanlab_peer.run(params, Path(dataset), Path(run_dir))
            figures |= {"peak_rss_mb": peak_rss_mib(), "threads": torch.get_num_threads()}
        else:
            figures = run_one(params, Path(dataset), Path(run_dir))
        print(json.dumps(figures))
        return
    methods, noises = args.methods.split(","), args.noise.split(",")
    unknown = sorted(set(methods) - set(ALL_METHODS)) + sorted(set(noises) - set(NOISE))
    if unknown:
        parser.error(f"unknown method or noise setting: {', '.join(unknown)}")
    failed = []
    with _work_dir(args.work) as tmp:
        base = Path(tmp) / "params.yaml"
        base.write_bytes(Path(args.params).read_bytes())  # immune to edits while it runs
        runs = [(n, m, int(seed)) for n in noises for m in methods for seed in args.seeds.split(",")]
        for noise, method, seed in [] if args.table else runs:
            overrides = [*args.set, *([f"runtime.seed={seed}"] if seed else [])]
            params = method_params(base, method, noise, overrides)
            name = f"{noise}-{method}" + (f"-seed{seed}" if seed else "")
            key, path = params_key(params), out / f"{name}.json"
            saved = json.loads(path.read_text()) if path.is_file() else None
            if saved and saved.get("params_key") == key and not args.fresh:
                continue
            twin = _same_run(out, method, key) if not args.fresh else None
            if twin is not None:  # e.g. `clean` ignores the noise setting: one run serves them all
                source = twin.get("same_run_as", f"{twin['noise']}-{twin['method']}")
                write_json(
                    path, twin | {"method": method, "noise": noise, "seed": seed, "same_run_as": source}
                )
                continue
            # The dataset's splits are seeded by runtime.seed: ingest without the run's seed, so every seed of
            # every invocation trains on the same split however --seeds is ordered or divided.
            shared = method_params(base, method, noise, args.set)
            # A run stopped part-way (--work) resumes from its stages' checkpoints: its wall time is partial.
            run_dir = Path(tmp) / name
            resumed = run_dir.is_dir() and any(run_dir.iterdir())
            figures = run_in_child(shared, method, noise, overrides, base, Path(tmp), name)
            if figures is None:
                failed.append(name)
                continue
            result = {
                "method": method,
                "noise": noise,
                "seed": seed,
                "overrides": overrides,
                "params_key": key,
                "machine": f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"
                + gpu_name(params),
                **figures,
                **({"resumed": True} if resumed else {}),
            }
            write_json(path, result)
            print(json.dumps(result), flush=True)
        results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        for r in results:
            current = method_params(base, r["method"], r["noise"], r.get("overrides", []))
            r["stale"] = params_key(current) != r["params_key"]
    write_text(out / "table.md", table(results))
    print(table(results))
    if failed:
        sys.exit(f"quality: these runs failed (their errors are above): {', '.join(failed)}")


@contextlib.contextmanager
def _work_dir(keep: str | None) -> Iterator[str]:
    """The folder the runs write their artifacts to: `keep` (created, kept afterwards) or a temporary one."""
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="labelsieve-quality-") as tmp:
            yield tmp
    else:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield keep


def gpu_name(params: Params) -> str:
    """ ", <GPU name>" when the runs train on CUDA, else ""."""
    device = resolve_device(params.runtime.device)
    return f", {device_name(device)}" if device.type == "cuda" else ""


def run_in_child(
    ingest_params: Params, method: str, noise: str, overrides: list[str], base: Path, tmp: Path, name: str
) -> dict[str, Any] | None:
    """One run in a fresh process (its epochs log on stderr); its figures, or None if it failed.

    The dataset is ingested once, with `ingest_params` (the `--set` overrides without the run's seed), and
    shared by every run.
    """
    dataset = tmp / "dataset"
    if not dataset.exists():
        STAGES["ingest"].run(ingest_params, out_dir=dataset)
    command = [sys.executable, __file__, "--params", str(base), "--one", method, noise, str(dataset)]
    command += [str(tmp / name), *(f"--set={item}" for item in overrides)]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        print(f"quality: {name} failed with exit status {child.returncode}", file=sys.stderr)
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
