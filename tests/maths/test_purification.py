import torch

from labelsieve.maths import chunks
from labelsieve.maths.grip import js_divergence
from labelsieve.maths.purification import DROP, KEEP, RELABEL, SCORE_NAMES, decide, sample_scores


def test_decide_three_way_on_hand_made_scores():
    labels = torch.tensor([0, 1, 2, 3, 1, 2])
    clean = torch.tensor([0.9, 0.5, 0.2, 0.1, 0.3, 0.4])
    predicted = torch.tensor([1, 0, 0, 0, 1, 1])
    confidence = torch.tensor([0.2, 0.2, 0.95, 0.95, 0.9, 0.5])
    js = torch.tensor([0.5, 0.5, 0.01, 0.2, 0.01, 0.03])
    decision, new = decide(labels, clean, predicted, confidence, js, keep_threshold=0.5, relabel_max_js=0.04)
    # 0, 1: clean enough (>= 0.5 inclusive); 2: flagged, typical of class 0 -> relabel; 3: JS too far -> drop;
    # 4: flagged but the prediction equals the given label -> drop; 5: flagged, typical of class 1 -> relabel.
    assert decision.tolist() == [KEEP, KEEP, RELABEL, DROP, DROP, RELABEL]
    assert new.tolist() == [0, 1, 0, -1, -1, 1]


def test_decide_confidence_gate_when_asked():
    labels, clean = torch.tensor([0, 0]), torch.tensor([0.0, 0.0])
    predicted, js = torch.tensor([1, 1]), torch.tensor([0.0, 0.0])
    confidence = torch.tensor([0.95, 0.5])
    decision, _ = decide(labels, clean, predicted, confidence, js, relabel_confidence=0.9)
    assert decision.tolist() == [RELABEL, DROP]


def random_outputs(n: int, num_networks: int = 2, num_classes: int = 5, seed: int = 0):
    """Seeded stand-ins: softmax (K, N, C), soft labels (K, C, C), clean probability (K, N), labels (N,)."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.randn(num_networks, n, num_classes, generator=gen, dtype=torch.float64).mul(3).softmax(-1)
    soft = torch.rand(num_networks, num_classes, num_classes, generator=gen, dtype=torch.float64).softmax(-1)
    clean = torch.rand(num_networks, n, generator=gen, dtype=torch.float64)
    return probs, soft, clean, torch.randint(num_classes, (n,), generator=gen)


def test_sample_scores_are_the_ensemble_scores():
    probs, soft_labels, clean, labels = random_outputs(300)
    scores = sample_scores(probs, soft_labels, clean, labels)
    mean_probs = probs.mean(dim=0)
    soft = soft_labels.mean(dim=0)
    soft = soft / soft.sum(dim=1, keepdim=True)
    confidence, predicted = mean_probs.max(dim=1)
    assert list(scores) == list(SCORE_NAMES)
    torch.testing.assert_close(scores["clean_prob"], clean.mean(dim=0))
    torch.testing.assert_close(scores["confidence"], confidence)
    assert torch.equal(scores["predicted"], predicted)
    torch.testing.assert_close(scores["js_given"], js_divergence(mean_probs, soft[labels]))
    torch.testing.assert_close(scores["js_predicted"], js_divergence(mean_probs, soft[predicted]))


def test_sample_scores_and_decide_chunked_equal_unchunked(monkeypatch):
    # N = 4321 rows of C = 5: chunks of 200 rows for the scores, of 1000 samples for the decision.
    probs, soft_labels, clean, labels = random_outputs(4321, seed=1)

    def run():
        scores = sample_scores(probs, soft_labels, clean, labels)
        by_name = (scores[name] for name in ("clean_prob", "predicted", "confidence", "js_predicted"))
        return scores, decide(labels, *by_name, keep_threshold=0.5, relabel_max_js=0.2)

    whole_scores, (whole_decision, whole_labels) = run()
    assert (whole_decision == RELABEL).any() and (whole_decision == DROP).any()  # every branch is taken
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    scores, (decision, new_labels) = run()
    for name in SCORE_NAMES:
        torch.testing.assert_close(scores[name], whole_scores[name], rtol=1e-12, atol=0)
    assert torch.equal(decision, whole_decision) and torch.equal(new_labels, whole_labels)
    assert decision.dtype == torch.int8 and new_labels.dtype == torch.int64
