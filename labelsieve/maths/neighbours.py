"""SSSL: synthetic samples from nearest neighbours, weighted by clean probability, with soft targets.

Follows SSSL (Lu & He, arXiv 2406.16966) as restated in docs/algorithms.md §5. Pure tensor maths: the
network, the GMM (§2.1) and the data loading are the caller's; every knob is an argument.

Vocabulary: N samples in the dataset, B batch size, C classes, D feature width (penultimate layer),
K the size of a synthetic group (the sample itself plus its K − 1 nearest neighbours; the published
code uses K = 2), ``w`` clean probabilities from the GMM, ``targets`` (N, C) the soft targets t_i
that start as onehot(ỹ_i), λ (B, K) the mixing weights of each group (column 0 = the sample itself).

The published code searches neighbours on the CPU in a Python loop every iteration; here the search is
``torch.cdist`` + ``topk`` on the tensors' device, chunked over queries so that a dataset-wide search
needs O(chunk_size · N) memory.
"""

from __future__ import annotations

import torch

__all__ = [
    "is_correction_epoch",
    "knn_dataset",
    "knn_within_batch",
    "mixing_weights",
    "scaled_epoch",
    "soft_cross_entropy",
    "soft_target_update",
    "synthesize",
]


def _check_matrix(name: str, x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(x.shape)}")


def _as_distance_dtype(x: torch.Tensor) -> torch.Tensor:
    """Detached features in a dtype cdist supports: float32/float64 kept, anything else to float32."""
    x = x.detach()
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _lowest_index_among_ties(dist: torch.Tensor, k: int) -> torch.Tensor:
    """The k smallest entries of each row, ties at the k-th place resolved towards the lowest index.

    Args:
        dist: (R, N) distances, excluded entries already +inf.
        k: How many to take, 1 ≤ k ≤ number of finite entries per row.

    Returns:
        (R, k) column indices, ascending (order by distance is applied by the caller).
    """
    n = dist.shape[1]
    kth = dist.topk(k, dim=1, largest=False).values.max(dim=1, keepdim=True).values  # (R, 1)
    below = dist < kth
    at_kth = dist == kth
    need = k - below.sum(dim=1, keepdim=True)  # (R, 1): how many of the tied entries to take
    chosen = below | (at_kth & (at_kth.cumsum(dim=1, dtype=torch.int32) <= need))  # exactly k per row
    # A distinct score per chosen column, larger for lower index, 0 elsewhere: topk then returns the
    # chosen columns without a host sync (nonzero() would need one to size its output).
    score = torch.where(chosen, n - torch.arange(n, device=dist.device), 0)  # (R, N) int64
    return score.topk(k, dim=1).indices


