"""`ingest.append_to`: a new crawl is added to an existing dataset without disturbing it."""

import json
import shutil

import numpy as np
import pytest

from labelsieve.data.store import load_dataset
from labelsieve.stages import ingest
from tests.conftest import random_png


def _params(make_params, source, *extra):
    return make_params(
        f"ingest.source={source}",
        "data.image_size=8",
        "ingest.val_fraction=0.2",
        "ingest.test_fraction=0.25",
        *extra,
    )


def _crawl(root, files):
    """root/<class>/<name>.png from {(class, name): seed}."""
    for (label, name), seed in files.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{name}.png").write_bytes(random_png(seed))
    return root


def _rows(ds, split):
    table = ds.samples[split]
    return list(zip(table["id"], table["label"], table["sha256"], strict=True))


def test_ingest_append_keeps_old_rows_and_skips_stored_images(tmp_path, make_params):
    old_files = {(c, f"o{i}"): 100 * k + i for k, c in enumerate(("cat", "dog")) for i in range(8)}
    first = _crawl(tmp_path / "crawl1", old_files)
    ingest.run(_params(make_params, first), out_dir=tmp_path / "ds")
    before = load_dataset(tmp_path / "ds")
    old_arrays = {s: np.array(before.images(s)) for s in ("train", "val", "test")}
    old_rows = {s: _rows(before, s) for s in ("train", "val", "test")}

    new_files = {
        (c, f"n{i}"): 1000 + 100 * k + i for k, c in enumerate(("cat", "dog", "eel")) for i in range(8)
    }
    again = {("cat", "copy_of_train"): 100 * 0 + 0, ("dog", "copy_of_other"): 100 * 1 + 5}  # already stored
    second = _crawl(tmp_path / "crawl2", {**new_files, **again})
    with pytest.warns(UserWarning, match="lacks: 'eel'"):
        summary = ingest.run(
            _params(make_params, second, f"ingest.append_to={tmp_path / 'ds'}"), out_dir=tmp_path / "ds"
        )

    after = load_dataset(tmp_path / "ds")
    assert after.classes == ["cat", "dog", "eel"]  # old indices kept; the new class goes last
    for split in ("train", "val", "test"):
        n_old = len(old_rows[split])
        assert _rows(after, split)[:n_old] == old_rows[split]
        np.testing.assert_array_equal(np.array(after.images(split))[:n_old], old_arrays[split])
    report = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert report["skipped_counts"] == {"duplicate": 2}
    assert report["appended_to"] == str(tmp_path / "ds")
    assert sum(report["added"].values()) == 24
    assert summary["train"] + summary["val"] + summary["test"] == 16 + 24
    stored = [sha for s in ("train", "val", "test") for sha in after.samples[s]["sha256"]]
    assert len(stored) == len(set(stored))  # no image twice


def test_ingest_append_splits_new_samples_like_a_fresh_ingest(tmp_path, make_params):
    old_files = {(c, f"o{i}"): 100 * k + i for k, c in enumerate(("a", "b")) for i in range(6)}
    ingest.run(_params(make_params, _crawl(tmp_path / "crawl1", old_files)), out_dir=tmp_path / "base")
    new_files = {(c, f"n{i}"): 500 + 100 * k + i for k, c in enumerate(("a", "b")) for i in range(12)}
    second = _crawl(tmp_path / "crawl2", new_files)
    ingest.run(_params(make_params, second), out_dir=tmp_path / "fresh")
    shutil.copytree(tmp_path / "base", tmp_path / "grown")
    ingest.run(
        _params(make_params, second, f"ingest.append_to={tmp_path / 'grown'}"), out_dir=tmp_path / "grown"
    )
    fresh, grown, base = (load_dataset(tmp_path / n) for n in ("fresh", "grown", "base"))
    for split in ("train", "val", "test"):
        n_old = len(base.samples[split]["id"])
        assert grown.samples[split]["sha256"][n_old:].tolist() == fresh.samples[split]["sha256"].tolist()


