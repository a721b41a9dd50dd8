"""The MixMatch step of DivideMix with co-guessing and co-refinement, and SMR's mixup warm-up.

Follows DivideMix (Li et al., ICLR 2020, Sec. 3.2, Eqs. 2-10) and SMR (Zhang et al., Mathematics 2024,
12, 2389, Sec. 3) as restated in docs/algorithms.md §2.2 and §3.1. Pure tensor maths: the networks are run
by the caller, which hands in probabilities or logits; every knob is an argument.

Vocabulary: B per-branch batch size, C classes, T sharpening temperature, ``w`` (B,) clean
probabilities of a labeled batch, λ' = max(λ, 1 − λ) the mixup coefficient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "co_guess",
    "co_refine",
    "confidence_penalty",
    "lambda_u_ramp",
    "mix",
    "mixmatch_losses",
    "mixup_warmup_loss",
    "sample_lambda",
    "sharpen",
]


def _check_probs(name: str, p: torch.Tensor) -> None:
    if p.dim() != 2:
        raise ValueError(f"{name} must have shape (B, C), got {tuple(p.shape)}")


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """Temperature sharpening q = p^{1/T} / Σ_c p_c^{1/T} (DivideMix Eq. 5; MixMatch Eq. 7).

    Args:
        p: (B, C) probabilities, rows summing to 1.
        T: Temperature, > 0; T < 1 lowers the entropy, T = 1 is the identity.

    Returns:
        (B, C) sharpened probabilities, rows summing to 1.

    Raises:
        ValueError: If ``p`` is not 2-D or ``T`` is not positive.
    """
    _check_probs("p", p)
    if T <= 0:
        raise ValueError(f"T must be positive, got {T}")
    powered = p.pow(1.0 / T)
    return powered / powered.sum(dim=1, keepdim=True)


def co_guess(
    probs_net_v1: torch.Tensor,
    probs_net_v2: torch.Tensor,
    probs_peer_v1: torch.Tensor,
    probs_peer_v2: torch.Tensor,
    T: float,
) -> torch.Tensor:
    """Co-guess the labels of an unlabeled batch (DivideMix Eq. 4-5, §2.2).

    q̄ = ¼ Σ_{m ∈ {net, peer}} Σ_{v = 1, 2} softmax(m(u_v)), then q = sharpen(q̄, T). Averaging over
    both networks is what makes the guess "co": one network's confirmation bias is diluted by its peer.

    Args:
        probs_net_v1: (B, C) softmax of the training network on view 1 of the unlabeled batch.
        probs_net_v2: (B, C) same network, view 2.
        probs_peer_v1: (B, C) softmax of the frozen peer network, view 1.
        probs_peer_v2: (B, C) peer network, view 2.
        T: Sharpening temperature.

    Returns:
        (B, C) guessed soft targets q. Computed from what is given; call it under ``torch.no_grad``.
    """
    shapes = {tuple(p.shape) for p in (probs_net_v1, probs_net_v2, probs_peer_v1, probs_peer_v2)}
    if len(shapes) != 1:
        raise ValueError(f"all four probability tensors must share one (B, C) shape, got {shapes}")
    mean = (probs_net_v1 + probs_net_v2 + probs_peer_v1 + probs_peer_v2) / 4.0
    return sharpen(mean, T)


def co_refine(
    probs_v1: torch.Tensor,
    probs_v2: torch.Tensor,
    labels: torch.Tensor,
    w: torch.Tensor,
    num_classes: int,
    T: float,
) -> torch.Tensor:
    """Co-refine the labels of a labeled batch (DivideMix Eq. 2-3, §2.2).

    p̄ = ½ Σ_v softmax(net(x_v)), ȳ = w·onehot(ỹ) + (1 − w)·p̄, then sharpen(ȳ, T). The clean
    probability w comes from the *peer's* GMM (co-divide), so the given label is trusted in proportion
    to how clean the other network judges it.

    Args:
        probs_v1: (B, C) softmax of the training network on view 1 of the labeled batch.
        probs_v2: (B, C) same network, view 2.
        labels: (B,) given (possibly noisy) integer labels ỹ.
        w: (B,) clean probabilities in [0, 1].
        num_classes: C.
        T: Sharpening temperature.

    Returns:
        (B, C) refined soft targets. Call it under ``torch.no_grad``.
    """
    _check_probs("probs_v1", probs_v1)
    batch = probs_v1.shape[0]
    if probs_v2.shape != probs_v1.shape or labels.shape != (batch,) or w.shape != (batch,):
        raise ValueError("expected probs (B, C) twice, labels (B,) and w (B,)")
    if probs_v1.shape[1] != num_classes:
        raise ValueError(f"probs have {probs_v1.shape[1]} classes, num_classes is {num_classes}")
    mean = (probs_v1 + probs_v2) / 2.0
    onehot = F.one_hot(labels.long(), num_classes).to(mean.dtype)
    w_col = w.to(mean.dtype)[:, None]  # (B, 1) broadcasts over classes
    return sharpen(w_col * onehot + (1.0 - w_col) * mean, T)


def sample_lambda(alpha: float, generator: torch.Generator) -> float:
    """Draw the mixup coefficient λ' = max(λ, 1 − λ), λ ~ Beta(α, α) (DivideMix Eq. 6-7, SMR §3.1).

    Reproducibility: λ = G₁ / (G₁ + G₂) with G₁, G₂ ~ Gamma(α, 1) drawn in float64 by
    ``torch._standard_gamma`` from ``generator`` alone (torch.distributions takes no generator, and
    numpy's global state is what makes the published code irreproducible). The same generator state
    gives the same λ'. Taking the max keeps the mixed sample closer to its first source, so the loss
    of each row still mostly refers to its own target.

    Args:
        alpha: Beta concentration, > 0 (4 at CIFAR scale, 0.5 at web scale).
        generator: Seeded generator; its device decides where the draw happens. Advanced by the call.

    Returns:
        λ' in [0.5, 1].

    Raises:
        ValueError: If ``alpha`` is not positive.
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    concentration = torch.full((2,), float(alpha), dtype=torch.float64, device=generator.device)
    g1, g2 = torch._standard_gamma(concentration, generator=generator).tolist()
    if g1 + g2 <= 0:
        # Both draws underflowed (possible only for tiny α); Beta(α, α) → Bernoulli(½) as α → 0.
        return 1.0
    lam = g1 / (g1 + g2)
    return max(lam, 1.0 - lam)


def mix(
    x: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup with a partner permutation: Z̃ = λ'Z + (1 − λ')Z_π, P̃ = λ'P + (1 − λ')P_π (DivideMix Eq. 8-9).

    Args:
        x: (M, ...) inputs, e.g. the 4B rows [x₁; x₂; u₁; u₂] of images (M, 3, H, W).
        targets: (M, C) soft targets, e.g. [ȳ; ȳ; q; q].
        lam: Mixing coefficient λ'.
        perm: (M,) permutation of the rows (the partner of row i is row perm[i]).

    Returns:
        ``(x_mixed, targets_mixed)`` with the shapes of ``x`` and ``targets``.
    """
    if perm.shape != (x.shape[0],) or targets.shape[0] != x.shape[0]:
        raise ValueError("x, targets and perm must share their first dimension")
    x_mixed = lam * x + (1.0 - lam) * x[perm]
    targets_mixed = lam * targets + (1.0 - lam) * targets[perm]
    return x_mixed, targets_mixed


def mixmatch_losses(
    logits: torch.Tensor, mixed_targets: torch.Tensor, num_labeled_rows: int
) -> dict[str, torch.Tensor]:
    """The three loss terms of the DivideMix SSL step (Eqs. 10-12, §2.2).

    - L_x = mean over the first ``num_labeled_rows`` rows of CE(s, P̃) (soft-target cross-entropy);
    - L_u = mean over the remaining rows and over classes of (softmax(s) − P̃)²; the squared error is
      bounded, so wrong guesses on unlabeled rows cannot dominate; 0 when there are no such rows
      (web-scale variant, λ_u = 0, where only the mixed labeled rows are forwarded);
    - L_reg = Σ_c (1/C)·log((1/C)/p̂_c), p̂ the mean softmax over all rows given: KL from a uniform
      prior, which keeps the network from collapsing onto a few classes.

    The caller combines them as L_x + λ_u(t)·L_u + L_reg.

    Args:
        logits: (M, C) outputs on the mixed rows, labeled rows first (M = 4B, or 2B at web scale).
        mixed_targets: (M, C) mixed soft targets P̃.
        num_labeled_rows: Number of leading labeled rows (2B), 1 ≤ it ≤ M.

    Returns:
        ``{"lx": ..., "lu": ..., "lreg": ...}``, scalar tensors with gradients through ``logits``.
    """
    if logits.dim() != 2 or logits.shape != mixed_targets.shape:
        raise ValueError(
            f"logits and targets must both be (M, C), got {tuple(logits.shape)}, {tuple(mixed_targets.shape)}"
        )
    rows, num_classes = logits.shape
    if not 1 <= num_labeled_rows <= rows:
        raise ValueError(f"num_labeled_rows must be in [1, {rows}], got {num_labeled_rows}")
    log_probs = F.log_softmax(logits, dim=1)
    probs = log_probs.exp()
    n_x = num_labeled_rows
    lx = -(mixed_targets[:n_x] * log_probs[:n_x]).sum(dim=1).mean()
    # No unlabeled rows (web-scale variant): L_u is a zero that still lives on the right device.
    lu = (probs[n_x:] - mixed_targets[n_x:]).square().mean() if n_x < rows else logits.new_zeros(())
    prior = 1.0 / num_classes
    mean_probs = probs.mean(dim=0)
    lreg = (prior * (math.log(prior) - torch.log(mean_probs))).sum()
    return {"lx": lx, "lu": lu, "lreg": lreg}


def lambda_u_ramp(
    lambda_u: float, epoch_fraction: float, warmup_epochs: int, ramp_epochs: float = 16
) -> float:
    """Linearly ramped unlabeled-loss weight λ_u(t) = λ_u·clip((t − E_warm)/16, 0, 1) (§2.2).

    Args:
        lambda_u: Final weight λ_u.
        epoch_fraction: t, the fractional epoch (epoch + batch_idx / iterations_per_epoch).
        warmup_epochs: E_warm; the ramp starts when the SSL phase starts.
        ramp_epochs: Length of the ramp in epochs (16 in the published code), > 0.

    Returns:
        The weight to multiply L_u with.
    """
    if ramp_epochs <= 0:
        raise ValueError(f"ramp_epochs must be positive, got {ramp_epochs}")
    progress = (epoch_fraction - warmup_epochs) / ramp_epochs
    return lambda_u * min(max(progress, 0.0), 1.0)


def mixup_warmup_loss(
    logits: torch.Tensor, labels: torch.Tensor, labels_perm: torch.Tensor, lam: float
) -> torch.Tensor:
    """SMR's mixup warm-up loss L = λ'·CE(f(x̃), ỹ) + (1 − λ')·CE(f(x̃), ỹ_π) (docs/algorithms.md §3.1).

    Replaces DivideMix's CE (+ NE for asymmetric noise) warm-up: mixup alone slows memorisation of
    wrong labels without knowing the noise type.

    Args:
        logits: (B, C) outputs on the mixed batch x̃ = λ'x + (1 − λ')x_π.
        labels: (B,) given labels ỹ.
        labels_perm: (B,) labels of the partners, ỹ_π.
        lam: λ'.

    Returns:
        Scalar loss, batch mean.
    """
    return lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, labels_perm)


def confidence_penalty(probs: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Negative entropy NE(p) = mean_b Σ_c p_bc log p_bc ≤ 0 (DivideMix Sec. 3.3, asymmetric warm-up).

    Adding +γ·NE to a minimised loss raises prediction entropy, which keeps the warm-up network from
    becoming over-confident on asymmetric noise (the "confidence penalty").

    Args:
        probs: (B, C) probabilities.
        eps: Floor inside the log so that p = 0 contributes 0 and the gradient stays finite.

    Returns:
        Scalar NE(p).
    """
    _check_probs("probs", probs)
    return (probs * torch.log(probs.clamp_min(eps))).sum(dim=1).mean()
