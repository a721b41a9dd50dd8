"""Co-divide: per-sample loss -> 2-component 1-D GMM -> clean probability -> labeled/unlabeled split.

Follows DivideMix (Li et al., ICLR 2020, Sec. 3.1 "Co-divide by loss modeling") as restated in
docs/algorithms.md §2.1. Pure tensor maths: no I/O, no config objects, every knob is a keyword argument.

Vocabulary: N samples, C classes; ``losses`` (N,) per-sample CE against the given (possibly noisy)
``labels``; ``clean_prob`` (N,) = posterior of the lower-mean GMM component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from labelsieve.maths import chunks

__all__ = [
    "Gmm1d",
    "clean_probability",
    "fit_gmm_1d",
    "group_members",
    "minmax_normalise",
    "partition",
    "per_sample_loss",
    "posterior",
]

_LOG_2PI = math.log(2.0 * math.pi)
# sklearn adds 10 * machine epsilon to every component mass so that an empty component neither
# divides by zero nor produces NaN; we copy that so our fits track sklearn's.
_MASS_EPS = 10.0 * torch.finfo(torch.float64).eps
_KMEANS_MAX_ITER = 300
_KMEANS_REL_TOL = 1e-4  # squared centre shift, relative to var(x); sklearn KMeans' default


@dataclass(frozen=True)
class Gmm1d:
    """A fitted two-component 1-D Gaussian mixture (all tensors float64, shape (2,)).

    Attributes:
        weights: Mixing proportions, sum to 1.
        means: Component means.
        variances: Component variances, ``reg_covar`` included.
        converged: Whether the lower-bound change fell below ``tol`` within ``max_iter``.
        n_iter: Number of EM iterations run.
        lower_bound: Mean per-sample log-likelihood at the last E-step.
    """

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    converged: bool
    n_iter: int
    lower_bound: float

    @property
    def clean_component(self) -> int:
        """Index of the lower-mean component: small loss = likely clean (DivideMix Sec. 3.1)."""
        return int(torch.argmin(self.means).item())


def _check_vector(name: str, x: torch.Tensor) -> None:
    if x.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(x.shape)}")


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every sample against its given label, ℓ_i = CE(z_i, ỹ_i) (§2.1 step 1).

    Args:
        logits: (N, C) raw network outputs.
        labels: (N,) integer class ids, possibly noisy.

    Returns:
        (N,) per-sample losses, same floating dtype as ``logits``.

    Raises:
        ValueError: If the shapes do not match.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    return F.cross_entropy(logits, labels, reduction="none")


def minmax_normalise(losses: torch.Tensor, *, groups: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Rescale losses to [0, 1]: ℓ̂ = (ℓ − min)/(max − min) (§2.1 step 2).

    Args:
        losses: (N,) per-sample losses.
        groups: the sample indices of each group (`group_members`), every sample in exactly one, or
            None for one group. With groups, min and max are taken within each group.

    Returns:
        (N,) normalised losses. A constant group maps to zeros rather than NaN.
    """
    _check_vector("losses", losses)
    if groups is not None:
        out = torch.empty_like(losses)
        for members in groups:
            out[members] = minmax_normalise(losses[members])
        return out
    if losses.numel() == 0:
        return losses.clone()
    low, high = torch.aminmax(losses)
    span = high - low
    if span <= 0:
        return torch.zeros_like(losses)
    return torch.sub(losses, low).div_(span)  # in place: one (N,) allocation, not two


def group_members(groups: torch.Tensor) -> list[torch.Tensor]:
    """Indices of the samples of each non-empty group, in ascending group order.

    Args:
        groups: (N,) integer group ids.

    Raises:
        ValueError: If ``groups`` is not an (N,) integer tensor.
    """
    if groups.dim() != 1 or groups.is_floating_point():
        raise ValueError(f"groups must be (N,) integers, got {tuple(groups.shape)} {groups.dtype}")
    order = torch.sort(groups, stable=True)
    _, counts = torch.unique_consecutive(order.values, return_counts=True)
    return list(torch.split(order.indices, counts.tolist()))