def test_ingest_append_counts_old_samples_against_per_class_limit(tmp_path, make_params):
    old_files = {("a", f"o{i}"): i for i in range(5)}
    base = _crawl(tmp_path / "crawl1", old_files)
    extra = ("ingest.val_fraction=0", "ingest.per_class_limit=6")
    with pytest.warns(UserWarning, match="single class, 'a'"):  # one class: stored, with a warning
        ingest.run(_params(make_params, base, *extra), out_dir=tmp_path / "ds")
    n_train = len(load_dataset(tmp_path / "ds").samples["train"]["id"])
    second = _crawl(tmp_path / "crawl2", {("a", f"n{i}"): 50 + i for i in range(8)})
    with pytest.warns(UserWarning, match="single class, 'a'"):
        ingest.run(
            _params(make_params, second, f"ingest.append_to={tmp_path / 'ds'}", *extra),
            out_dir=tmp_path / "ds",
        )
    assert len(load_dataset(tmp_path / "ds").samples["train"]["id"]) == 6 > n_train


def test_ingest_append_refuses_other_image_size(tmp_path, make_params):
    base = _crawl(tmp_path / "crawl1", {("a", "x"): 1, ("a", "y"): 2, ("b", "z"): 3, ("b", "w"): 4})
    ingest.run(_params(make_params, base, "ingest.test_fraction=0.5"), out_dir=tmp_path / "ds")
    params = _params(make_params, base, f"ingest.append_to={tmp_path / 'ds'}", "data.image_size=16")
    with pytest.raises(ingest.IngestError, match="8 px with 1 channel"):
        ingest.run(params, out_dir=tmp_path / "other")


def _renamed_crawl(tmp_path, make_params):
    """A dataset of classes cat and dog, and a second crawl whose folders are Cat, Dog and dog."""
    old_files = {(c, f"o{i}"): 100 * k + i for k, c in enumerate(("cat", "dog")) for i in range(6)}
    ingest.run(_params(make_params, _crawl(tmp_path / "crawl1", old_files)), out_dir=tmp_path / "ds")
    new_files = {
        (c, f"n{i}"): 1000 + 100 * k + i for k, c in enumerate(("Cat", "Dog", "dog")) for i in range(4)
    }
    return _crawl(tmp_path / "crawl2", new_files)


def test_ingest_append_with_other_folder_names_warns_naming_the_new_classes(tmp_path, make_params):
    second = _renamed_crawl(tmp_path, make_params)
    params = _params(make_params, second, f"ingest.append_to={tmp_path / 'ds'}")
    with pytest.warns(UserWarning, match=r"adds 2 class\(es\) .* 'Cat', 'Dog' .*from 2 to 4 classes"):
        summary = ingest.run(params, out_dir=tmp_path / "ds")
    assert summary["new_classes"] == ["Cat", "Dog"]
    assert load_dataset(tmp_path / "ds").classes == ["cat", "dog", "Cat", "Dog"]
    report = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert report["new_classes"] == ["Cat", "Dog"]


def test_ingest_append_strict_classes_refuses_new_classes_and_keeps_the_dataset(tmp_path, make_params):
    second = _renamed_crawl(tmp_path, make_params)
    before = (tmp_path / "ds" / "samples.csv").read_text()
    params = _params(make_params, second, f"ingest.append_to={tmp_path / 'ds'}", "ingest.strict_classes=true")
    with pytest.raises(
        ingest.IngestError, match=r"adds 2 class\(es\) that ingest.append_to .* lacks: 'Cat', 'Dog'"
    ):
        ingest.run(params, out_dir=tmp_path / "ds")
    assert (tmp_path / "ds" / "samples.csv").read_text() == before
    assert load_dataset(tmp_path / "ds").classes == ["cat", "dog"]
