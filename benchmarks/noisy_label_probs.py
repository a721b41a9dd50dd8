"""The in-memory API on a cleanlab user's probabilities: k-fold out-of-sample CE, side by side with cleanlab.

`labelsieve.find_label_issues` is sold to people who already have predicted probabilities. Most have them
from K-fold cross-validation of a model trained with plain CE on the noisy labels: such a model learns the
noisy conditional P(ỹ | x), not the true class. This study computes exactly those probabilities
(`cleanlab_peer.cross_fit`: 5 folds of `small_cnn`, the `ce` preset's budget) and decides every sample
three ways on the same numbers:

- ``noisy_labels``: the API's default, which unmixes the probabilities through the estimated noise matrix
  before Bayes' rule (docs/purification.md, "Probabilities from a model fitted to the noisy labels");
- ``robust``: the same rule reading the probabilities as the true class, as the stage reads the
  co-trained networks' (the rule before `probs_from` existed);
- ``cleanlab``: `cleanlab.filter.find_label_issues` (prune by noise rate), a flagged sample relabelled to
  the argmax when it differs from the given label, as the `cleanlab` method of `quality.py` reports it.

Figures per run, against the training-set truth (never a test split): F1 and AUROC of the flags, the share
relabelled and its accuracy, the share dropped, and the label error left among kept and relabelled samples.
Data: sklearn's digits (the `digits` preset, its asym40 swaps those of docs/purification.md) or the
Fashion-MNIST tuning slice (`benchmarks/tuning_slice.py`), never the benchmark's own images:

    uv run python benchmarks/noisy_label_probs.py --data digits --seeds 0,1,2
    uv run python benchmarks/noisy_label_probs.py --data /tmp/fm-tune/manifest.csv --noise sym50,asym40,sym80

Each run also decides with `noisy_labels` under other noise matrices in place of confident learning's T̂,
to see how much a better estimate could give (``estimators`` in the JSON, the second table): T̂ pruned as in
`pruned_noise_matrix.RULE_4` (a column whose largest source holds half its noise keeps only that source), the
anchor-point estimate (Patrini et al., CVPR 2017: column j is the predicted distribution of the sample at the
97th percentile of p_j) and the injected matrix, which no real run knows. Since rule 4 the variants' own rule
cuts T̂ the same way (`purification.single_flips`), so ``noisy_labels`` decides as the ``pruned`` estimator
does; `benchmarks/results/noisy_label_probs*.md` predate rule 4.

`--runs` instead reads kept runs of `quality.py --work W` (the `grip` preset: warm-up CE, then GRIP, no
SSL epoch) and decides on the probabilities the `purify` stage read there (`purified/labels.npz`'s
``train_probs`` averaged with ``ssl/dynamics.npz``), `noisy_labels` against `robust`:

    uv run python benchmarks/noisy_label_probs.py --runs W/*-grip* --out /tmp/grip_probs.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import cleanlab_peer  # noqa: E402
from benchmarks.quality import NOISE  # noqa: E402
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import Params, load_params  # noqa: E402
from labelsieve.engine.device import resolve_device  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import confident, metrics, purification  # noqa: E402
from labelsieve.maths.noise import noise_matrix  # noqa: E402
from labelsieve.stages import ingest, inject_noise  # noqa: E402

DIGIT_SWAPS = "{'1': '7', '7': '1', '3': '8', '8': '3', '5': '6', '6': '5', '4': '9', '9': '4'}"
DIGITS_NOISE = {
    **NOISE,
    "asym40": [
        "inject_noise.mode=asymmetric",
        "inject_noise.rate=0.4",
        "inject_noise.class_map=custom",
        f"inject_noise.custom_map={DIGIT_SWAPS}",
    ],
}
VARIANTS = ("noisy_labels", "robust", "cleanlab")
ESTIMATORS = ("confident_learning", "pruned", "anchor_97", "injected")
ANCHOR_PERCENTILE = 97.0
RESULTS = REPO / "benchmarks" / "results" / "noisy_label_probs.json"


def run_params(data: str, noise: str, seed: int) -> Params:
    """The `ce` preset on `data` (``digits``, ``profile``: the quality benchmark's own images, or a
    manifest), one noise setting, one seed, one thread."""
    table = DIGITS_NOISE if data == "digits" else NOISE
    source = ["digits"] if data == "digits" else []
    overrides = [] if data in ("digits", "profile") else [f"ingest.source={data}", "ingest.per_class_limit=0"]
    return load_params(
        REPO / "params.yaml",
        presets=[*source, "ce"],
        overrides=[
            "runtime.progress=never",
            "runtime.threads=1",
            f"runtime.seed={seed}",
            *table[noise],
            *overrides,
        ],
    )


def cross_fitted(params: Params, work: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given, truth, out-of-sample probabilities) of one setting, ingesting and injecting under `work`."""
    dataset, labels = work / "dataset", work / "labels"
    ingest.run(params, out_dir=dataset)
    inject_noise.run(params, dataset_dir=dataset, out_dir=labels)
    data = TrainingData.load(dataset, labels, resolve_device("cpu"))
    probs = cleanlab_peer.cross_fit(data, params)
    return data.train_labels.numpy(), data.train_true_labels.numpy(), probs


