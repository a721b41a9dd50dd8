"""The evaluate stage's PNG figures (matplotlib, Agg) and its one-file HTML report.

The report is self-contained: every image, figures and gallery thumbnails alike, is an inline base64
``data:image/png`` URI, and there is no external script, style sheet or font, so it can be mailed, attached
to a Kubeflow run as an HTML artifact or opened from a DVC cache without its folder.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image

from labelsieve.atomic import write_bytes, write_text
from labelsieve.config import Params

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> Any:
    """matplotlib.pyplot on the headless Agg backend, imported on first use.

    Importing it costs about a second, which every `labelsieve` command would pay through the stage
    registry otherwise; only the evaluate stage draws.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on CI, in pods or under dvc repro
    import matplotlib.pyplot as plt

    return plt


# Fixed PNG metadata keeps the figures byte-identical between runs of the same matplotlib version.
_PNG_METADATA = {"Software": None}
STAGE_COLOURS = {
    "warmup": "#8da0cb",
    "ssl_train": "#66c2a5",
    "group_regularize": "#fc8d62",
    "retrain": "#e78ac3",
}


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata=_PNG_METADATA)
    _pyplot().close(fig)
    write_bytes(path, buffer.getvalue())
    return path


def figures(
    directory: Path,
    *,
    curves: list[dict[str, Any]],
    histograms: dict[str, Any],
    confusion: np.ndarray,
    classes: Sequence[str],
    roc: dict[str, list[float]] | None,
    auroc: float | None,
    noise_estimate: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write the PNG figures into `directory`; returns title -> path, in report order.

    Args:
        curves: training_curves rows (step, stage, epoch, val_acc, test_acc).
        histograms: evaluate.loss_histograms() output: per source, bin edges and per-network counts + GMM.
        confusion: (C, C) counts, rows true, columns predicted.
        roc: {"fpr": [...], "tpr": [...]} of purify's noise score, or None without ground truth.
        noise_estimate: purify's summary.json ``noise_estimate`` (estimated, and injected when known).
    """
    plt = _pyplot()
    out: dict[str, Path] = {}
    if curves:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        steps = np.array([r["step"] for r in curves])
        for stage in dict.fromkeys(r["stage"] for r in curves):
            mask = np.array([r["stage"] == stage for r in curves])
            ax.axvspan(
                steps[mask].min() - 0.5, steps[mask].max() + 0.5, color=STAGE_COLOURS.get(stage), alpha=0.15
            )
            ax.text(
                steps[mask].mean(), 0.02, stage, ha="center", fontsize=8, transform=ax.get_xaxis_transform()
            )
        ax.plot(steps, [r["test_acc"] for r in curves], "o-", ms=3, label="test accuracy")
        ax.plot(steps, [r["val_acc"] for r in curves], "s--", ms=3, label="noisy-validation accuracy")
        ax.set_xlabel("epoch (all training stages in DAG order)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out["Training curves"] = _save(fig, directory / "training_curves.png")
    if histograms:
        out["Co-divide loss histograms"] = _save(
            _histogram_figure(histograms), directory / "loss_histogram.png"
        )
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        colour = "white" if count > confusion.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix of the final model (test split)")
    fig.tight_layout()
    out["Confusion matrix"] = _save(fig, directory / "confusion.png")
    if roc is not None:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(roc["fpr"], roc["tpr"], label="noise score" + (f" (AUROC {auroc:.3f})" if auroc else ""))
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set_xlabel("false-positive rate (clean samples flagged)")
        ax.set_ylabel("true-positive rate (noisy samples flagged)")
        ax.set_title("Label-noise detection ROC")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out["Noise-detection ROC"] = _save(fig, directory / "roc.png")
    if noise_estimate:
        out["Noise matrix"] = _save(
            _noise_matrix_figure(noise_estimate, classes), directory / "noise_matrix.png"
        )
    return out


def _noise_matrix_figure(estimate: dict[str, Any], classes: Sequence[str]) -> Figure:
    """Heatmaps of P(given label | true class): purify's estimate, beside the injected one when known."""
    plt = _pyplot()
    panels = [("estimated by purify", np.asarray(estimate["noise_matrix"]))]
    if "injected_noise_matrix" in estimate:
        mae = estimate["noise_matrix_mae"]
        panels.append(
            (
                f"injected (estimate's mean abs. error {mae:.3f})",
                np.asarray(estimate["injected_noise_matrix"]),
            )
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.6), squeeze=False)
    for ax, (title, matrix) in zip(axes[0], panels, strict=True):
        ax.imshow(matrix, cmap="Oranges", vmin=0.0, vmax=1.0)
        for (i, j), value in np.ndenumerate(matrix):
            if value >= 0.005:
                colour = "white" if value > 0.5 else "black"
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6, color=colour)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set_xlabel("true class")
        ax.set_ylabel("given label")
        ax.set_title(title, fontsize=9)
    fig.suptitle("Noise matrix P(given label | true class); each column sums to 1", fontsize=10)
    fig.tight_layout()
    return fig