class _Workspace:
    """The sample in float64 and the responsibilities of component 1, (N,) each, and two scratch
    buffers of one chunk. Every pass walks the sample chunk by chunk (`chunks.row_chunks`), so the
    scratch stays in cache and nothing N-sized is allocated after the start: at N = 1e7 the EM was
    bound by fresh 80 MB temporaries and memory traffic."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.n = x.numel()
        self.sum_x = float(x.sum().item())
        self.resp = torch.empty_like(x)  # responsibility of component 1
        self.chunks = chunks.row_chunks(self.n)
        size = self.chunks[0].stop if self.chunks else 0  # the first chunk is the largest
        self.a = x.new_empty(size)
        self.b = x.new_empty(size)

    def chunk(self, rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views of x and resp on ``rows`` and of the two scratch buffers, all of the chunk's length."""
        size = rows.stop - rows.start
        return self.x[rows], self.resp[rows], self.a[:size], self.b[:size]


def _second_centre(ws: _Workspace, first: float, draws: torch.Tensor) -> list[float]:
    """The k-means++ candidates for the second centre: samples drawn ∝ (x − first)².

    Inverse-CDF sampling: the index is where the running sum of squared distances first reaches
    draw · total. The running sum is taken chunk by chunk (each chunk's cumsum plus the total before
    it), remembering each chunk's end; the chunk that holds a target is then summed again to find it.
    Returns [] when every distance is 0.
    """
    ends = []  # the running sum at the end of each chunk
    total = 0.0
    for rows in ws.chunks:
        x, _, a, b = ws.chunk(rows)
        torch.sub(x, first, out=a).square_()
        torch.cumsum(a, dim=0, out=b).add_(total)
        total = float(b[-1].item())
        ends.append(total)
    if total <= 0:
        return []
    candidates = []
    for target in (draws * total).tolist():
        # The first chunk whose end reaches the target (the last one if rounding leaves it short).
        j = next((j for j, end in enumerate(ends) if end >= target), len(ends) - 1)
        rows = ws.chunks[j]
        x, _, a, b = ws.chunk(rows)
        torch.sub(x, first, out=a).square_()
        torch.cumsum(a, dim=0, out=b).add_(ends[j - 1] if j else 0.0)
        target_t = torch.tensor([target], dtype=b.dtype, device=b.device)
        i = min(int(torch.searchsorted(b, target_t).item()), len(b) - 1)
        candidates.append(float(x[i].item()))
    return candidates


def _assign(ws: _Workspace, midpoint: float) -> tuple[float, float]:
    """Hard 2-means labels into ``ws.resp`` (1.0 = above ``midpoint``); returns their count and Σ x."""
    n_high = s_high = 0.0
    for rows in ws.chunks:
        x, r, _, _ = ws.chunk(rows)
        torch.gt(x, midpoint, out=r)
        n_high += float(r.sum().item())
        s_high += float(torch.dot(r, x).item())
    return n_high, s_high


