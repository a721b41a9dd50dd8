"""Print where the main job's report is and its headline numbers (the last lines of `make run`)."""

from __future__ import annotations

import json
from pathlib import Path

EVALUATE = Path("artifacts") / "evaluate"
TIMINGS = Path("metrics") / "timings.json"  # wall-clock seconds per stage, kept out of cached outputs


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> None:
    """Read the evaluate stage's evaluation.json and print the run in a few lines."""
    evaluation = json.loads((EVALUATE / "evaluation.json").read_text())
    metrics = evaluation["metrics"]
    seconds = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {}
    noise = evaluation["noise"]
    actual = "" if noise["actual_noise_rate"] is None else f", actual rate {noise['actual_noise_rate']:.3f}"
    print(f"noise: {noise['mode']} {noise['rate']}{actual}")
    for name, figures in evaluation["stages"].items():
        print(
            f"{name:>16}: {figures['epochs_run']:>2} epochs,"
            f" last-epoch test accuracy {_fmt(figures['test_acc'])}"
            f" (best noisy-val epoch {figures['best_val_epoch']}: {_fmt(figures['best_val_test_acc'])})"
            + (f", {seconds[name]:.0f} s" if name in seconds else "")
        )
    print(
        f"final model ({evaluation['final_stage']}): test accuracy {_fmt(metrics.get('test_acc'))}, "
        f"at the noisy-val epoch {_fmt(metrics.get('test_acc_best_val_epoch'))}, "
        f"macro F1 {_fmt(metrics.get('test_macro_f1'))}"
    )
    purify = evaluation["purify"]
    if purify.get("decisions"):
        print(f"purify: {purify['decisions']}")
    if "detection.f1" in metrics:
        print(
            f"noise detection: precision {_fmt(metrics['detection.precision'])}, recall "
            f"{_fmt(metrics['detection.recall'])}, F1 {_fmt(metrics['detection.f1'])}, AUROC "
            f"{_fmt(metrics['detection.auroc'])}, "
            f"relabel accuracy {_fmt(metrics.get('detection.relabel_accuracy'))}"
        )
        print(
            f"label noise of the training labels: {_fmt(metrics.get('noise_rate_actual'))} -> "
            f"{_fmt(metrics.get('noise_rate_after_purify'))}"
        )
    print(f"model package: {evaluation['final_model'] if evaluation['final_stage'] == 'retrain' else '-'}")
    print("purified manifest: artifacts/purified/manifest.csv")
    print(f"report: {(EVALUATE / 'report.html').resolve()}")


if __name__ == "__main__":
    main()
