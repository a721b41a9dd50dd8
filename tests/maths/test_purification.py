import torch

from labelsieve.maths.purification import DROP, KEEP, RELABEL, decide


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
