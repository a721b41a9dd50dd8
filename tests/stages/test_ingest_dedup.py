"""Ingest's exact-duplicate and test-leak rule, vectorised over content keys, against a plain loop."""

import numpy as np
import pytest

from labelsieve.data import sources, store
from labelsieve.stages import ingest


def _reference(names, in_test, digests, decoded, labels, classes, stored):
    """The rule one sample at a time: test rows first, then train rows, each in listing order."""
    hexes = [bytes(d).hex() if ok else None for d, ok in zip(digests, decoded, strict=True)]
    keep, skipped, conflicts = decoded.copy(), [], []
    first_test, first_train = {}, {}
    order = [i for i in range(len(names)) if in_test[i]] + [i for i in range(len(names)) if not in_test[i]]
    for i in order:
        sha = hexes[i]
        if sha is None:
            continue
        seen = first_test if in_test[i] else first_train
        if sha in stored:
            keep[i] = False
            split, where = stored[sha]
            skipped.append((names[i], ingest.DUPLICATE, f"already stored ({split}) as {where}"))
        elif sha in seen:
            kept = seen[sha]
            keep[i] = False
            detail = f"same pixels as {names[kept]}"
            if labels[kept] != labels[i]:
                detail += f" (label conflict: kept {classes[labels[kept]]!r}, dropped {classes[labels[i]]!r})"
                conflicts.append((names[kept], names[i]))
            skipped.append((names[i], ingest.DUPLICATE, detail))
        elif not in_test[i] and sha in first_test:
            keep[i] = False
            skipped.append(
                (names[i], ingest.TEST_LEAK, f"also in the test split as {names[first_test[sha]]}")
            )
        else:
            seen[sha] = i
    return keep, skipped, conflicts


@pytest.mark.parametrize("seed", range(5))
def test_deduplicate_matches_the_one_at_a_time_rule(seed):
    rng = np.random.default_rng(seed)
    n, classes = 300, ["a", "b", "c"]
    pool = rng.integers(0, 256, size=(40, ingest.DIGEST_BYTES), dtype=np.uint8)  # 40 distinct images
    digests = pool[rng.integers(0, len(pool), size=n)]
    decoded = rng.random(n) > 0.1
    digests[~decoded] = 0  # as ingest leaves a row it could not decode
    in_test = rng.random(n) < 0.3
    labels = rng.integers(0, len(classes), size=n)
    names = [f"img/{i}.png" for i in range(n)]
    listing = sources.Listing(
        "crawl",
        np.array(names, dtype=store.TEXT),
        np.array([classes[k] for k in labels], dtype=store.TEXT),
        in_test,
        {},
        classes,
        lambda i: b"",
    )
    stored_rows = pool[[3, 17, 29]]
    stored = {
        bytes(d).hex(): (split, f"old/{k}")
        for k, (d, split) in enumerate(zip(stored_rows, ["train", "val", "test"], strict=True))
    }
    stored_columns = (
        ingest._keys(stored_rows),
        np.array(["train", "val", "test"], dtype=store.TEXT),
        np.array([f"old/{k}" for k in range(3)], dtype=store.TEXT),
    )

    skipped = []
    keep, conflicts = ingest._deduplicate(listing, digests, decoded, labels, classes, skipped, stored_columns)
    want_keep, want_skipped, want_conflicts = _reference(
        names, in_test, digests, decoded, labels, classes, stored
    )

    np.testing.assert_array_equal(keep, want_keep)
    assert [(s["source"], s["reason"], s["detail"]) for s in skipped] == want_skipped
    assert [(c["kept"], c["dropped"]) for c in conflicts] == want_conflicts
    reasons = {s["reason"] for s in skipped}
    assert reasons == {ingest.DUPLICATE, ingest.TEST_LEAK}  # the case exercises every branch
    assert any(s["detail"].startswith("already stored") for s in skipped) and want_conflicts


def test_deduplicate_of_nothing_decoded_keeps_nothing():
    listing = sources.Listing(
        "empty",
        np.array(["x"], dtype=store.TEXT),
        np.array(["a"], dtype=store.TEXT),
        np.array([False]),
        {},
        None,
        bytes,
    )
    skipped = []
    keep, conflicts = ingest._deduplicate(
        listing,
        np.zeros((1, ingest.DIGEST_BYTES), np.uint8),
        np.array([False]),
        np.array([0]),
        ["a"],
        skipped,
        ingest._stored(None),
    )
    assert keep.tolist() == [False] and conflicts == [] and skipped == []