def _k_smallest(dist: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k smallest entries of each row, ordered by (distance, index).

    ``topk`` alone is not deterministic among equal values (duplicate images give equal distances),
    so ties are broken by index: inside the chosen k by a stable sort, and at the k-th place by
    recomputing the rows where a tie straddles it.

    Args:
        dist: (R, N) distances, excluded entries +inf.
        k: 1 ≤ k ≤ number of finite entries per row.

    Returns:
        (R, k) int64 column indices.
    """
    values, idx = dist.topk(k, dim=1, largest=False)
    kth = values.max(dim=1, keepdim=True).values  # (R, 1)
    straddles = (dist <= kth).sum(dim=1) > k  # (R,) more candidates than places: a tie at the k-th
    if bool(straddles.any()):
        rows = straddles.nonzero().squeeze(1)
        idx = idx.clone()
        idx[rows] = _lowest_index_among_ties(dist[rows], k)
    idx = idx.sort(dim=1).values  # by index first ...
    order = dist.gather(1, idx).sort(dim=1, stable=True).indices  # ... then stably by distance
    return idx.gather(1, order)


def knn_dataset(
    query: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    query_ids: torch.Tensor | None = None,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """The k nearest bank rows of every query by L2 distance (SSSL's dataset-wide option, §5).

    Queries are processed ``chunk_size`` at a time on the tensors' device: one ``torch.cdist`` of a
    (chunk, D) block against the (N, D) bank, then ``topk``. Peak extra memory is about
    chunk_size · N distances (4 bytes each in float32) plus a few masks of the same shape; lower
    ``chunk_size`` at web scale. The result is the same for every chunk size.

    Order and ties: each row lists its neighbours by increasing distance; equal distances (duplicate
    samples) are ordered by bank index, also at the k-th place, so the result is deterministic.

    Args:
        query: (M, D) features of the samples whose neighbours are wanted (no gradient is taken).
            float32 and float64 are kept; other dtypes are computed in float32. Must be finite.
        bank: (N, D) features of the candidate neighbours, same D.
        k: Number of neighbours, 0 ≤ k ≤ N (k ≤ N − 1 when ``query_ids`` is given).
        query_ids: (M,) bank row of each query (its sample id when the bank is the whole dataset), or
            None. When given, query m never returns bank row ``query_ids[m]``: a sample is not its own
            neighbour, even though its distance to itself is 0.
        chunk_size: Queries per cdist block, ≥ 1.

    Returns:
        (M, k) int64 indices into ``bank``, on ``query``'s device.

    Raises:
        ValueError: On bad shapes, k out of range, ``query_ids`` outside [0, N) or ``chunk_size`` < 1.
    """
    _check_matrix("query", query)
    _check_matrix("bank", bank)
    if query.shape[1] != bank.shape[1]:
        raise ValueError(f"query has {query.shape[1]} features, bank has {bank.shape[1]}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    m, n = query.shape[0], bank.shape[0]
    k_max = n - 1 if query_ids is not None else n
    if not 0 <= k <= k_max:
        raise ValueError(f"k must be in [0, {k_max}] for a bank of {n} rows, got {k}")
    if query_ids is not None:
        if query_ids.shape != (m,):
            raise ValueError(f"query_ids must have shape ({m},), got {tuple(query_ids.shape)}")
        query_ids = query_ids.to(device=query.device, dtype=torch.long)
        if m > 0 and not bool(((query_ids >= 0) & (query_ids < n)).all()):
            raise ValueError(f"query_ids must lie in [0, {n})")
    if k == 0 or m == 0:
        return torch.empty((m, k), dtype=torch.long, device=query.device)

    query, bank = _as_distance_dtype(query), _as_distance_dtype(bank)
    dtype = torch.promote_types(query.dtype, bank.dtype)
    query, bank = query.to(dtype), bank.to(device=query.device, dtype=dtype)
    out = torch.empty((m, k), dtype=torch.long, device=query.device)
    for start in range(0, m, chunk_size):
        stop = min(start + chunk_size, m)
        dist = torch.cdist(query[start:stop], bank)  # (chunk, N)
        if query_ids is not None:
            rows = torch.arange(stop - start, device=query.device)
            dist[rows, query_ids[start:stop]] = torch.inf  # a sample is not its own neighbour
        out[start:stop] = _k_smallest(dist, k)
    return out


def knn_within_batch(features: torch.Tensor, k: int) -> torch.Tensor:
    """The k nearest *other* samples of each batch row by L2 distance (SSSL §5, the published search).

    Neighbours are ordered by increasing distance, equal distances by index. The sample itself is
    excluded even when another row has identical features.

    Args:
        features: (B, D) penultimate features of the batch from a no-grad forward.
        k: Number of neighbours (K − 1), 0 ≤ k ≤ B − 1; the published code uses k = 1.

    Returns:
        (B, k) int64 row indices into the batch, never the row itself.

    Raises:
        ValueError: If ``features`` is not 2-D or k is not in [0, B − 1].
    """
    _check_matrix("features", features)
    batch = features.shape[0]
    if not 0 <= k <= batch - 1:
        raise ValueError(f"k must be in [0, {batch - 1}] for a batch of {batch}, got {k}")
    ids = torch.arange(batch, device=features.device)
    return knn_dataset(features, features, k, query_ids=ids, chunk_size=max(batch, 1))


def mixing_weights(w_self: torch.Tensor, w_neighbours: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Mixing weights λ_{b,k} = w_k / Σ_{k' ∈ {b} ∪ N(b)} w_{k'} of each synthetic group (SSSL, §5).

    Each weight is the clean probability of a group member, so a likely-clean sample dominates its
    synthetic sample and a likely-noisy one contributes little. ``eps`` is added to *every* weight
    before normalising: λ_{b,k} = (w_k + ε) / Σ_{k'} (w_{k'} + ε). This differs from the published
    w_k / (Σ w + ε) by at most ~K·ε for ordinary weights, but rows always sum to 1 exactly (up to
    rounding) and a group whose weights are all zero gets the uniform 1/K instead of NaN or a row
    of near-zeros (which would shrink the synthetic target off the simplex).

    Args:
        w_self: (B,) clean probability of each sample, ≥ 0.
        w_neighbours: (B, K − 1) clean probabilities of its neighbours, ≥ 0, in the order of the
            neighbour indices.
        eps: Positive smoothing added to every weight.

    Returns:
        (B, K) non-negative weights, rows summing to 1; column 0 is the sample itself. float64 if
        either input is float64, else float32.

    Raises:
        ValueError: On bad shapes, negative or non-finite weights, or ``eps`` ≤ 0.
    """
    if w_self.dim() != 1 or w_neighbours.dim() != 2 or w_neighbours.shape[0] != w_self.shape[0]:
        raise ValueError(
            f"expected w_self (B,) and w_neighbours (B, K-1), got {tuple(w_self.shape)}, "
            f"{tuple(w_neighbours.shape)}"
        )
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    dtype = torch.promote_types(w_self.dtype, w_neighbours.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # ε = 1e-10 would underflow to 0 in half precision and give 0/0
    w = torch.cat([w_self[:, None].to(dtype), w_neighbours.to(device=w_self.device, dtype=dtype)], dim=1)
    if w.numel() > 0 and not bool((torch.isfinite(w) & (w >= 0)).all()):
        raise ValueError("weights must be finite and non-negative")
    w = w + eps
    return w / w.sum(dim=1, keepdim=True)


def synthesize(
    x: torch.Tensor, targets: torch.Tensor, neighbour_idx: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic samples x̃_b = Σ_k λ_{b,k} x_k and targets t̃_b = Σ_k λ_{b,k} t_k (SSSL, §5).

    The sum runs over the group {b} ∪ N(b): the sample itself (weight column 0) and its neighbours
    (columns 1..K−1, in the order of ``neighbour_idx``). Row b of ``x`` is the sample itself for
    b < B; a pool with more rows than B lets the dataset-wide search bring neighbours from outside
    the batch: append them after the batch and point ``neighbour_idx`` at them. Vectorised: one
    gather and one einsum, no loop over samples.

    Args:
        x: (P, ...) floating inputs, P ≥ B; rows 0..B−1 are the batch, e.g. (B, 3, H, W) images.
        targets: (P, C) soft targets of the same rows.
        neighbour_idx: (B, K − 1) int rows of ``x`` that are each sample's neighbours.
        weights: (B, K) mixing weights from ``mixing_weights`` (rows summing to 1 keep t̃ on the
            simplex when every t_k is).

    Returns:
        ``(x_mixed, targets_mixed)`` of shapes (B, ...) and (B, C), in the dtypes of ``x`` and
        ``targets``. Gradients flow through ``x``, ``targets`` and ``weights``.

    Raises:
        ValueError: On bad shapes, a non-floating ``x`` or ``targets``, or neighbour indices out of range.
    """
    if x.dim() < 1 or targets.dim() != 2 or targets.shape[0] != x.shape[0]:
        raise ValueError(
            f"expected x (P, ...) and targets (P, C), got {tuple(x.shape)}, {tuple(targets.shape)}"
        )
    if not x.is_floating_point() or not targets.is_floating_point():
        raise ValueError(f"x and targets must be floating, got {x.dtype}, {targets.dtype}")
    _check_matrix("neighbour_idx", neighbour_idx)
    batch, pool = neighbour_idx.shape[0], x.shape[0]
    if batch > pool:
        raise ValueError(f"neighbour_idx has {batch} rows but x holds only {pool}")
    if weights.shape != (batch, neighbour_idx.shape[1] + 1):
        raise ValueError(
            f"weights must have shape ({batch}, {neighbour_idx.shape[1] + 1}), got {tuple(weights.shape)}"
        )
    idx = neighbour_idx.to(device=x.device, dtype=torch.long)
    if idx.numel() > 0 and not bool(((idx >= 0) & (idx < pool)).all()):
        raise ValueError(f"neighbour_idx must lie in [0, {pool})")
    self_idx = torch.arange(batch, device=x.device)[:, None]  # (B, 1)
    members = torch.cat([self_idx, idx], dim=1)  # (B, K), self first like the weights
    lam = weights.to(x.device)
    x_mixed = torch.einsum("bk,bk...->b...", lam.to(x.dtype), x[members])  # x[members]: (B, K, ...)
    targets_mixed = torch.einsum("bk,bkc->bc", lam.to(targets.dtype), targets[members])
    return x_mixed, targets_mixed


def soft_target_update(
    targets: torch.Tensor, probs: torch.Tensor, idx: torch.Tensor, *, momentum: float = 0.9
) -> torch.Tensor:
    """Soft-target correction t_i ← m·t_i + (1 − m)·p_i for the samples ``idx`` (SSSL, §5).

    Run on correction epochs (``is_correction_epoch``), with p_i = softmax(z_i) the prediction on the
    unmixed sample. A high momentum moves the targets slowly, so a few wrong predictions cannot
    overwrite a label at once.

    Pure: returns a new tensor and leaves ``targets`` untouched (assign the result back). Rows not in
    ``idx`` are copied unchanged. ``probs`` is detached: the targets are state, not part of a graph.

    Args:
        targets: (N, C) current soft targets, indexed by sample id.
        probs: (M, C) predicted probabilities of the samples ``idx``.
        idx: (M,) distinct sample ids in [0, N).
        momentum: m in [0, 1]; 1 keeps the targets, 0 replaces them by the predictions.

    Returns:
        (N, C) updated soft targets, dtype and device of ``targets``.

    Raises:
        ValueError: On bad shapes, ``momentum`` outside [0, 1], or ids repeated or out of range.
    """
    _check_matrix("targets", targets)
    _check_matrix("probs", probs)
    if probs.shape[1] != targets.shape[1] or idx.shape != (probs.shape[0],):
        raise ValueError(
            f"expected targets (N, C), probs (M, C), idx (M,), got {tuple(targets.shape)}, "
            f"{tuple(probs.shape)}, {tuple(idx.shape)}"
        )
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    idx = idx.to(device=targets.device, dtype=torch.long)
    n = targets.shape[0]
    if idx.numel() > 0:
        if not bool(((idx >= 0) & (idx < n)).all()):
            raise ValueError(f"idx must lie in [0, {n})")
        # With repeats, which write wins would be unspecified: refuse rather than guess.
        if idx.unique().numel() != idx.numel():
            raise ValueError("idx must not repeat a sample id")
    updated = targets.clone()
    p = probs.detach().to(device=targets.device, dtype=targets.dtype)
    updated[idx] = momentum * targets[idx] + (1.0 - momentum) * p
    return updated


def is_correction_epoch(epoch: int, start_epoch: int, period: int = 10) -> bool:
    """Whether this epoch runs the soft-target correction: every ``period``-th epoch from e_s on (§5).

    Precisely: ``epoch ≥ start_epoch and (epoch − start_epoch) % period == 0``, so e_s itself is a
    correction epoch, then e_s + period, e_s + 2·period, ... ``epoch`` and ``start_epoch`` must use the
    same numbering (both 0-based in labelsieve's loop).

    Args:
        epoch: The current epoch.
        start_epoch: e_s, the epoch synthetic training starts (see ``scaled_epoch``).
        period: Epochs between corrections, ≥ 1 (10 in SSSL).

    Returns:
        True on correction epochs.

    Raises:
        ValueError: If ``period`` < 1.
    """
    if period < 1:
        raise ValueError(f"period must be at least 1, got {period}")
    return epoch >= start_epoch and (epoch - start_epoch) % period == 0


def scaled_epoch(published_epoch: int, published_budget: int, budget: int) -> int:
    """Scale a published epoch (e.g. e_s = 60 of 300 at CIFAR scale) to another epoch budget (§5).

    Returns round(published_epoch · budget / published_budget), halves rounded up, clamped to
    [0, budget]. Computed in integers, so no float rounding can move the result: 60 of 300 becomes
    6 of 30, 5 of 25 and 1 of 7 (1.4).

    Args:
        published_epoch: The epoch in the published schedule.
        published_budget: The published total number of epochs, ≥ 1.
        budget: Our total number of epochs, ≥ 0.

    Returns:
        The scaled epoch in [0, budget].

    Raises:
        ValueError: If ``published_budget`` < 1 or ``budget`` < 0.
    """
    if published_budget < 1:
        raise ValueError(f"published_budget must be at least 1, got {published_budget}")
    if budget < 0:
        raise ValueError(f"budget must be non-negative, got {budget}")
    # floor(x + ½) with x = e·b/P, as (2·e·b + P) // (2·P) in exact integer arithmetic.
    scaled = (2 * published_epoch * budget + published_budget) // (2 * published_budget)
    return min(max(scaled, 0), budget)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of CE(z, t) = −Σ_c t_c log softmax(z)_c with soft targets t (SSSL's loss, §5).

    The published code uses −p_y before e_s; labelsieve uses this cross-entropy throughout.

    Args:
        logits: (B, C) outputs, here on the synthetic samples x̃.
        targets: (B, C) soft targets t̃ (rows on the simplex, not checked).

    Returns:
        Scalar loss with gradients through ``logits``.

    Raises:
        ValueError: If the shapes differ or are not 2-D.
    """
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(
            f"logits and targets must both be (B, C), got {tuple(logits.shape)}, {tuple(targets.shape)}"
        )
    log_probs = torch.log_softmax(logits, dim=1)
    return -(targets.to(log_probs.dtype) * log_probs).sum(dim=1).mean()