def _kmeans_init(ws: _Workspace, seed: int) -> None:
    """Hard 2-means labels of the sample, seeded k-means++ then Lloyd (like sklearn's default init).

    In 1-D with two centres the assignment is a threshold at their midpoint, so a Lloyd step is one
    comparison and two reductions. Writes the labels into ``ws.resp`` (1.0 = larger centre).
    """
    x, n = ws.x, ws.n
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++: first centre uniform; second drawn ∝ squared distance, keeping the better of
    # 2 candidates (sklearn's greedy variant uses 2 + ⌊ln k⌋ = 2 local trials for k = 2).
    first = float(x[int(torch.randint(n, (1,), generator=gen).item())].item())
    draws = torch.rand(2, generator=gen, dtype=torch.float64)
    candidates = _second_centre(ws, first, draws)
    if candidates:
        potentials = [0.0, 0.0]
        for rows in ws.chunks:
            xc, _, a, b = ws.chunk(rows)
            torch.sub(xc, first, out=a).square_()
            for i, c in enumerate(candidates):
                torch.sub(xc, c, out=b).square_()
                potentials[i] += float(torch.minimum(a, b, out=b).sum().item())
        second = candidates[min(range(2), key=potentials.__getitem__)]
    else:
        second = first  # constant input: one cluster stays empty; EM copes through _MASS_EPS
    low, high = sorted((first, second))
    tol = _KMEANS_REL_TOL * float(x.var(unbiased=False).item())
    for _ in range(_KMEANS_MAX_ITER):
        n_high, s_high = _assign(ws, 0.5 * (low + high))
        new_high = s_high / n_high if n_high > 0 else high  # an empty cluster keeps its centre
        new_low = (ws.sum_x - s_high) / (n - n_high) if n_high < n else low
        shift = (new_low - low) ** 2 + (new_high - high) ** 2
        low, high = new_low, new_high
        if shift <= tol:
            break
    _assign(ws, 0.5 * (low + high))


def _m_step(ws: _Workspace, reg_covar: float) -> tuple[list[float], list[float], list[float]]:
    """Weighted moments of the two components from ``ws.resp`` (component 0 gets 1 − resp).

    Deviations are taken about the new means (two-pass), which stays exact when the variance is
    tiny compared with the mean, unlike E[x²] − E[x]²; hence two walks over the chunks.
    """
    mass, weighted_sum, spread = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for rows in ws.chunks:
        x, r, r_low, _ = ws.chunk(rows)
        torch.sub(1.0, r, out=r_low)
        for k, resp_k in ((0, r_low), (1, r)):
            mass[k] += float(resp_k.sum().item())
            weighted_sum[k] += float(torch.dot(resp_k, x).item())
    mass = [m + _MASS_EPS for m in mass]
    means = [weighted_sum[k] / mass[k] for k in (0, 1)]
    for rows in ws.chunks:
        x, r, r_low, dev = ws.chunk(rows)
        torch.sub(1.0, r, out=r_low)
        for k, resp_k in ((0, r_low), (1, r)):
            torch.sub(x, means[k], out=dev).square_()
            spread[k] += float(torch.dot(resp_k, dev).item())
    variances = [spread[k] / mass[k] + reg_covar for k in (0, 1)]
    return [m / ws.n for m in mass], means, variances


def _log_norm_const(weight: float, var: float) -> float:
    """The x-independent part of log(π_k · N(x | μ_k, σ²_k))."""
    return math.log(weight) - 0.5 * (_LOG_2PI + math.log(var))


def _e_step(ws: _Workspace, weights: list[float], means: list[float], variances: list[float]) -> float:
    """Responsibilities of component 1 into ``ws.resp``; returns the mean log-likelihood.

    With two components the softmax over components is a sigmoid of the log-odds d = log p₁ − log p₀,
    and log(p₀ + p₁) = log p₀ + softplus(d), so no (N, 2) buffer is needed.
    """
    c0 = _log_norm_const(weights[0], variances[0])
    c1 = _log_norm_const(weights[1], variances[1])
    sum_q0 = sum_d = sum_abs = sum_log1p = 0.0
    for rows in ws.chunks:
        x, r, q0, d = ws.chunk(rows)
        torch.sub(x, means[0], out=q0).square_().mul_(1.0 / variances[0])  # (x − μ₀)²/σ₀²
        torch.sub(x, means[1], out=d).square_().mul_(1.0 / variances[1])  # (x − μ₁)²/σ₁²
        sum_q0 += float(q0.sum().item())
        d.sub_(q0).mul_(-0.5).add_(c1 - c0)
        torch.sigmoid(d, out=r)
        # softplus(d) = max(d, 0) + log1p(exp(−|d|)), and Σ max(d, 0) = (Σ d + Σ |d|) / 2.
        sum_d += float(d.sum().item())
        torch.abs(d, out=q0)
        sum_abs += float(q0.sum().item())
        sum_log1p += float(q0.neg_().exp_().log1p_().sum().item())
    sum_log_p0 = ws.n * c0 - 0.5 * sum_q0
    return (sum_log_p0 + 0.5 * (sum_d + sum_abs) + sum_log1p) / ws.n


