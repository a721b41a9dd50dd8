"""The real-crawl path on a GPU (README "Real crawls with a pretrained backbone", issue 20): a synthetic RGB
crawl at 224 px, fine-tuned with the `web_resnet18` preset through every stage after ingest, once with the
training images resident on the device and once streamed from the store (`runtime.data_path`).

1. generate: N seeded 224 px PPM images in 10 class folders (`crawl_scale.generate`: a class pattern plus
   noise, so the task is easy and the figures are about the machinery, not about accuracy).
2. weights: a seeded `torchvision.models.resnet18(weights=None)` state dict, in the layout of torchvision's
   published ImageNet file, stands in for it: the GPU machine reaches no network, and the labelsieve stages
   never download.
3. ingest (timed), 40% symmetric noise, then the default pipeline (`labelsieve`: warm-up, co-divide, SSL,
   GRIP, purify, retrain, evaluate) with the preset's 224 px ResNet-18 and its optimiser, at few epochs
   (`--set` takes more), once per data path, each in this process (`quality.run_one`), the streamed one
   first, so that the process's one-off start-up costs (CUDA context, kernel loading) count against it.

Per path: the stage seconds, the median epoch seconds, the peak CUDA memory of the chain, the final test
accuracy and purify's detection figures. The two paths share the seed; on the CPU their results are identical
(`tests/engine/test_stream.py`); on a GPU the report says how far purify's decisions and the test accuracy
agree, since cuDNN's default kernels are not bit-reproducible. Writes web_finetune.json and web_finetune.md
to `--out`.

    python3 benchmarks/web_finetune.py --out DIR                  # on a GPU, a few minutes
    python3 benchmarks/web_finetune.py --smoke --out /tmp/web     # on the CPU: 32 px, 200 images
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.crawl_scale import generate  # noqa: E402
from benchmarks.environment import device_name, git_commit  # noqa: E402
from benchmarks.quality import run_one  # noqa: E402
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine.device import prepare_process, resolve_device  # noqa: E402
from labelsieve.stages import STAGES  # noqa: E402

PATHS = ("resident", "stream")
EPOCHS = ("warmup.epochs=1", "ssl_train.epochs=3", "group_regularize.epochs=1", "retrain.epochs=2")
SETTINGS = (
    "data.image_size={side}",
    "ingest.per_class_limit=0",
    "ingest.val_fraction=0.05",
    "ingest.test_fraction=0.2",
    "inject_noise.mode=symmetric",
    "inject_noise.rate=0.4",
    "runtime.progress=never",
)
SMOKE = ("model.batch_size=16", "ssl_train.batch_size=8", "model.eval_batch_size=64", "model.crop_padding=2")


def stand_in_weights(path: Path, seed: int) -> None:
    """A seeded ImageNet-layout ResNet-18 state dict (1000-class fc) at `path`."""
    from torchvision import models

    torch.manual_seed(seed)
    torch.save(models.resnet18(weights=None).state_dict(), path)


def decisions(run_dir: Path) -> list[tuple[str, str]]:
    """Purify's (decision, new label) per training sample, in manifest order."""
    with open(run_dir / "purified" / "manifest.csv", newline="") as handle:
        return [(row["decision"], row["new_label"]) for row in csv.DictReader(handle)]


def agreement(runs: dict[str, dict[str, Any]], work: Path) -> dict[str, Any]:
    """How far the two paths' results agree: purify's decisions and the headline accuracies."""
    first, second = (decisions(work / path) for path in PATHS)
    same = sum(a == b for a, b in zip(first, second, strict=True))
    scores = [dict(np.load(work / path / "purified" / "scores.npz")) for path in PATHS]
    return {
        "decisions_identical": first == second,
        "decision_agreement": same / len(first),
        "max_score_difference": {
            name: float(np.abs(scores[0][name].astype(np.float64) - scores[1][name]).max())
            for name in scores[0]
            if np.issubdtype(scores[0][name].dtype, np.floating)
        },
        "test_acc_difference": runs["stream"]["last_test_acc"] - runs["resident"]["last_test_acc"],
    }


def command_line(argv: list[str] | None) -> str:
    """This invocation as a command to rerun."""
    return " ".join(["python3 benchmarks/web_finetune.py", *(sys.argv[1:] if argv is None else argv)])


