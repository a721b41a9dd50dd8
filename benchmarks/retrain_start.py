"""How should `retrain` inherit from the co-trained ensemble? Digits, four variants on the same upstream.

Per noise setting (``--noise``) and seed (``--seeds``), with `params.yaml`, the `digits` preset on top and
one thread, the stages before `retrain` run once; then `retrain` runs four ways on their outputs
(docs/algorithms.md §5.1):

- ``scratch``: a fresh network on the hard purified labels, dropped samples left out;
- ``scratch+distill``: a fresh network, targets ½ purified label + ½ ensemble prediction, dropped samples
  kept with the ensemble's prediction;
- ``ssl+distill``: the same targets, starting from ssl_train's first network (the `params.yaml` default's
  start and dropped samples; β is 0.5 here as when this study ran, the default is now 0.25, §5.1),
  also packaged with the co-trained networks (``ssl+distill package``: the mean logits of all three);
- ``ssl``: starting from that network, hard labels, dropped samples left out.

Each run's figures are retrain's last-epoch test and noisy-val accuracy; the ssl_train ensemble's last test
accuracy is recorded beside them. Writes `--out` (default benchmarks/results/retrain_start.json) with every
run and the mean and population std per setting and variant. Run from the repository root:

    uv run python benchmarks/retrain_start.py --seeds 0 1 2
    uv run python benchmarks/retrain_start.py --variants ssl+distill --noise sym40   # a subset
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from labelsieve.atomic import write_json
from labelsieve.config import load_params
from labelsieve.engine.device import apply_threads
from labelsieve.stages import STAGES

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"  # the defaults, as `dvc repro` runs them

VARIANTS = {
    "scratch": ["retrain.init_from=scratch", "retrain.distill=0", "retrain.dropped=exclude"],
    "scratch+distill": ["retrain.init_from=scratch", "retrain.distill=0.5", "retrain.dropped=ensemble"],
    # Packaged as an ensemble too, so the run also measures the retrained + co-trained networks together.
    "ssl+distill": [
        "retrain.init_from=ssl",
        "retrain.distill=0.5",
        "retrain.dropped=ensemble",
        "retrain.package=ensemble",
    ],
    "ssl": ["retrain.init_from=ssl", "retrain.distill=0", "retrain.dropped=exclude"],
}
NOISE = {
    "sym40": [],
    "sym60": ["inject_noise.rate=0.6"],
    "inst40": ["inject_noise.mode=instance"],
}


def run_setting(noise: str, seed: int, root: Path, variants: list[str]) -> dict[str, Any]:
    """The upstream stages once, then retrain per variant; the figures of each."""
    base = ["runtime.progress=never", "runtime.threads=1", f"runtime.seed={seed}", *NOISE[noise]]
    params = load_params(PARAMS, presets=["digits"], overrides=base)
    dirs: dict[str, Path] = {}
    for name, stage in STAGES.items():
        if name in ("retrain", "evaluate"):
            continue
        out = root / name
        stage.run(params, **{key: dirs[path] for key, path in stage.inputs.items()}, out_dir=out)
        dirs[stage.out_dir] = out
    history = json.loads((dirs[STAGES["ssl_train"].out_dir] / "history.json").read_text())
    epochs = history["epochs"] if isinstance(history, dict) else history
    figures: dict[str, Any] = {"noise": noise, "seed": seed, "ssl_ensemble_test_acc": epochs[-1]["test_acc"]}
    retrain = STAGES["retrain"]
    for variant in variants:
        variant_params = load_params(PARAMS, presets=["digits"], overrides=[*base, *VARIANTS[variant]])
        inputs = {key: dirs[path] for key, path in retrain.inputs.items()}
        result = retrain.run(variant_params, **inputs, out_dir=root / f"retrain-{variant}")
        figures[variant] = {"test_acc": result["test_acc"], "val_acc": result["val_acc"]}
        if "package_test_acc" in result:
            figures[f"{variant} package"] = {
                "test_acc": result["package_test_acc"],
                "val_acc": result["package_val_acc"],
            }
        print(json.dumps({"noise": noise, "seed": seed, "variant": variant, **figures[variant]}), flush=True)
    return figures


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population std of each variant's test accuracy (and the ensemble's) per noise setting."""
    out: dict[str, Any] = {}
    for noise in sorted({r["noise"] for r in runs}):
        rows = [r for r in runs if r["noise"] == noise]
        cell = {}
        for key in (*[k for k in rows[0] if isinstance(rows[0][k], dict)], "ssl_ensemble"):
            values = [r[key]["test_acc"] if key in r else r["ssl_ensemble_test_acc"] for r in rows]
            cell[key] = {"mean": statistics.mean(values), "std": statistics.pstdev(values), "n": len(values)}
        out[noise] = cell
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", nargs="+", default=list(NOISE), choices=list(NOISE))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrain_start.json"))
    args = parser.parse_args()
    apply_threads(1)
    runs = []
    with tempfile.TemporaryDirectory(prefix="labelsieve-retrain-start-") as tmp:
        for noise in args.noise:
            for seed in args.seeds:
                runs.append(run_setting(noise, seed, Path(tmp) / f"{noise}-seed{seed}", args.variants))
    summary = summarise(runs)
    write_json(Path(args.out), {"runs": runs, "summary": summary})
    for noise, cell in summary.items():
        line = ", ".join(f"{k} {v['mean'] * 100:.2f} ± {v['std'] * 100:.2f}" for k, v in cell.items())
        print(f"{noise}: {line}")


if __name__ == "__main__":
    main()