def fit_gmm_1d(
    x: torch.Tensor,
    *,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    seed: int,
) -> Gmm1d:
    """Fit a 2-component 1-D GMM by EM, following sklearn ``GaussianMixture`` semantics.

    DivideMix (Li et al., ICLR 2020, Sec. 3.1, Eq. 1) fits the mixture with sklearn; this is a
    vectorised float64 re-implementation that runs on ``x``'s device in O(N) time per iteration and
    O(N) memory (two float64 copies; the passes walk the sample in chunks, `labelsieve.maths.chunks`),
    so it scales to N = 1e7. Semantics copied from sklearn: hard
    k-means labels (seeded k-means++ then Lloyd) give the initial parameters; each iteration is an
    E-step (which also yields the lower bound = mean per-sample log-likelihood) then an M-step;
    ``reg_covar`` is added to every variance; stop when |Δ lower bound| < ``tol``.

    Args:
        x: (N,) samples, N ≥ 2. Cast to float64 internally.
        max_iter: Maximum EM iterations.
        tol: Convergence threshold on the change of the mean log-likelihood.
        reg_covar: Non-negative ridge added to each variance.
        seed: Seed of the k-means++ initialisation; same seed and input give the same fit.

    Returns:
        The fitted ``Gmm1d``.

    Raises:
        ValueError: If ``x`` is not (N,) with N ≥ 2, contains non-finite values, or a knob is invalid.
    """
    _check_vector("x", x)
    if x.numel() < 2:
        raise ValueError(f"need at least 2 samples to fit 2 components, got {x.numel()}")
    if max_iter < 0 or tol < 0 or reg_covar < 0:
        raise ValueError("max_iter, tol and reg_covar must be non-negative")
    ws = _Workspace(x.detach().to(torch.float64).contiguous())
    # A NaN or an infinity anywhere makes the sum NaN or infinite, so this one check covers every sample.
    if not math.isfinite(ws.sum_x):
        raise ValueError("x contains NaN or infinite values")

    _kmeans_init(ws, seed)
    weights, means, variances = _m_step(ws, reg_covar)
    lower_bound = -math.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported after the loop
        previous = lower_bound
        lower_bound = _e_step(ws, weights, means, variances)
        weights, means, variances = _m_step(ws, reg_covar)
        if abs(lower_bound - previous) < tol:
            converged = True
            break

    def as_tensor(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64)

    return Gmm1d(as_tensor(weights), as_tensor(means), as_tensor(variances), converged, n_iter, lower_bound)


def _log_joint(x: torch.Tensor, weight: float, mean: float, var: float) -> torch.Tensor:
    """log(π_k · N(x | μ_k, σ²_k)) for one component, (N,)."""
    return _log_norm_const(weight, var) - 0.5 * (x - mean).square() / var


def posterior(gmm: Gmm1d, x: torch.Tensor) -> torch.Tensor:
    """Posterior of the lower-mean component, i.e. the clean probability w_i (DivideMix Eq. 1).

    Args:
        gmm: A fitted mixture.
        x: (N,) samples (normalised losses).

    Returns:
        (N,) values in [0, 1], dtype of ``x`` if floating else float64.
    """
    _check_vector("x", x)
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    clean = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    components = [(float(gmm.weights[k]), float(gmm.means[k]), float(gmm.variances[k])) for k in (0, 1)]
    k = gmm.clean_component
    for rows in chunks.row_chunks(x.numel()):
        x64 = x[rows].detach().to(torch.float64)
        log_joint = [_log_joint(x64, *components[j]) for j in (0, 1)]
        # Bayes rule for two components is a sigmoid of the log-odds; taking it directly (not 1 − σ)
        # keeps precision when the posterior is close to 0 or 1.
        clean[rows] = torch.sigmoid(log_joint[k] - log_joint[1 - k])
    return clean


