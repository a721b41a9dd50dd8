"""GRIP: group regularization with class soft labels, and instance purification by JS divergence.

Follows GRIP (arXiv 2403.15694) as restated in docs/algorithms.md §4. Pure tensor maths: no I/O, no
config objects, every knob is a keyword argument whose default is the §4 default. The network is run
by the caller, which hands in logits or probabilities; one training forward serves both the loss and
the selection, so GRIP costs about one CE epoch.

Vocabulary: N samples, B batch size, C classes; ``labels`` (B,) given (possibly noisy) ỹ or, after
purification, possibly revised; ``probs`` (B, C) = softmax(logits), detached where it drives a
decision; ``soft_labels`` S (C, C), row c = the average prediction of the confidently-predicted
samples of class c; accumulators G (C, C) and counts n (C,) collected over one epoch; the JS memory
D (N,), one divergence per sample, indexed by sample id.

Per batch (§4): d = JS(p̄, S[ỹ]) → D[idx] = d → thr = mean(D) + α·std(D) → ``purify_batch`` →
``grip_loss`` on the kept set → ``accumulate``. Per epoch: ``update_soft_labels`` and reset G, n.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labelsieve.maths import chunks

__all__ = [
    "CLEAN",
    "DISCARDED",
    "REVISED",
    "JsMemory",
    "SoftLabelState",
    "accumulate",
    "grip_loss",
    "js_divergence",
    "js_threshold",
    "purification_active",
    "purify_batch",
    "update_soft_labels",
]

# Codes of the three-way purification decision (§4 step 4), stored as int8.
CLEAN = 0  # d ≤ thr: used with its own label
REVISED = 1  # d > thr but close to the soft label of its predicted class: used with ŷ = argmax p
DISCARDED = 2  # neither: left out of the supervised part of the loss for this step

_LN2 = math.log(2.0)


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (B, C), got {tuple(x.shape)}")


def _check_soft_labels(soft_labels: torch.Tensor, num_classes: int) -> None:
    if soft_labels.shape != (num_classes, num_classes):
        raise ValueError(
            f"soft_labels must have shape ({num_classes}, {num_classes}), got {tuple(soft_labels.shape)}"
        )


def _check_labels(labels: torch.Tensor, batch: int) -> None:
    if labels.shape != (batch,):
        raise ValueError(f"labels must have shape ({batch},), got {tuple(labels.shape)}")


def js_divergence(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Row-wise Jensen-Shannon divergence in bits, JS(p, q) = ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2.

    With log base 2 the divergence lies in [0, 1]: 0 for identical rows, 1 for rows with disjoint
    supports (e.g. two different one-hots). It is symmetric and bounded, which is why GRIP uses it
    instead of KL to compare a prediction with a class soft label: a confident wrong prediction
    cannot produce an unbounded score that would drag the mean + α·std threshold.

    Numerics: every log argument is clamped below at ``eps``, so a zero entry contributes
    0·log(·) = 0 and nothing is NaN or infinite. The result is clamped to [0, 1] to absorb rounding
    (e.g. −1e-17 for nearly equal rows).

    Zero rows: an all-zero row of p (or q) is not a distribution, but it is handled without NaN: its
    own KL term is 0 and the other row sees m = q/2, whose KL is exactly 1 bit, so JS(0, q) = 0.5 for
    any probability row q, and JS(0, 0) = 0.

    Args:
        p: (N, C) probability rows.
        q: (N, C) probability rows, same shape as ``p``.
        eps: Floor inside the logs, > 0.

    Returns:
        (N,) divergences in [0, 1], dtype of ``p`` and ``q`` promoted.

    Raises:
        ValueError: If the shapes differ or are not 2-D, or ``eps`` is not positive.
    """
    _check_matrix("p", p)
    if q.shape != p.shape:
        raise ValueError(f"p and q must share one (N, C) shape, got {tuple(p.shape)}, {tuple(q.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    # Chunks of rows (`labelsieve.maths.chunks`): each (B, C) temporary stays in cache instead of
    # being a fresh N × C one.
    out = torch.empty(p.shape[0], dtype=torch.promote_types(p.dtype, q.dtype), device=p.device)
    for rows in chunks.row_chunks(p.shape[0], p.shape[1]):
        p_rows, q_rows = p[rows], q[rows]
        m = 0.5 * (p_rows + q_rows)
        log_m = torch.log(m.clamp_min(eps))
        kl_pm = (p_rows * (torch.log(p_rows.clamp_min(eps)) - log_m)).sum(dim=1)
        kl_qm = (q_rows * (torch.log(q_rows.clamp_min(eps)) - log_m)).sum(dim=1)
        out[rows] = (0.5 * (kl_pm + kl_qm) / _LN2).clamp(0.0, 1.0)
    return out


# --- class soft labels (group regularization) ---------------------------------------------------------


def accumulate(G: torch.Tensor, n: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Add a batch's confidently-predicted samples to the soft-label accumulators, in place (§4 step 6).

    For every sample b with argmax p̄_b = y_b: G[y_b] += p̄_b and n[y_b] += 1. Only samples whose
    prediction agrees with their label enter, so the class averages are built from samples the network
    already fits; noisy samples it has not memorised stay out. ``labels`` are the labels the sample was
    trained with this step (the revised ŷ for a revised sample). Samples the caller does not want
    counted (e.g. discarded ones) are left out by passing only the rows it wants.

    Args:
        G: (C, C) per-epoch sum of probability rows, updated in place; float64 is advisable because it
            sums up to N rows.
        n: (C,) per-epoch counts, updated in place (any numeric dtype).
        probs: (B, C) probabilities; detached here, no gradient flows into the state.
        labels: (B,) integer class ids.

    Returns:
        (B,) bool mask of the samples that were counted.

    Raises:
        ValueError: If the shapes do not agree.
    """
    _check_matrix("probs", probs)
    batch, num_classes = probs.shape
    _check_labels(labels, batch)
    if G.shape != (num_classes, num_classes) or n.shape != (num_classes,):
        raise ValueError(
            f"expected G ({num_classes}, {num_classes}) and n ({num_classes},), "
            f"got {tuple(G.shape)}, {tuple(n.shape)}"
        )
    p = probs.detach()
    labels = labels.long()
    agree = p.argmax(dim=1) == labels  # (B,)
    # Index only the agreeing rows: a vectorised scatter with no Python loop over samples.
    rows = agree.nonzero().squeeze(1)
    idx = labels[rows]
    G.index_add_(0, idx, p[rows].to(G.dtype))
    n.index_add_(0, idx, torch.ones_like(idx, dtype=n.dtype))
    return agree


def update_soft_labels(
    S_old: torch.Tensor | None,
    G: torch.Tensor,
    n: torch.Tensor,
    *,
    momentum: float = 0.5,
    first: bool,
) -> torch.Tensor:
    """End-of-epoch soft-label update: S ← (1 − m)·S_new + m·S_old, S_new[c] = G[c]/n[c] renormalised (§4).

    - A class with evidence (n[c] > 0) gets S_new[c] = G[c]/n[c], renormalised to sum 1 (the rows of G
      are sums of probability rows, so this only removes rounding), then the moving average with m.
    - The first update is S_new alone: there is no earlier estimate to average with.
    - A class with n[c] = 0 keeps its old row. The published code decays such a row toward zero, which
      we do not copy (§4): a zero row would turn its soft-label loss into 0 and its JS into 0.5 for
      every sample. On the first update there is no old row; such a class gets onehot(c), the
      estimate with no evidence beyond the label itself: its soft-label CE is then the plain CE and a
      sample predicted confidently as c lies close to it.

    Args:
        S_old: (C, C) current soft labels, rows summing to 1. Not read, and may be None, when
            ``first`` is true.
        G: (C, C) per-epoch sum of probability rows from ``accumulate``.
        n: (C,) per-epoch counts from ``accumulate``.
        momentum: m in [0, 1], the weight kept on the old estimate.
        first: Whether this is the first update (S has not been set yet).

    Returns:
        (C, C) new soft labels, rows summing to 1, in the dtype of ``S_old`` (of ``G`` on the first
        update). The caller resets G and n afterwards.

    Raises:
        ValueError: If the shapes do not agree, ``momentum`` is outside [0, 1], or ``S_old`` is
            missing on a later update.
    """
    if G.dim() != 2 or G.shape[0] != G.shape[1] or n.shape != G.shape[:1]:
        raise ValueError(f"expected G (C, C) and n (C,), got {tuple(G.shape)}, {tuple(n.shape)}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    num_classes = G.shape[0]
    if first:
        old = torch.eye(num_classes, dtype=G.dtype, device=G.device)
    else:
        if S_old is None:
            raise ValueError("S_old is required after the first update")
        _check_soft_labels(S_old, num_classes)
        old = S_old.to(G.dtype)
    counts = n.to(G.dtype)
    mean = G / counts.clamp_min(1.0)[:, None]  # (C, C); rows with n = 0 are masked out below
    row_sum = mean.sum(dim=1, keepdim=True)  # (C, 1)
    has_evidence = (counts > 0) & (row_sum.squeeze(1) > 0)  # (C,)
    s_new = mean / row_sum.clamp_min(torch.finfo(G.dtype).tiny)
    blended = s_new if first else (1.0 - momentum) * s_new + momentum * old
    out = torch.where(has_evidence[:, None], blended, old)
    return out if S_old is None or first else out.to(S_old.dtype)


@dataclass
class SoftLabelState:
    """The mutable GRIP state: class soft labels S and the per-epoch accumulators (§4 "State").

    Tensors are updated in place by ``accumulate``; ``end_epoch`` replaces ``soft_labels``. Until the
    first ``end_epoch``, ``soft_labels`` is the identity (a placeholder: ``initialised`` is false and
    the JS memory must not be written yet).

    Attributes:
        soft_labels: S, (C, C), rows summing to 1.
        accum: G, (C, C) float64, sum of agreeing probability rows this epoch.
        counts: n, (C,) int64, number of agreeing samples per class this epoch.
        initialised: Whether S has been set by at least one ``end_epoch``.
    """

    soft_labels: torch.Tensor
    accum: torch.Tensor
    counts: torch.Tensor
    initialised: bool = False

    @classmethod
    def create(
        cls, num_classes: int, *, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> SoftLabelState:
        """A fresh state for ``num_classes`` classes; S in ``dtype``, G in float64, n in int64."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        return cls(
            soft_labels=torch.eye(num_classes, dtype=dtype, device=device),
            accum=torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device),
            counts=torch.zeros(num_classes, dtype=torch.int64, device=device),
        )

    def accumulate(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``accumulate`` into this state's G and n; returns the (B,) mask of counted samples."""
        return accumulate(self.accum, self.counts, probs, labels)

    def end_epoch(self, *, momentum: float = 0.5) -> None:
        """Update S from this epoch's accumulators (``update_soft_labels``), then reset G and n."""
        new = update_soft_labels(
            self.soft_labels, self.accum, self.counts, momentum=momentum, first=not self.initialised
        )
        self.soft_labels = new.to(self.soft_labels.dtype)
        self.initialised = True
        self.accum.zero_()
        self.counts.zero_()


# --- instance purification ----------------------------------------------------------------------------


def purification_active(epoch: int, *, warmup_epochs: int = 5) -> bool:
    """Whether purification applies at 0-based ``epoch`` (§4 step 2).

    The first E_warm − 1 epochs (0 .. E_warm − 2) train every sample with its own label; S is set
    after epoch 0 and the JS memory fills from epoch 1, so by epoch E_warm − 1 the threshold rests on a
    full epoch of divergences.

    Args:
        epoch: 0-based epoch index.
        warmup_epochs: E_warm, ≥ 1.

    Returns:
        True from epoch E_warm − 1 on.
    """
    if warmup_epochs < 1:
        raise ValueError(f"warmup_epochs must be at least 1, got {warmup_epochs}")
    return epoch >= warmup_epochs - 1


def js_threshold(
    memory: torch.Tensor, *, alpha: float = 0.5, valid_mask: torch.Tensor | None = None
) -> float:
    """Clean/noisy threshold thr = mean(D) + α·std(D) over the JS memory entries that are set (§4 step 3).

    The std is the population one (divide by the count), so one set entry gives std 0, not NaN. An
    entry counts as set when it is finite and, if ``valid_mask`` is given, marked there; a memory
    initialised with NaN therefore needs no mask. With no set entry the threshold is +inf: with nothing
    to compare against, every sample is judged clean (the warm-up behaviour).

    Args:
        memory: (N,) JS memory D, one divergence per sample id.
        alpha: α, the number of standard deviations above the mean.
        valid_mask: Optional (N,) bool mask of the entries that have been written.

    Returns:
        The threshold as a Python float (computed in float64).

    Raises:
        ValueError: If the shapes are wrong.
    """
    if memory.dim() != 1:
        raise ValueError(f"memory must have shape (N,), got {tuple(memory.shape)}")
    valid = torch.isfinite(memory)
    if valid_mask is not None:
        if valid_mask.shape != memory.shape:
            raise ValueError(
                f"valid_mask must have shape {tuple(memory.shape)}, got {tuple(valid_mask.shape)}"
            )
        valid &= valid_mask.bool()
    values = memory[valid].double()
    if values.numel() == 0:
        return math.inf
    mean = values.mean()
    std = values.std(correction=0)
    return float((mean + alpha * std).item())


@dataclass
class JsMemory:
    """The JS memory D (N,) with running float64 sums, so that the per-batch threshold costs O(B).

    `js_threshold` over `values` gives the same threshold in O(N); GRIP takes it every batch (§4 step 3),
    which at O(N) a batch would cost O(N²/B) an epoch. NaN marks an entry never written.
    """

    values: torch.Tensor  # (N,) float32, NaN until written
    sums: torch.Tensor  # (3,) float64: count, Σd, Σd² over the written entries

    @classmethod
    def create(cls, n: int, device: torch.device | str | None = None) -> JsMemory:
        """An empty memory of `n` samples."""
        return cls(
            values=torch.full((n,), float("nan"), device=device),
            sums=torch.zeros(3, dtype=torch.float64, device=device),
        )

    def write(self, idx: torch.Tensor, d: torch.Tensor) -> None:
        """D[idx] = d for distinct indices `idx`, keeping the sums in step."""
        old = self.values[idx].double()
        written = torch.isfinite(old)
        old = torch.where(written, old, 0.0)
        new = d.detach().to(self.values.dtype)
        self.values[idx] = new
        new = new.double()
        self.sums += torch.stack(
            [len(idx) - written.sum(), new.sum() - old.sum(), (new * new).sum() - (old * old).sum()]
        ).double()

    def threshold(self, alpha: float = 0.5) -> float:
        """mean(D) + α·std(D) over the written entries (population std); +inf when none is written."""
        count, total, total_sq = self.sums.tolist()
        if count < 1:
            return math.inf
        mean = total / count
        return mean + alpha * math.sqrt(max(total_sq / count - mean * mean, 0.0))


def purify_batch(
    probs: torch.Tensor,
    labels: torch.Tensor,
    soft_labels: torch.Tensor,
    *,
    threshold: float,
    relabel_tau: float = 0.04,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three-way instance purification: clean, revised or discarded (§4 steps 1 and 4).

    d_b = JS(p̄_b, S[ỹ_b]). Clean if d_b ≤ ``threshold``. Otherwise ŷ_b = argmax p̄_b, and the sample
    is revised (used with ŷ_b) if JS(p̄_b, S[ŷ_b]) ≤ ``relabel_tau``, else discarded. A sample is
    relabelled only when its prediction matches the *typical* prediction of another class closely,
    not merely when it is confident, which keeps confident memorised mistakes from being relabelled.

    When ŷ_b = ỹ_b the revision test is JS(p̄_b, S[ỹ_b]) = d_b ≤ τ, so a sample with
    ``threshold`` < d_b ≤ τ is marked REVISED with an unchanged label; count changed labels with
    ``new_labels != labels``.

    Args:
        probs: (B, C) probabilities; detached here.
        labels: (B,) given labels ỹ.
        soft_labels: (C, C) class soft labels S.
        threshold: thr from ``js_threshold`` (+inf marks every sample clean).
        relabel_tau: τ_relabel in bits (0.04).

    Returns:
        ``(decision, new_labels, d)``: (B,) int8 codes CLEAN = 0, REVISED = 1, DISCARDED = 2; (B,)
        int64 labels to train with (ŷ where revised, ỹ otherwise, discarded included); (B,) d_b, the
        JS to the soft label of the given label, for the memory D.

    Raises:
        ValueError: If the shapes do not agree or ``threshold`` is NaN.
    """
    _check_matrix("probs", probs)
    batch, num_classes = probs.shape
    _check_labels(labels, batch)
    _check_soft_labels(soft_labels, num_classes)
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    p = probs.detach()
    s = soft_labels.detach().to(p.dtype)
    labels = labels.long()
    d = js_divergence(p, s[labels])  # (B,) distance to the given class's typical prediction
    predicted = p.argmax(dim=1)  # (B,)
    d_predicted = js_divergence(p, s[predicted])
    clean = d <= threshold
    revised = ~clean & (d_predicted <= relabel_tau)
    decision = torch.full((batch,), DISCARDED, dtype=torch.int8, device=p.device)
    decision[revised] = REVISED
    decision[clean] = CLEAN
    new_labels = torch.where(revised, predicted, labels)
    return decision, new_labels, d


# --- loss ---------------------------------------------------------------------------------------------


def grip_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    keep: torch.Tensor,
    soft_labels: torch.Tensor,
    *,
    w: float = 0.5,
    gamma: float = 0.5,
) -> dict[str, torch.Tensor]:
    """GRIP training loss (§4 step 5).

    L = (1/|K|) Σ_{b∈K} [(1 − w)·CE(z_b, y_b) + w·CE(z_b, S[y_b])] + γ·NE(p), NE over the whole batch.

    The soft-label term pulls each kept sample toward the typical prediction of its class (group
    regularization), which carries the class-similarity structure a one-hot target lacks. NE(p) =
    mean_b Σ_c p_bc log p_bc ≤ 0 includes the discarded samples: they are not trusted for a target,
    but keeping every prediction from collapsing to one class still applies to them, and adding +γ·NE
    to the minimised loss raises the entropy.

    An empty kept set gives 0 for the kept part (no NaN); the sums are masked rather than indexed, so
    there is no host-device synchronisation.

    Args:
        logits: (B, C) raw outputs, with gradients.
        labels: (B,) labels to train with (possibly revised by ``purify_batch``).
        keep: (B,) bool mask of the kept set K (clean or revised).
        soft_labels: (C, C) class soft labels S; treated as a constant.
        w: Weight of the soft-label term, in [0, 1].
        gamma: γ, weight of NE.

    Returns:
        ``{"total", "ce", "soft", "ne"}``, scalar tensors: ``ce`` and ``soft`` are the means over K of
        CE(z, y) and CE(z, S[y]) (0 when K is empty), ``ne`` is NE(p), and
        total = (1 − w)·ce + w·soft + γ·ne.

    Raises:
        ValueError: If the shapes do not agree or ``w`` is outside [0, 1].
    """
    _check_matrix("logits", logits)
    batch, num_classes = logits.shape
    _check_labels(labels, batch)
    if keep.shape != (batch,):
        raise ValueError(f"keep must have shape ({batch},), got {tuple(keep.shape)}")
    _check_soft_labels(soft_labels, num_classes)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"w must be in [0, 1], got {w}")
    labels = labels.long()
    keep = keep.bool()
    log_probs = F.log_softmax(logits, dim=1)  # (B, C)
    targets = soft_labels.detach().to(log_probs.dtype)[labels]  # (B, C) S[y_b]
    ce_b = -log_probs.gather(1, labels[:, None]).squeeze(1)  # (B,)
    soft_b = -(targets * log_probs).sum(dim=1)  # (B,)
    zero = log_probs.new_zeros(())
    n_keep = keep.sum().clamp_min(1).to(log_probs.dtype)  # empty K: 0 / 1 = 0
    ce = torch.where(keep, ce_b, zero).sum() / n_keep
    soft = torch.where(keep, soft_b, zero).sum() / n_keep
    # Σ p log p from log_softmax: exact for underflowing p (0 · finite = 0), no eps needed.
    ne = (log_probs.exp() * log_probs).sum(dim=1).mean()
    total = (1.0 - w) * ce + w * soft + gamma * ne
    return {"total": total, "ce": ce, "soft": soft, "ne": ne}