def _number(value: float | None, fmt: str) -> str:
    """`value` formatted, or "" when there is none (no GPU, nothing relabelled)."""
    return "" if value is None else format(value, fmt)


def markdown(result: dict[str, Any]) -> str:
    """web_finetune.md: the conditions, a row per data path and the agreement."""
    runs, agree = result["runs"], result["agreement"]
    lines = [
        f"# A {result['side']} px crawl fine-tuned with web_resnet18 on {result['device']}: "
        "resident and streamed",
        "",
        f"`{result['command']}`",
        "",
        f"{result['device']}; torch {result['torch']}; commit {result['commit']}; {result['images']} images "
        f"at {result['side']} px, ingest {result['ingest_seconds']:.1f} s; settings: "
        + ", ".join(f"`{s}`" for s in result["settings"]),
        "",
        "| path | wall s | warmup / ssl / grip / retrain s per epoch | peak CUDA MiB | test acc | "
        "F1 | AUROC | relabel acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in PATHS:
        r = runs[path]
        epochs = " / ".join(
            "" if r["epoch_seconds"].get(k) is None else f"{r['epoch_seconds'][k]:.2f}"
            for k in ("warmup", "ssl_train", "group_regularize", "retrain")
        )
        d = r["detection"] or {}
        detection = [_number(d.get(k), ".3f") for k in ("f1", "auroc", "relabel_accuracy")]
        lines.append(
            f"| {path} | {r['wall_seconds']:.1f} | {epochs} | {_number(r['peak_cuda_mib'], '.0f')} | "
            f"{100 * r['last_test_acc']:.2f} | " + " | ".join(detection) + " |"
        )
    ratio = runs["resident"]["wall_seconds"] / runs["stream"]["wall_seconds"]
    lines += [
        "",
        f"Stream / resident throughput over the chain (resident wall / stream wall): {ratio:.3f}. "
        f"Purify's decisions identical: {agree['decisions_identical']} "
        f"(agreement {agree['decision_agreement']:.4f}); test accuracy difference "
        f"{100 * agree['test_acc_difference']:+.2f} points.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Generate, ingest once, run the chain on each data path; write the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, help="crawl size (default 4,000; smoke 200)")
    parser.add_argument("--side", type=int, help="image side in px (default 224; smoke 32)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more params")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, on any device")
    parser.add_argument("--work", help="folder for the crawl and the runs (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    images = args.images or (200 if args.smoke else 4000)
    side = args.side or (32 if args.smoke else 224)
    settings = [s.format(side=side) for s in SETTINGS] + list(EPOCHS) + (list(SMOKE) if args.smoke else [])
    settings += [f"runtime.device={args.device}", *args.set]
    with tempfile.TemporaryDirectory(prefix="web-finetune-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        generate(work / "crawl", images, side=side)
        weights = work / "resnet18-stand-in.pth"
        stand_in_weights(weights, seed=0)
        common = [f"ingest.source={work / 'crawl'}", f"model.pretrained_path={weights}", *settings]
        params = load_params(REPO / "params.yaml", presets=["web_resnet18"], overrides=common)
        prepare_process(params.runtime.threads)
        device = resolve_device(params.runtime.device)
        cuda = device.type == "cuda"
        began = time.perf_counter()
        STAGES["ingest"].run(params, out_dir=work / "dataset")
        ingest_seconds = time.perf_counter() - began
        runs = {}
        for path in reversed(PATHS):  # streamed first: one-off CUDA start-up costs count against it
            overrides = [*common, f"runtime.data_path={path}"]
            run_params = load_params(REPO / "params.yaml", presets=["web_resnet18"], overrides=overrides)
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            runs[path] = run_one(run_params, work / "dataset", work / path)
            runs[path]["peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
            print(f"web_finetune: {path}: {runs[path]['wall_seconds']:.1f} s", file=sys.stderr, flush=True)
        result = {
            "command": command_line(argv),
            "device": device_name(device),
            "machine": platform.node(),
            "torch": torch.__version__,
            "commit": git_commit(),
            "images": images,
            "side": side,
            "settings": settings,
            "ingest_seconds": ingest_seconds,
            "runs": runs,
            "agreement": agreement(runs, work),
        }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "web_finetune.json", result)
    write_text(out / "web_finetune.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
