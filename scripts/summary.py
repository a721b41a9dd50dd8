"""Print the headline numbers of the main job (the last lines of `make run`)."""

import json
from pathlib import Path

ARTIFACTS = Path("artifacts")


def main() -> None:
    noise = json.loads((ARTIFACTS / "labels" / "noise.json").read_text())
    print(f"noise: {noise['mode']} {noise['rate']}, actual rate {noise['train']['actual_noise_rate']:.3f}")
    for stage in ("warmup", "ssl", "group", "model"):
        history = json.loads((ARTIFACTS / stage / "history.json").read_text())
        if history:
            last = history[-1]
            accuracy = f"test accuracy {last['test_acc']:.4f} (noisy-val {last['val_acc']:.4f})"
            print(f"{stage:>7}: last epoch {accuracy}")
    purified = json.loads((ARTIFACTS / "purified" / "summary.json").read_text())
    print(f"purify: {purified['decisions']}")
    if "detection" in purified:
        d = purified["detection"]
        relabel = "-" if d["relabel_accuracy"] is None else f"{d['relabel_accuracy']:.3f}"
        change = f"{d['noise_rate_before']:.3f} -> {d['noise_rate_after']:.3f}"
        print(f"purify: F1 {d['f1']:.3f}, AUROC {d['auroc_clean_prob']:.4f}, relabel accuracy {relabel}")
        print(f"label noise of the training labels: {change}")
    print(
        f"model package: {ARTIFACTS / 'model'}   purified manifest: {ARTIFACTS / 'purified' / 'manifest.csv'}"
    )


if __name__ == "__main__":
    main()