def _histogram_figure(histograms: dict[str, Any]) -> Figure:
    plt = _pyplot()
    rows = list(histograms)
    cols = max(len(histograms[name]["networks"]) for name in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(4.2 * cols, 3.0 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        edges = np.asarray(histograms[name]["bin_edges"])
        centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
        for k in range(cols):
            ax = axes[r][k]
            if k >= len(histograms[name]["networks"]):
                ax.axis("off")
                continue
            net = histograms[name]["networks"][k]
            if "truly_clean" in net:
                ax.bar(centres, net["truly_clean"], width, color="#66c2a5", label="truly clean")
                ax.bar(
                    centres,
                    net["truly_noisy"],
                    width,
                    bottom=net["truly_clean"],
                    color="#fc8d62",
                    label="truly noisy",
                )
            else:
                ax.bar(centres, net["all"], width, color="#8da0cb", label="all samples")
            ax.plot(centres, net["gmm_clean"], "-", color="#1b7837", label="GMM clean component")
            ax.plot(centres, net["gmm_noisy"], "-", color="#b2182b", label="GMM noisy component")
            ax.set_title(f"{name}, network {k + 1}", fontsize=9)
            ax.set_xlabel("normalised per-sample loss", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0 and k == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# metrics.json key -> (its label in the report's headline table, how its value is shown), in display order.
HEADLINE = {
    "test_acc": ("Test accuracy of the final model at its last epoch", "percent"),
    "test_acc_best_val_epoch": ("Test accuracy at the epoch chosen on noisy validation", "percent"),
    "best_val_epoch": ("That epoch (counted from 0 within the final stage)", "integer"),
    "test_macro_f1": ("Macro F1 on the test split", "percent"),
    "noise_rate_actual": ("Share of wrong labels among the training labels", "percent"),
    "detection.precision": ("Noise detection: share of flagged samples that were wrong", "percent"),
    "detection.recall": ("Noise detection: share of wrong labels flagged", "percent"),
    "detection.f1": ("Noise detection: F1", "percent"),
    "detection.auroc": ("Noise detection: area under the ROC curve of the noise score", "ratio"),
    "detection.relabel_accuracy": ("Share of relabelled samples given their true class", "percent"),
    "noise_rate_after_purify": ("Share of wrong labels left after purify (kept and relabelled)", "percent"),
}
# purify's detection figures (summary.json) -> (label, format) for the purification table.
DETECTION = {
    "precision": ("Share of flagged samples that were wrong", "percent"),
    "recall": ("Share of wrong labels flagged", "percent"),
    "f1": ("F1 of the flags", "percent"),
    "auroc": ("Area under the ROC curve", "ratio"),
    "relabel_accuracy": ("Share of relabelled samples given their true class", "percent"),
    "noise_matrix_mae": ("Mean absolute error of the estimated noise matrix", "ratio"),
    "noise_rate_after": ("Share of wrong labels left (kept and relabelled)", "percent"),
}


def format_value(value: Any, kind: str = "ratio") -> str:
    """A figure as the report shows it: ``percent`` 0.8123 -> ``81.2%``, ``ratio`` -> 3 decimals,
    ``integer`` as is; None or NaN -> an en dash. Escaped for HTML."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return html.escape(str(value))
    if kind == "percent":
        return f"{100 * float(value):.1f}%"
    if kind == "integer" or isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.3f}"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail(image: np.ndarray, size: int) -> bytes:
    """PNG bytes of a uint8 (C, H, W) image scaled to `size` px, nearest neighbour (pixels stay visible)."""
    pixels = np.asarray(image)
    picture = (
        Image.fromarray(pixels[0], mode="L")
        if pixels.shape[0] == 1
        else Image.fromarray(pixels.transpose(1, 2, 0), mode="RGB")
    )
    buffer = io.BytesIO()
    picture.resize((size, size), Image.Resampling.NEAREST).save(buffer, format="PNG")
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    return format_value(value, "ratio")


def _pct(value: Any) -> str:
    return format_value(value, "percent")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def regression_warning(regression: dict[str, Any] | None) -> str:
    """The warning box shown when the final model tests below an earlier stage's networks ('' if not)."""
    if not regression:
        return ""
    return (
        "<div class='warning' role='alert'><b>Warning: the final model is worse than the networks it "
        f"replaced.</b> {html.escape(regression['final_stage'])} reaches "
        f"{_pct(regression['final_test_acc'])} test accuracy; "
        f"{html.escape(regression['best_stage'])} reached "
        f"{_pct(regression['best_test_acc'])} at its last epoch. The later stages cost accuracy on this run: "
        "check their params before deploying this model.</div>"
    )


def provenance_table(provenance: dict[str, Any]) -> str:
    """Where the figures came from: git commit, dataset content hash, hash of the resolved params."""
    labels = {
        "git_commit": "Git commit of the code",
        "dataset_content_hash": "Content hash of the dataset",
        "params_sha256": "SHA-256 of the resolved params",
    }
    rows = "".join(
        f"<tr><th>{html.escape(label)}</th><td>{html.escape(str(provenance.get(key) or 'unknown'))}</td></tr>"
        for key, label in labels.items()
    )
    return f"<table class='provenance'><tbody>{rows}</tbody></table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.headline td:nth-child(2) { font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: .9em; color: #555; }
.gallery { display: flex; flex-wrap: wrap; gap: .8em; }
.card { border: 1px solid #ddd; padding: .4em; font-size: .78em; width: 9.5em; }
.card img { display: block; margin: 0 auto .3em; image-rendering: pixelated; }
.drop { color: #b2182b; } .relabel { color: #d95f02; } .keep { color: #1b7837; }
pre { background: #f8f8f8; padding: .8em; font-size: .8em; overflow-x: auto; }
.warning { border: 2px solid #b2182b; background: #fde0dd; padding: .6em 1em; margin: 1em 0; }
.provenance td { font-family: monospace; text-align: left; }
"""


def write_html(
    path: Path,
    *,
    params: Params,
    evaluation: dict[str, Any],
    figures: dict[str, Path],
    gallery: list[dict[str, Any]],
    thumbnail_px: int,
    has_truth: bool,
) -> None:
    """Write report.html: params, headline numbers, per-stage and per-class tables, figures, gallery."""
    noise = evaluation["noise"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>labelsieve report</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>labelsieve report</h1>",
        f"<p>Dataset <b>{_fmt(params.ingest.source)}</b>, {len(evaluation['classes'])} classes; noise "
        f"<b>{_fmt(noise['mode'])} {_fmt(noise['rate'])}</b> (seed {noise['seed']}); final model: "
        f"<b>{_fmt(evaluation['final_stage'])}</b> (<code>{_fmt(evaluation['final_model'])}</code>), "
        f"network <b>{_fmt(params.model.name)}</b>.</p>",
        regression_warning(evaluation.get("regression")),
        "<h2>Headline numbers</h2>",
        "<table class='headline'><tbody>"
        + "".join(
            f"<tr><td>{html.escape(label)}</td><td>{format_value(evaluation['metrics'][key], kind)}</td></tr>"
            for key, (label, kind) in HEADLINE.items()
            if key in evaluation["metrics"]
        )
        + "</tbody></table>",
        "<p>The best epoch is chosen on the noisy validation split, never on the test split. "
        f"Seed {params.runtime.seed}; {html.escape(evaluation.get('environment', ''))}. Every figure is "
        "also in <code>metrics.json</code> (flat) and <code>evaluation.json</code>.</p>",
        "<h2>Provenance</h2>",
        provenance_table(evaluation.get("provenance") or {}),
        "<h2>Training stages</h2>",
        "<p>Passed through (0 epochs): "
        + (html.escape(", ".join(evaluation["passed_through"])) or "none")
        + ". co_divide and purify always run; evaluate scores the last stage that trained.</p>",
        _table(
            [
                "Stage",
                "Epochs run",
                "Test accuracy, last epoch",
                "Noisy-validation accuracy, last epoch",
                "Epoch chosen on noisy validation",
                "Test accuracy at that epoch",
            ],
            [
                [
                    name,
                    f.get("epochs_run"),
                    _pct(f.get("test_acc")),
                    _pct(f.get("val_acc")),
                    f.get("best_val_epoch"),
                    _pct(f.get("best_val_test_acc")),
                ]
                for name, f in evaluation["stages"].items()
            ],
        ),
    ]
    purify = evaluation["purify"]
    if purify.get("decisions"):
        parts.append("<h2>Purification</h2>")
        parts.append(_table(["decision", "samples"], list(purify["decisions"].items())))
        if purify.get("noise_estimate"):
            rates = purify["noise_estimate"]["noise_rates"]
            parts.append(
                f"<p>Estimated share of wrong labels: {purify['noise_estimate']['noise_rate']:.1%} "
                "(confident learning on the predictions averaged over training). Per given class:</p>"
            )
            parts.append(
                _table(["given label", "estimated wrong"], [[c, f"{r:.1%}"] for c, r in rates.items()])
            )
        if purify.get("detection"):
            parts.append(
                _table(["detection (against the injected truth)", "value"], list(purify["detection"].items()))
            )
    test = evaluation["test"]
    parts.append("<h2>Per-class figures of the final model (test split)</h2>")
    parts.append(
        _table(
            ["class", "precision", "recall", "F1", "support"],
            [[c, v["precision"], v["recall"], v["f1"], v["support"]] for c, v in test["per_class"].items()],
        )
    )
    parts.append("<h2>Plots</h2>")
    for title, figure in figures.items():
        parts.append(
            f"<figure><img alt='{html.escape(title)}' src='{_data_uri(figure.read_bytes())}'>"
            f"<figcaption>{html.escape(title)}</figcaption></figure>"
        )
    parts.append("<h2>Training samples to review</h2>")
    if gallery:
        parts.append(
            f"<p>{len(gallery)} training samples to check, spread over purify's decisions and the classes: "
            "relabelled, dropped, and borderline (kept, but next in line to be flagged), each with the "
            "highest noise score of its class first. Each card gives the sample's id and source, the label "
            "it came with, its most probable true class by purify's posterior, and purify's decision.</p>"
            "<div class='gallery'>"
        )
        for row in gallery:
            truth = f"<br>true: {html.escape(row['true_label'])}" if has_truth and "true_label" in row else ""
            new = f" → {html.escape(row['new_label'])}" if row["decision"] == "relabel" else ""
            decision = html.escape(row["decision"])
            parts.append(
                f"<div class='card'><img alt='sample {html.escape(row['id'])}' width='{thumbnail_px}' "
                f"height='{thumbnail_px}' src='{_data_uri(thumbnail(row['image'], thumbnail_px))}'>"
                f"<b>{html.escape(row['group'])}</b><br>id {html.escape(row['id'])}"
                f"<br><small>{html.escape(row['source'])}</small>"
                f"<br>given: {html.escape(row['given_label'])}"
                f"<br>predicted: {html.escape(row['predicted_label'])}"
                f"<br>noise score: {float(row['noise_score']):.2f}<br>decision: "
                f"<span class='{decision}'>{decision}{new}</span>{truth}</div>"
            )
        parts.append("</div>")
    else:
        parts.append("<p>No purify manifest: nothing to show.</p>")
    parts.append("<h2>Resolved params</h2>")
    parts.append(f"<pre>{html.escape(yaml.safe_dump(params.to_dict(), sort_keys=False))}</pre>")
    parts.append("</body></html>")
    write_text(path, "\n".join(parts) + "\n")
