import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelsieve.config import IngestConfig
from labelsieve.data import idx, images, sources
from labelsieve.data.store import load_dataset
from labelsieve.predict import list_inputs
from labelsieve.stages import ingest
from tests.conftest import encode, random_png


def _folder_params(make_params, root, *extra):
    return make_params(
        f"ingest.source={root}",
        "data.image_size=8",
        "ingest.val_fraction=0.2",
        "ingest.test_fraction=0.25",
        *extra,
    )


def _report(out: Path) -> dict:
    return json.loads((out / "ingest_report.json").read_text())


def test_ingest_folder_classes_splits_and_table(tmp_path, make_params, image_folder):
    root = image_folder({"cat": 8, "dog": 8, "eel": 8})
    summary = ingest.run(_folder_params(make_params, root), out_dir=tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.classes == ["cat", "dog", "eel"]
    assert summary["train"] + summary["val"] + summary["test"] == 24
    # Stratified: per class 8 -> 2 test (25%), then 6 -> round(1.2) = 1 val, 5 train.
    for split, per_class in (("train", 5), ("val", 1), ("test", 2)):
        assert np.bincount(ds.labels(split), minlength=3).tolist() == [per_class] * 3
        assert ds.images(split).shape == (3 * per_class, 1, 8, 8)
    # Each stored row holds exactly the pixels of the file its table row names.
    train = ds.samples["train"]
    for row in range(len(train["index"])):
        expected = np.asarray(Image.open(train["source"][row]))
        np.testing.assert_array_equal(ds.images("train")[row, 0], expected)
        assert train["source"][row].split(os.sep)[-2] == ds.classes[train["label"][row]]
    assert _report(tmp_path / "ds")["skipped_total"] == 0


def test_ingest_same_seed_same_dataset_other_seed_other_split(tmp_path, make_params, image_folder):
    root = image_folder({"a": 10, "b": 10})
    hashes = []
    for name, seed in (("one", 0), ("two", 0), ("three", 1)):
        ingest.run(_folder_params(make_params, root, f"runtime.seed={seed}"), out_dir=tmp_path / name)
        hashes.append(load_dataset(tmp_path / name).meta["content_hash"])
    assert hashes[0] == hashes[1] != hashes[2]


def test_ingest_bad_input_corpus_reports_every_skip(tmp_path, make_params, image_folder):
    root = image_folder({"good": 4, "other": 4})
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(random_png(999))
    good = root / "good"
    (good / "empty.png").write_bytes(b"")
    (good / "notes.txt").write_text("not an image")
    full = random_png(7, size=32)
    (good / "truncated.png").write_bytes(full[: len(full) // 2])
    corrupt = bytearray(random_png(8, size=32))
    start = corrupt.index(b"IDAT") + 8
    corrupt[start : start + 32] = bytes(32)
    (good / "corrupt.png").write_bytes(bytes(corrupt))
    (good / "bomb.png").write_bytes(encode(Image.new("L", (300, 300), 0)))  # 90,000 px > limit
    (good / "link.png").symlink_to(outside / "secret.png")
    (good / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "stray.png").write_bytes(random_png(12))
    (good / "dup_same.png").write_bytes((good / "000.png").read_bytes())
    (root / "other" / "dup_conflict.png").write_bytes((good / "001.png").read_bytes())
    # Accepted despite unusual encodings:
    (good / "cmyk.jpg").write_bytes(encode(Image.new("CMYK", (8, 8), (10, 200, 30, 0)), "JPEG"))
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 90, 90, 90] + [0] * 762)
    palette.info["transparency"] = 0
    (good / "palette_alpha.png").write_bytes(encode(palette))
    (good / "sixteen.png").write_bytes(encode(Image.fromarray(np.full((8, 8), 4000, dtype=np.uint16))))

    out = tmp_path / "ds"
    summary = ingest.run(_folder_params(make_params, root, "ingest.max_image_pixels=50000"), out_dir=out)
    report = _report(out)
    assert report["skipped_counts"] == {
        images.EMPTY_FILE: 1,
        images.NOT_AN_IMAGE: 1,
        images.TRUNCATED: 1,
        images.CORRUPT: 1,
        images.DECOMPRESSION_BOMB: 1,
        sources.PATH_ESCAPES_ROOT: 2,  # the file link and the folder link
        sources.NO_CLASS_FOLDER: 1,
        ingest.DUPLICATE: 2,
    }
    assert report["skipped_total"] == 10 == len(report["skipped"])
    by_source = {Path(item["source"]).name: item for item in report["skipped"]}
    assert by_source["bomb.png"]["reason"] == images.DECOMPRESSION_BOMB
    assert by_source["link.png"]["reason"] == sources.PATH_ESCAPES_ROOT
    assert by_source["dup_conflict.png"]["reason"] == ingest.DUPLICATE
    assert report["label_conflicts"] == [
        {
            "kept": str(good / "001.png"),
            "kept_label": "good",
            "dropped": str(root / "other" / "dup_conflict.png"),
            "dropped_label": "other",
        }
    ]
    assert summary["train"] + summary["val"] + summary["test"] == 8 + 3  # cmyk, palette, 16-bit kept
    assert report["candidates"] == 8 + 3 + 10


def test_folder_listing_follows_links_only_inside_the_root(tmp_path, image_folder):
    """A linked class folder or file is judged by where it leads: outside the root it is rejected."""
    root = image_folder({"good": 2})
    outside = image_folder({"elsewhere": 2}, name="outside") / "elsewhere"
    (root / "linked_class").symlink_to(outside, target_is_directory=True)
    (root / "good" / "inner_link.png").symlink_to(root / "good" / "000.png")
    (root / "good" / "outer_link.png").symlink_to(outside / "000.png")

    listing = sources.open_source(IngestConfig(source=str(root)))
    rejected = {
        Path(source).relative_to(root).as_posix(): listing.rejected.get(i)
        for i, source in enumerate(listing.sources.tolist())
    }
    assert listing.classes == ["good", "linked_class"]
    assert rejected == {
        "good/000.png": None,
        "good/001.png": None,
        "good/inner_link.png": None,
        "good/outer_link.png": (
            sources.PATH_ESCAPES_ROOT,
            f"links outside the root to {outside / '000.png'}",
        ),
        "linked_class/000.png": (
            sources.PATH_ESCAPES_ROOT,
            f"links outside the root to {outside / '000.png'}",
        ),
        "linked_class/001.png": (
            sources.PATH_ESCAPES_ROOT,
            f"links outside the root to {outside / '001.png'}",
        ),
    }


def test_ingest_manifest_csv_with_test_split_escapes_and_leakage(tmp_path, make_params):
    root = tmp_path / "crawl"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(12):
        (root / "img" / f"{i}.png").write_bytes(random_png(i))
        rows.append((f"img/{i}.png", ["ant", "bee"][i % 2], "test" if i >= 8 else "train"))
    (root / "img" / "leak.png").write_bytes(random_png(9))  # same pixels as test image 9
    (tmp_path / "outside.png").write_bytes(random_png(50))
    rows += [
        ("img/leak.png", "bee", "train"),
        ("../outside.png", "ant", "train"),
        (str(tmp_path / "outside.png"), "ant", "train"),
        ("img/absent.png", "ant", "train"),
        ("img/0.png", "wasp", "train"),
        ("img/1.png", "", "train"),
        ("img/2.png", "ant", "holdout"),
    ]
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    out = tmp_path / "ds"
    params = make_params(
        f"ingest.source={manifest}", "data.image_size=8", "ingest.val_fraction=0", "ingest.classes=[ant, bee]"
    )
    summary = ingest.run(params, out_dir=out)
    report = _report(out)
    assert report["skipped_counts"] == {
        ingest.TEST_LEAK: 1,
        sources.PATH_ESCAPES_ROOT: 2,
        sources.MISSING_FILE: 1,
        ingest.UNKNOWN_LABEL: 1,
        sources.BAD_MANIFEST_ROW: 2,
    }
    assert (summary["train"], summary["test"]) == (8, 4)  # the test split came from the manifest
    ds = load_dataset(out)
    assert sorted(ds.samples["test"]["source"]) == ["img/10.png", "img/11.png", "img/8.png", "img/9.png"]


def test_ingest_manifest_jsonl_reports_malformed_lines(tmp_path, make_params):
    root = tmp_path / "crawl"
    root.mkdir()
    lines = []
    for i in range(6):
        (root / f"{i}.png").write_bytes(random_png(i))
        lines.append(json.dumps({"path": f"{i}.png", "label": i % 2}))
    lines += ["{not json", "[1, 2]", json.dumps({"label": 1})]
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ds"
    summary = ingest.run(
        make_params(
            f"ingest.source={root / 'm.jsonl'}",
            "data.image_size=8",
            "ingest.val_fraction=0",
            "ingest.test_fraction=0.34",
        ),
        out_dir=out,
    )
    assert _report(out)["skipped_counts"] == {sources.BAD_MANIFEST_ROW: 3}
    assert load_dataset(out).classes == ["0", "1"]  # numeric labels become class names
    assert summary["train"] + summary["test"] == 6


def test_ingest_strict_classes_makes_an_empty_class_a_clear_error_and_leaves_nothing(
    tmp_path, make_params, image_folder
):
    root = image_folder({"full": 3, "hollow": 0})
    (root / "hollow" / "broken.png").write_bytes(b"")
    out = tmp_path / "ds"
    with pytest.raises(ingest.IngestError, match=r"class\(es\) 'hollow' \(0 usable\) of source .*strict"):
        ingest.run(_folder_params(make_params, root, "ingest.strict_classes=true"), out_dir=out)
    assert not out.exists()
    failed = json.loads((tmp_path / "ds.failed_ingest_report.json").read_text())
    assert failed["skipped_counts"] == {images.EMPTY_FILE: 1}
    assert failed["dropped_classes"] == [
        {"class": "hollow", "usable": 0, "skipped_counts": {images.EMPTY_FILE: 1}}
    ]


def test_ingest_empty_keyword_folder_is_dropped_with_a_warning_and_the_rest_kept(
    tmp_path, make_params, image_folder
):
    root = image_folder({"cat": 6, "dog": 6, "hollow": 0, "junk": 0})
    (root / "junk" / "broken.png").write_bytes(b"")
    out = tmp_path / "ds"
    with pytest.warns(UserWarning, match=r"'hollow' \(0 usable\), 'junk' \(0 usable\)"):
        summary = ingest.run(_folder_params(make_params, root), out_dir=out)
    assert load_dataset(out).classes == ["cat", "dog"]
    assert summary["train"] + summary["val"] + summary["test"] == 12
    assert summary["dropped_classes"] == ["hollow", "junk"]
    assert _report(out)["dropped_classes"] == [
        {"class": "hollow", "usable": 0, "skipped_counts": {}},
        {"class": "junk", "usable": 0, "skipped_counts": {images.EMPTY_FILE: 1}},
    ]


def test_ingest_mistyped_manifest_labels_are_dropped_and_reported(tmp_path, make_params):
    root = tmp_path / "crawl"
    root.mkdir()
    rows = []
    for i in range(12):
        (root / f"{i}.png").write_bytes(random_png(i))
        rows.append((f"{i}.png", ["ant", "bee"][i % 2], "test" if i >= 8 else "train"))
    (root / "typo1.png").write_bytes(random_png(100))
    (root / "typo2.png").write_bytes(random_png(101))
    rows += [("typo1.png", "bea", "train"), ("typo2.png", "aant", "test")]  # "aant" has no train sample
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    out = tmp_path / "ds"
    params = make_params(f"ingest.source={manifest}", "data.image_size=8", "ingest.val_fraction=0")
    with pytest.warns(UserWarning, match=r"'aant' \(0 usable\), 'bea' \(1 usable\)"):
        summary = ingest.run(params, out_dir=out)
    ds = load_dataset(out)
    assert ds.classes == ["ant", "bee"]
    assert (summary["train"], summary["test"]) == (8, 4)
    report = _report(out)
    assert report["skipped_counts"] == {ingest.SMALL_CLASS: 2}
    assert sorted(item["source"] for item in report["skipped"]) == ["typo1.png", "typo2.png"]
    assert [d["class"] for d in report["dropped_classes"]] == ["aant", "bea"]
    with pytest.raises(ingest.IngestError, match=r"'aant' \(0 usable\), 'bea' \(1 usable\)"):
        ingest.run(
            make_params(f"ingest.source={manifest}", "data.image_size=8", "ingest.strict_classes=true"),
            out_dir=tmp_path / "strict",
        )
    assert not (tmp_path / "strict").exists()


def test_ingest_and_predict_read_a_manifest_saved_with_a_utf8_bom(tmp_path, make_params):
    root = tmp_path / "crawl"
    root.mkdir()
    lines = ["path,label"]
    for i in range(6):
        (root / f"{i}.png").write_bytes(random_png(i))
        lines.append(f"{i}.png,{'ab'[i % 2]}")
    manifest = root / "excel.csv"
    manifest.write_bytes("\r\n".join(lines).encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    params = make_params(f"ingest.source={manifest}", "data.image_size=8", "ingest.val_fraction=0")
    summary = ingest.run(params, out_dir=tmp_path / "ds")
    assert summary["train"] + summary["test"] == 6 and summary["skipped"] == 0
    assert [entry.name for entry in list_inputs([manifest])] == [f"{i}.png" for i in range(6)]


def test_ingest_all_bad_is_a_clear_error_naming_the_source(tmp_path, make_params):
    root = tmp_path / "junk"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.txt").write_text("nope")
    with pytest.raises(ingest.IngestError, match=f"source {root} leaves no usable training image"):
        ingest.run(_folder_params(make_params, root), out_dir=tmp_path / "ds")


def test_ingest_of_a_single_class_warns_that_training_needs_two(tmp_path, make_params, image_folder):
    root = image_folder({"cat": 12})
    with pytest.warns(UserWarning, match="the dataset has a single class, 'cat': .* at least two; append"):
        summary = ingest.run(_folder_params(make_params, root), out_dir=tmp_path / "ds")
    assert summary["train"] > 0  # stored: a later crawl may add the other classes


def test_ingest_failure_keeps_the_previous_dataset(tmp_path, make_params, image_folder):
    out = tmp_path / "ds"
    ingest.run(_folder_params(make_params, image_folder({"a": 4, "b": 4})), out_dir=out)
    before = (out / "samples.csv").read_text()
    with pytest.raises(sources.SourceError, match="does not exist"):
        ingest.run(_folder_params(make_params, tmp_path / "missing"), out_dir=out)
    assert (out / "samples.csv").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp left


def test_ingest_digits_stratified_test_and_val(tmp_path, make_params):
    summary = ingest.run(make_params(presets=("digits",)), out_dir=tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert summary["train"] + summary["val"] + summary["test"] == 1797
    assert summary["test"] == pytest.approx(0.2 * 1797, abs=10)
    assert ds.images("train").shape[1:] == (1, 8, 8)
    assert ds.images("train").max() == 255  # 0..16 stretched to 0..255


def test_ingest_fashion_mnist_per_class_limit_takes_first_in_file_order(tmp_path, make_params):
    directory = Path("/usr/share/datasets/fashion-mnist")
    if not directory.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make bootstrap installs it)")
    out = tmp_path / "ds"
    summary = ingest.run(make_params("ingest.per_class_limit=20", "ingest.download=false"), out_dir=out)
    assert (summary["train"] + summary["val"], summary["test"]) == (200, 10_000)
    ds = load_dataset(out)
    arrays = idx.load_fashion_mnist(directory, download=False, url="", cache_dir=tmp_path)
    expected_rows = np.concatenate([np.flatnonzero(arrays["train_labels"] == c)[:20] for c in range(10)])
    stored_rows = sorted(
        int(s.split(":")[-1]) for split in ("train", "val") for s in ds.samples[split]["source"]
    )
    assert stored_rows == sorted(expected_rows.tolist())
    row = ds.samples["val"]["source"][0]
    np.testing.assert_array_equal(ds.images("val")[0, 0], arrays["train_images"][int(row.split(":")[-1])])