def stage_inputs(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given, truth, the probabilities `purify` decided on) of one kept `quality.py` run."""
    with np.load(run / "labels" / "labels.npz") as labels:
        given, truth = labels["train_labels"], labels["train_true_labels"]
    with (
        np.load(run / "purified" / "labels.npz") as purified,
        np.load(run / "ssl" / "dynamics.npz") as dynamics,
    ):
        probs = (purified["train_probs"].astype(np.float64) + dynamics["probs"]) / 2.0
    return given, truth, probs


def decisions(
    given: np.ndarray, probs: np.ndarray, variants: tuple[str, ...] = VARIANTS
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per variant: (decision, new labels, the score the AUROC ranks by)."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    out = {}
    for variant in set(variants) & set(purification.PROBS_FROM):
        result = purification.find_label_issues(given, probs, probs_from=variant)
        out[variant] = (result.decision, result.new_labels, result.scores["noise_score"])
    if "cleanlab" not in variants:
        return out
    flagged, predicted = cleanlab_issues(given, probs), probs.argmax(axis=1)
    relabel = flagged & (predicted != given)
    decision = np.where(
        flagged, np.where(relabel, purification.RELABEL, purification.DROP), purification.KEEP
    )
    new_labels = np.where(flagged, np.where(relabel, predicted, -1), given)
    self_confidence = probs[np.arange(len(given)), given]
    out["cleanlab"] = (decision, new_labels, 1.0 - self_confidence)
    return out


def anchor_matrix(probs: np.ndarray, percentile: float = ANCHOR_PERCENTILE) -> np.ndarray:
    """(C, C) T̂ with column j the probabilities of the sample at the `percentile` of p_j (an anchor of j)."""
    columns = []
    for j in range(probs.shape[1]):
        above = np.flatnonzero(probs[:, j] >= np.percentile(probs[:, j], percentile))
        columns.append(probs[above[np.argmin(probs[above, j])]])
    matrix = np.stack(columns, axis=1)
    return matrix / matrix.sum(axis=0, keepdims=True)


def estimator_figures(given: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> dict[str, dict[str, float]]:
    """Per matrix of `ESTIMATORS`: the `noisy_labels` rule's figures with it, and its MAE to the truth."""
    from benchmarks import pruned_noise_matrix  # here: it imports flip_scoring, which imports this module

    injected = noise_matrix(truth, given, probs.shape[1])
    estimated = confident.estimate(given, probs).noise_matrix
    matrices = {
        "confident_learning": estimated,
        "pruned": pruned_noise_matrix.pruned(estimated, *pruned_noise_matrix.RULE_4),
        "anchor_97": anchor_matrix(probs),
        "injected": injected,
    }
    out = {}
    for name, matrix in matrices.items():
        belief = purification.unmix(probs, matrix) if purification.identifiable(matrix) else probs
        post = purification.posterior(given, belief, matrix)
        decision, new_labels = purification.decide(
            given, post.wrong, post.best, post.best_prob, purification.WRONG_THRESHOLD
        )
        row = figures(decision, new_labels, post.wrong, given, truth)
        out[name] = {"f1": row["f1"], "auroc": row["auroc"], "mae": float(np.abs(matrix - injected).mean())}
    return out


