"""Study: which of training's predictions should `purify` average?

`purify` averages the co-trained networks' final prediction with their training dynamics, the mean of
every co-divide's prediction over the SSL epochs (`labelsieve.maths.dynamics`). The early divisions come
from networks a few epochs old; they have not memorised a wrong label, and they are also less accurate on
the clean images, whose mistakes look exactly like noise (docs/purification_studies.md, "What limits F1 and
AUROC"). This study runs the `labelsieve` method (`quality.run_one`, every stage after ingest) while
recording each division's prediction separately (the mean softmax of both networks), which the stage only
sums, and then applies the stage's rule (`purification.find_label_issues`, τ = `WRONG_THRESHOLD`, the noise
matrix estimated again) to each average:
- ``stage``: what `purify` does since rule 3 (its figures must equal the run's own): flag by the final
  prediction's posterior, relabel or drop each flagged sample by the posterior of every division averaged,
  then averaged with the final prediction;
- ``averaged``: the rule before (rule 2): flags from that average too;
- ``final``: the final prediction alone;
- ``last_half``: the divisions of the second half of SSL, averaged with the final prediction;
- ``ramp``: division d of D weighted by d, averaged with the final prediction.
The results of stop 50 (benchmarks/results/tuning_slice/dynamics_window.json) predate rule 3: there
``stage`` is today's ``averaged`` and ``flag_final`` today's ``stage``.
Recording does not change training: the run is the method's own, to the last digit. It is a study, not a
stage option.

    uv run python benchmarks/dynamics_window.py --dataset /var/tmp/s50/w-sym50/dataset --noise sym50 \\
        --work /var/tmp/dw/sym50 --set runtime.threads=1 --set ingest.source=/var/tmp/fm-tune/manifest.csv \\
        --set ingest.per_class_limit=0 --out /var/tmp/dw/sym50.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import quality  # noqa: E402
from benchmarks.flip_scoring import figures  # noqa: E402
from labelsieve.atomic import write_json  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import prepare_process  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths.dynamics import TrainingDynamics  # noqa: E402
from labelsieve.stages import purify, ssl_train  # noqa: E402


@contextlib.contextmanager
def recording(divisions: list[np.ndarray]) -> Iterator[None]:
    """Within the block, every `TrainingDynamics.add` also appends its (N, C) mean over networks to
    `divisions` (float64). `ssl_train` calls the method through the class, so patching it reaches it."""
    add = TrainingDynamics.add

    def add_and_record(self: TrainingDynamics, probs: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        divisions.append(probs.double().mean(dim=0).cpu().numpy())
        add(self, probs, *args, **kwargs)

    TrainingDynamics.add = add_and_record  # type: ignore[method-assign]
    try:
        yield
    finally:
        TrainingDynamics.add = add  # type: ignore[method-assign]


def averages(divisions: np.ndarray, final: np.ndarray) -> dict[str, np.ndarray]:
    """The variants other than ``stage`` from (D, N, C) `divisions` and the (N, C) `final` prediction."""
    count = len(divisions)
    ramp = np.arange(1, count + 1, dtype=np.float64)
    return {
        "final": final,
        "last_half": (divisions[count // 2 :].mean(axis=0) + final) / 2.0,
        "ramp": (np.tensordot(ramp / ramp.sum(), divisions, axes=1) + final) / 2.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="an ingested dataset folder (a --work's dataset/)")
    parser.add_argument("--noise", required=True, choices=sorted(quality.NOISE))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", required=True, help="the run's folder (its stages' outputs)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="base params file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--out", required=True, help="write the figures here (JSON)")
    args = parser.parse_args()
    overrides = [*args.set, f"runtime.seed={args.seed}"]
    params = quality.method_params(Path(args.params), "labelsieve", args.noise, overrides)
    prepare_process(params.runtime.threads)
    divisions: list[np.ndarray] = []
    with recording(divisions):
        run = quality.run_one(params, Path(args.dataset), Path(args.work))
    work, device = Path(args.work), torch.device("cpu")
    data = TrainingData.load(args.dataset, work / "labels", device, "resident")
    given, truth = data.train_labels.numpy(), data.train_true_labels.numpy()
    networks = loop.load_networks(work / "ssl", params, data, device)
    final = purify.final_probs(networks, data, params).double().numpy()
    dynamics = ssl_train.read_dynamics(work / "ssl")["probs"].astype(np.float64)
    stacked, averaged = np.stack(divisions), (dynamics + final) / 2.0
    result = {
        "noise": args.noise,
        "seed": args.seed,
        "divisions": len(divisions),
        "recorded_vs_saved_dynamics": float(np.abs(stacked.mean(axis=0) - dynamics).max()),
        "run_detection": run["detection"],
        "stage": figures(given, truth, averaged, final),
        "averaged": figures(given, truth, averaged),
        **{name: figures(given, truth, probs) for name, probs in averages(stacked, final).items()},
    }
    write_json(args.out, result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