def clean_probability(
    losses: torch.Tensor,
    *,
    history: torch.Tensor | None = None,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
    seed: int,
) -> torch.Tensor:
    """Per-sample clean probability from per-sample losses (docs/algorithms.md §2.1 steps 2-4).

    normalise → optionally average with the loss history → fit the GMM → posterior of the low-loss
    component. DivideMix averages the last 5 epochs at 90% noise; here the caller decides by what it
    passes as ``history``.

    Args:
        losses: (N,) raw per-sample losses of this epoch.
        history: (H, N) min-max-normalised losses of the H previous epochs, oldest first, or None.
            The current normalised losses are appended and the H + 1 rows averaged. The caller
            keeps the window: append ``minmax_normalise(losses)`` and drop old rows itself.
        max_iter: GMM EM iterations.
        tol: GMM convergence tolerance on the mean log-likelihood.
        reg_covar: Ridge added to each GMM variance.
        seed: Seed of the GMM initialisation.

    Returns:
        (N,) clean probabilities in [0, 1], dtype of ``losses``.

    Raises:
        ValueError: If ``history`` is not (H, N) for the same N.
    """
    current = minmax_normalise(losses)
    if history is not None:
        if history.dim() != 2 or history.shape[1] != losses.shape[0]:
            raise ValueError(f"history must be (H, {losses.shape[0]}), got {tuple(history.shape)}")
        stacked = torch.cat([history.to(device=current.device, dtype=current.dtype), current[None]])
        current = stacked.mean(dim=0)
    gmm = fit_gmm_1d(current, max_iter=max_iter, tol=tol, reg_covar=reg_covar, seed=seed)
    return posterior(gmm, current)


def partition(
    clean_prob: torch.Tensor, *, threshold: float = 0.5, min_size: int
) -> tuple[torch.Tensor, bool]:
    """Split samples into the labeled set X = {w_i > τ} and the unlabeled rest (§2.1 steps 5, 7).

    Guard (the published code crashes here): if X or U would hold fewer than ``min_size`` samples
    (one batch), X becomes the top-k by clean probability, or U the bottom-k, with k = min_size.
    When N < 2·min_size both cannot be met, so k is bounded by N: X is guaranteed ⌈N/2⌉ and U ⌊N/2⌋
    (never empty for N ≥ 2). Ties are broken by sample index, so the result is deterministic.

    Args:
        clean_prob: (N,) clean probabilities w.
        threshold: τ; a sample is labeled iff w_i > τ.
        min_size: Smallest acceptable set, usually the batch size B; 0 disables the guard.

    Returns:
        ``(labeled_mask, fell_back)``: (N,) bool mask of X (U = ~mask), and whether the guard fired
        (the caller should log a warning).

    Raises:
        ValueError: If ``clean_prob`` is not 1-D or ``min_size`` is negative.
    """
    _check_vector("clean_prob", clean_prob)
    if min_size < 0:
        raise ValueError(f"min_size must be non-negative, got {min_size}")
    n = clean_prob.numel()
    labeled = clean_prob > threshold
    n_labeled = int(labeled.sum().item())
    need_labeled = min(min_size, n - n // 2)
    need_unlabeled = min(min_size, n // 2)
    # Because need_labeled + need_unlabeled ≤ N, fixing the short side never breaks the other one.
    if n_labeled >= need_labeled and n - n_labeled >= need_unlabeled:
        return labeled, False
    order = torch.sort(clean_prob, descending=True, stable=True).indices
    n_keep = need_labeled if n_labeled < need_labeled else n - need_unlabeled
    fixed = torch.zeros_like(labeled)
    fixed[order[:n_keep]] = True
    return fixed, True