def figures(
    decision: np.ndarray, new_labels: np.ndarray, score: np.ndarray, given: np.ndarray, truth: np.ndarray
) -> dict[str, float | None]:
    """F1, AUROC, relabelled share and accuracy, dropped share, error left among kept or relabelled."""
    noisy, relabelled, kept = given != truth, decision == purification.RELABEL, decision != purification.DROP
    return {
        "f1": metrics.detection(decision != purification.KEEP, noisy)["f1"],
        "auroc": metrics.auroc(score, noisy),
        "relabelled": float(relabelled.mean()),
        "relabel_accuracy": _mean(new_labels[relabelled] == truth[relabelled]),
        "dropped": float(np.mean(~kept)),
        "noise_left": _mean(new_labels[kept] != truth[kept]),
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: mean over seeds per data, noise setting and variant."""
    keys = ("f1", "auroc", "relabelled", "relabel_accuracy", "dropped", "noise_left")
    lines = ["| data | noise | variant | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 4) + "|"]
    cells = sorted({(r["data"], r["noise"]) for r in runs}, key=lambda c: (c[0], list(NOISE).index(c[1])))
    for data, noise in cells:
        group = [r for r in runs if (r["data"], r["noise"]) == (data, noise)]
        for variant in VARIANTS:
            means = []
            for key in keys:
                values = [r[variant][key] for r in group if r[variant][key] is not None]
                means.append(f"{np.mean(values):.3f}" if values else "")
            name = Path(data).parent.name if data != "digits" else data
            lines.append(f"| {name} | {noise} | {variant} | {len(group)} | " + " | ".join(means) + " |")
    lines += [
        "",
        "| data | noise | seeds | " + " | ".join(f"{e} F1 / AUROC / MAE" for e in ESTIMATORS) + " |",
    ]
    lines.append("|---" * (len(ESTIMATORS) + 3) + "|")
    for data, noise in cells:
        group = [
            r["estimators"] for r in runs if (r["data"], r["noise"]) == (data, noise) and "estimators" in r
        ]
        if not group:
            continue
        cols = [  # an estimator added after a run was kept has no figures for it
            " / ".join(f"{np.mean([g[e][k] for g in group]):.3f}" for k in ("f1", "auroc", "mae"))
            if all(e in g for g in group)
            else ""
            for e in ESTIMATORS
        ]
        name = Path(data).parent.name if data != "digits" else data
        lines.append(f"| {name} | {noise} | {len(group)} | " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="digits", help="digits, or a manifest such as the tuning slice's")
    parser.add_argument("--noise", default="sym50,asym40,inst40,sym80")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--cache", help="keep each setting's probabilities here and reuse them")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--runs", nargs="+", type=Path, help="kept `quality.py` runs of the grip preset")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    if args.runs:
        runs = []
        for run in args.runs:
            given, truth, probs = stage_inputs(run)
            figures_of = {
                variant: figures(*decided, given, truth)
                for variant, decided in decisions(given, probs, ("noisy_labels", "robust")).items()
            }
            runs.append({"run": run.name, **figures_of})
            print(json.dumps(runs[-1]), flush=True)
        write_json(out, {"runs": runs})
        return
    runs = json.loads(out.read_text())["runs"] if out.is_file() else []
    for noise in args.noise.split(","):
        for seed in map(int, args.seeds.split(",")):
            tag = f"{'digits' if args.data == 'digits' else 'slice'}-{noise}-seed{seed}"
            cached = Path(args.cache) / f"{tag}.npz" if args.cache else None
            if cached is not None and cached.is_file():
                with np.load(cached) as arrays:
                    given, truth, probs = arrays["given"], arrays["truth"], arrays["probs"]
            else:
                with tempfile.TemporaryDirectory(prefix="labelsieve-noisy-probs-") as work:
                    given, truth, probs = cross_fitted(run_params(args.data, noise, seed), Path(work))
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, given=given, truth=truth, probs=probs)
            run = {"data": args.data, "noise": noise, "seed": seed}
            for variant, (decision, new_labels, score) in decisions(given, probs).items():
                run[variant] = figures(decision, new_labels, score, given, truth)
            run["unmixed"] = purification.find_label_issues(given, probs).unmixed
            run["estimators"] = estimator_figures(given, truth, probs)
            runs = [r for r in runs if (r["data"], r["noise"], r["seed"]) != (args.data, noise, seed)] + [run]
            write_json(out, {"runs": runs})
            print(json.dumps(run), flush=True)
    write_text(out.with_suffix(".md"), table(runs))
    print(table(runs))


if __name__ == "__main__":
    main()
