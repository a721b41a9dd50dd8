"""Study: co-divide by purify's Bayes posterior instead of the per-class loss GMM, through the whole chain.

`division_probe.py` shows that at asym40 the warm-up networks' posterior P(y* ≠ ỹ | x, ỹ) (T̂ by confident
learning, `purification.find_label_issues`) ranks the injected noise far better than the loss GMM that
DivideMix divides by (AUROC about 0.79 against 0.59 to 0.68 on the tuning slice), and worse at sym50 and
inst40 (0.89 against 0.94 to 0.96). This study asks what the rest of the chain makes of such a division: it
runs the `labelsieve` method (`quality.run_one`, every stage after ingest) with each co-divide, the
`co_divide` stage's and every SSL epoch's, replaced by `divide_by_posterior`: network k's clean probability
is 1 − P(y* ≠ ỹ | x, ỹ) from its own softmax, and its labeled set the samples above `co_divide.threshold`,
as the GMM's clean probability is used. `--division posterior_first` replaces only the first division,
the one from the warm-up networks, where the posterior's lead under a swap is largest (the first SSL
epoch trains on it; every later epoch divides by the GMM). `--division gmm` runs the stage's own division
in the same way, so every row comes from one script. `--division posterior_counts` divides by the
posterior every epoch but fixes each class's count of left-out samples at confident learning's estimate
on the warm-up networks, so that a class cannot vanish from its labeled set. It is a study, not a stage
option.

    uv run python benchmarks/posterior_division.py --dataset /var/tmp/fm-tune-work-b/dataset --noise asym40 \\
        --division posterior --work /tmp/pd/asym40-posterior --set runtime.threads=1 \\
        --set ingest.source=/var/tmp/fm-tune/manifest.csv --set ingest.per_class_limit=0 --out /tmp/pd/a.json
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
from labelsieve.atomic import write_json  # noqa: E402
from labelsieve.config import Params  # noqa: E402
from labelsieve.engine.device import prepare_process  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import confident, division, purification  # noqa: E402
from labelsieve.stages import co_divide  # noqa: E402

DIVISIONS = ("gmm", "posterior", "posterior_first", "posterior_counts")


def divide_by_posterior(
    networks: list[torch.nn.Module],
    data: TrainingData,
    params: Params,
    *,
    tag: str,
    history: list[torch.Tensor] | None = None,
    min_size: int,
    counts: list[np.ndarray] | None = None,
) -> co_divide.Division:
    """`co_divide.divide` with network k's clean probability P(y* = ỹ | x, ỹ) from its own softmax.

    `tag` and `history` are accepted for the same signature and unused: the posterior needs no seed and
    averages no past losses. `posterior_division` says how the labeled set is chosen.
    """
    logits = co_divide.network_logits(networks, data, params)
    return posterior_division(logits, data.train_labels, params, min_size=min_size, counts=counts)


def posterior_division(
    logits: torch.Tensor,
    labels: torch.Tensor,
    params: Params,
    *,
    min_size: int,
    counts: list[np.ndarray] | None = None,
) -> co_divide.Division:
    """The division of K networks from their (K, N, C) logits on the training images.

    The labeled set is the samples above `co_divide.threshold`, or with `counts` (per network, (C,) how
    many samples of each given class to leave out) each class's members less its `counts[k][i]` with the
    highest P(y* ≠ ỹ | x, ỹ) (`purification.flag_top`). The losses are still recorded, min-max
    normalised, as the stage's are.
    """
    probs = torch.softmax(logits, dim=2)
    losses = torch.stack([division.per_sample_loss(z, labels) for z in logits])
    given = labels.cpu().numpy()
    clean, labeled, fell_back = [], [], []
    for k, network_probs in enumerate(probs):
        result = purification.find_label_issues(
            given, network_probs.double().cpu().numpy(), probs_from="robust"
        )
        clean_prob = torch.from_numpy(1.0 - result.scores["noise_score"]).to(losses)
        if counts is None:
            threshold = params.co_divide.threshold
            split, guarded = division.partition(clean_prob, threshold=threshold, min_size=min_size)
        else:
            flagged = purification.flag_top(result.scores["noise_score"], given, counts[k])
            split, guarded = torch.from_numpy(~flagged).to(losses.device), False
        clean.append(clean_prob)
        labeled.append(split)
        fell_back.append(guarded)
    normalised = torch.stack([division.minmax_normalise(row) for row in losses])
    return co_divide.Division(
        losses=losses,
        normalised=normalised,
        normalised_now=normalised,
        clean_prob=torch.stack(clean),
        labeled=torch.stack(labeled),
        fits=[[] for _ in logits],
        fell_back=fell_back,
        probs=probs,
    )


@contextlib.contextmanager
def division_by(kind: str) -> Iterator[None]:
    """Within the block, the `co_divide` stage and `ssl_train` divide by `kind`.

    `posterior_first`: the `co_divide` stage's division, from the warm-up networks, by the posterior; every
    SSL epoch's by the GMM. `posterior_counts`: every division by the posterior, each class leaving out the
    count of wrong labels that confident learning estimated on the warm-up networks (`flag_counts`), fixed
    from then on, so that no class can empty its labeled set.

    The stage and `ssl_train` both call `co_divide.divide` through the module, so replacing the module's
    attribute reaches them.
    """
    stage_divide = co_divide.divide

    def first_by_posterior(*args: Any, tag: str, **kwargs: Any) -> co_divide.Division:
        by = divide_by_posterior if tag == "co_divide" else stage_divide  # the co_divide stage's tag
        return by(*args, tag=tag, **kwargs)

    fixed: list[np.ndarray] = []  # posterior_counts: per network, the warm-up division's counts

    def fixed_counts(
        networks: list[torch.nn.Module],
        data: TrainingData,
        params: Params,
        *,
        tag: str,
        min_size: int,
        **_: Any,
    ) -> co_divide.Division:
        logits = co_divide.network_logits(networks, data, params)
        if tag == "co_divide":  # the warm-up networks: estimate the counts from this same pass
            given = data.train_labels.cpu().numpy()
            warm = torch.softmax(logits, dim=2).double().cpu().numpy()
            fixed[:] = [confident.estimate(given, p).flag_counts() for p in warm]
        if not fixed:
            raise RuntimeError("posterior_counts: the co_divide stage must divide in this process first")
        return posterior_division(logits, data.train_labels, params, min_size=min_size, counts=fixed)

    co_divide.divide = {
        "gmm": stage_divide,
        "posterior": divide_by_posterior,
        "posterior_first": first_by_posterior,
        "posterior_counts": fixed_counts,
    }[kind]
    try:
        yield
    finally:
        co_divide.divide = stage_divide


def chain_figures(run_dir: Path) -> dict[str, Any]:
    """Per SSL epoch the labeled sets' mean precision, and the test accuracy that SSL and GRIP end with."""
    ssl = json.loads((run_dir / "ssl" / "history.json").read_text())
    group = json.loads((run_dir / "group" / "history.json").read_text())
    return {
        "labeled_precision_by_epoch": {
            str(h["epoch"]): sum(h["labeled_precision"]) / len(h["labeled_precision"])
            for h in ssl
            if h.get("labeled_precision")
        },
        "ssl_end_test_acc": ssl[-1]["test_acc"],
        "group_end_test_acc": group[-1]["test_acc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", required=True, help="an ingested dataset folder (a --work's dataset/)")
    parser.add_argument("--noise", required=True, choices=sorted(quality.NOISE))
    parser.add_argument("--division", required=True, choices=DIVISIONS)
    parser.add_argument("--work", required=True, help="the run's folder (its stages' outputs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params override")
    parser.add_argument("--out", required=True, help="write the figures here (JSON)")
    args = parser.parse_args()
    params = quality.method_params(REPO / "params.yaml", "labelsieve", args.noise, args.set)
    prepare_process(params.runtime.threads)
    with division_by(args.division):
        figures = quality.run_one(params, Path(args.dataset), Path(args.work))
    result = {
        "noise": args.noise,
        "division": args.division,
        "overrides": args.set,
        **figures,
        **chain_figures(Path(args.work)),
    }
    write_json(args.out, result)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
