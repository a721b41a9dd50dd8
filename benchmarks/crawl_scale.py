"""A synthetic crawl of N images through the stages, N = 10^5 and 10^6 at 64 px (README "Scale").

Per N, under `--root` (default /var/tmp/labelsieve-crawl-scale; the 10^6 crawl needs about 37 GB of disk
while it is ingested, 25 GB after):

1. generate (timed, not a stage): N distinct 64 x 64 RGB images in 10 class folders, as binary PPM files.
   Each image is a class-specific pattern plus seeded noise, so every file is distinct and no two hash alike.
   PPM is uncompressed, so generation runs at disk speed; a crawl of JPEGs would add a decode per image,
   which ingest spreads over its worker threads.
2. `labelsieve ingest` of that folder: every image (`per_class_limit` 0), 20% held out as test. The
   near-duplicate check between train and test is off here (`near_duplicate_bits` -1): it compares every
   train hash with every test hash, O(N_train x N_test), and is timed on its own with `--near-duplicates`.
3. `inject-noise`: 40% symmetric noise.
4. `warmup` with 0 epochs: two fresh small_cnn networks (the timing does not depend on their weights).
5. `co-divide` with `runtime.data_path=stream`: one streamed evaluation pass of both networks over the
   training split, the min-max normalisation and the per-class GMMs.
6. `ssl-train` and `group-regularize` with 0 epochs (they pass the networks through; timed, not the point).
7. `purify` with `runtime.data_path=stream`: a streamed pass of both networks, then every score and decision.

`--purify-inputs stand-in` times purify at a size where the chain before it does not fit a sitting (at 10^6
co-divide, ssl-train and group-regularize are each a streamed pass of about an hour here): purify then
reads the warm-up's networks, which 0-epoch ssl-train and group-regularize pass through unchanged, and
seeded stand-ins of the arrays those two steps would add (`write_stand_ins`: the training dynamics and
clean probabilities of ssl-train, GRIP's class soft labels), in the shapes and dtypes the stages write.
Purify's work, one streamed pass of both networks and the maths on (N, C) arrays, does not depend on
their values.

Every step is a fresh process; its wall seconds and its peak RSS (`ru_maxrss` from `os.wait4`) are
recorded. Writes crawl_scale.json and crawl_scale.md to `--out` (default benchmarks/results). The stage
outputs stay under `--root`, so `--steps` can run some steps now and the rest later (each invocation runs
its steps for every size, so a growth ratio always compares figures of one sitting); the PPM files are
removed after ingest unless `--keep-crawl`; `--clean` removes `--root` at the end. `--cold-cache` (root
only) drops the kernel's page cache before each step: a crawl just generated sits in memory at 10^5 but
not at 10^6, so only cold reads compare the two sizes like for like.

    uv run python benchmarks/crawl_scale.py                          # 10^5 and 10^6: about an hour here
    uv run python benchmarks/crawl_scale.py --sizes 2e3 --out /tmp/x   # smoke run, a minute
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import cpu_model, git_commit, parse_sizes, status_kib  # noqa: E402
from labelsieve.atomic import atomic_dir, write_json, write_npy, write_npz, write_text  # noqa: E402

SIDE, CLASSES = 64, 10
SETTINGS = (
    f"data.image_size={SIDE}",
    "data.channels=3",
    "ingest.per_class_limit=0",
    "ingest.test_fraction=0.2",
    "ingest.near_duplicate_bits=-1",
    "inject_noise.mode=symmetric",
    "inject_noise.rate=0.4",
    "warmup.epochs=0",
    "ssl_train.epochs=0",
    "group_regularize.epochs=0",
    "runtime.data_path=stream",
    "runtime.progress=never",
    "model.eval_batch_size=1024",
)


def generate(root: Path, n: int, *, side: int = SIDE, seed: int = 0, chunk: int = 2_000) -> None:
    """N distinct seeded PPM images of `side` px in CLASSES class folders under `root`, written atomically
    (a `.done` marker last, so a half-written crawl is regenerated)."""
    if (root / ".done").is_file():
        return
    shutil.rmtree(root, ignore_errors=True)
    for k in range(CLASSES):
        (root / f"class{k}").mkdir(parents=True)
    axis = np.linspace(0.0, 1.0, side)
    patterns = []
    for k in range(CLASSES):  # a class's pattern: a plane wave at a class-specific angle and frequency
        angle, freq = np.pi * k / CLASSES, 2 + k
        wave = np.sin(2 * np.pi * freq * (np.cos(angle) * axis[:, None] + np.sin(angle) * axis[None, :]))
        image = np.stack([wave, np.roll(wave, k, 0), np.roll(wave, 2 * k, 1)], axis=-1) * 80 + 128
        patterns.append(image.astype(np.float32))
    rng = np.random.default_rng(seed)
    header = f"P6\n{side} {side}\n255\n".encode()
    for start in range(0, n, chunk):
        count = min(chunk, n - start)
        labels = (np.arange(start, start + count) % CLASSES).astype(np.int64)
        noise = rng.normal(0.0, 24.0, (count, side, side, 3)).astype(np.float32)
        pixels = np.clip(np.stack([patterns[y] for y in labels]) + noise, 0, 255).astype(np.uint8)
        for i, (y, image) in enumerate(zip(labels, pixels, strict=True)):
            (root / f"class{y}" / f"{start + i:07d}.ppm").write_bytes(header + image.tobytes())
    (root / ".done").write_text("complete\n")


def write_stand_ins(work: Path, *, seed: int = 0) -> None:
    """Purify's inputs beyond the networks, seeded, under `work`/ssl and `work`/group (see the docstring).

    ssl/ gets the warm-up's networks, ``dynamics.npz`` (the mean softmax, loss and margin of one division:
    noisy logits with the given label ahead by 4) and ``partition.npz`` (clean probabilities); group/ gets
    ``soft_labels.npy`` (K, C, C), each row a distribution. Run in a child process (`--stand-ins`), so this
    process stays small (`run_step`).
    """
    from labelsieve.maths.purification import margins  # here: the parent process never imports torch

    with np.load(work / "labels" / "labels.npz") as arrays:
        labels = arrays["train_labels"]
    meta = json.loads((work / "warmup" / "networks.json").read_text())
    k, n = meta["count"], len(labels)
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (n, CLASSES)).astype(np.float32)
    logits[np.arange(n), labels] += 4.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    given = probs[np.arange(n), labels]
    clean = rng.uniform(0.0, 1.0, (k, n)).astype(np.float32)
    soft = rng.dirichlet(np.ones(CLASSES), (k, CLASSES)).astype(np.float32)
    with atomic_dir(work / "ssl") as tmp:
        for name in ("networks.json", *(f"net{i}.pt" for i in range(1, k + 1))):
            shutil.copyfile(work / "warmup" / name, tmp / name)
        margin = margins(labels, probs).astype(np.float32)
        write_npz(tmp / "dynamics.npz", probs=probs, loss=-np.log(given), margin=margin,
                  held_out_probs=probs, count=np.array(1))  # fmt: skip
        write_npz(tmp / "partition.npz", losses=-np.log(np.tile(given, (k, 1))), normalised=clean,
                  clean_prob=clean, labeled=clean > 0.5)  # fmt: skip
    with atomic_dir(work / "group") as tmp:
        write_npy(tmp / "soft_labels.npy", soft)


def run_step(argv: list[str], log: Path) -> dict[str, float]:
    """Run one command in a fresh process; its wall and CPU seconds and peak memory (MiB).

    ``cpu_seconds`` is the child's user + system time (``ru_utime + ru_stime``): wall time well above it
    on one busy thread is time spent waiting, mostly for the disk.

    ``peak_rss_mib`` is the kernel's ``ru_maxrss``: every resident page, including the pages of the
    memory-mapped dataset files the process touched, which the kernel can drop at any time.
    ``peak_anon_mib`` is the largest RssAnon (the process's own heap and stacks) seen by polling
    /proc every 0.1 s: the memory the process really holds. The child is spawned (vfork + exec), and
    Linux carries the spawning process's peak RSS into the child's ``ru_maxrss`` at exec, so this
    process must stay small: it never imports torch, and the images are generated in a child of their own.
    """
    start = time.perf_counter()
    peak_anon = 0
    with open(log, "ab") as out:
        actions = [(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
        pid = os.posix_spawnp(argv[0], argv, os.environ | {"PYTHONUNBUFFERED": "1"}, file_actions=actions)
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                break
            peak_anon = max(peak_anon, status_kib(pid, "RssAnon"))
            time.sleep(0.1)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "peak_anon_mib": peak_anon / 1024,
    }


STEPS = ("ingest", "inject_noise", "warmup", "co_divide", "ssl_train", "group_regularize", "purify")
OUTPUTS = dict(zip(STEPS, ("dataset", "labels", "warmup", "divide", "ssl", "group", "purified"), strict=True))


def stage_commands(work: Path, crawl: Path, extra: list[str]) -> dict[str, list[str]]:
    """The labelsieve command of every step, with the benchmark's settings."""
    settings = [arg for item in (*SETTINGS, f"ingest.source={crawl}", *extra) for arg in ("--set", item)]
    d, lab = ["--dataset-dir", str(work / "dataset")], ["--labels-dir", str(work / "labels")]
    exe = [str(Path(sys.executable).with_name("labelsieve"))]
    return {
        "ingest": [*exe, "ingest", *settings, "--out-dir", str(work / "dataset")],
        "inject_noise": [*exe, "inject-noise", *settings, *d, "--out-dir", str(work / "labels")],
        "warmup": [*exe, "warmup", *settings, *d, *lab, "--out-dir", str(work / "warmup")],
        "co_divide": [
            *exe, "co-divide", *settings, *d, *lab, "--warmup-dir", str(work / "warmup"),
            "--out-dir", str(work / "divide"),
        ],
        "ssl_train": [
            *exe, "ssl-train", *settings, *d, *lab, "--warmup-dir", str(work / "warmup"),
            "--divide-dir", str(work / "divide"), "--out-dir", str(work / "ssl"),
        ],
        "group_regularize": [
            *exe, "group-regularize", *settings, *d, *lab, "--networks-dir", str(work / "ssl"),
            "--out-dir", str(work / "group"),
        ],
        "purify": [
            *exe, "purify", *settings, *d, *lab, "--ssl-dir", str(work / "ssl"),
            "--group-dir", str(work / "group"), "--out-dir", str(work / "purified"),
        ],
    }  # fmt: skip


def measure(
    n: int, args: argparse.Namespace, row: dict[str, Any], startup: float, sitting: str
) -> dict[str, Any]:
    """The chosen steps for one N, added to `row` (an earlier invocation's figures for this N, or empty).

    Each step's ``net_seconds`` is its wall time less `startup`, this invocation's median time to start
    Python and import labelsieve and torch, which every step pays once whatever N is; `sitting` names
    the invocation, so growth ratios compare figures of one sitting only."""
    work = Path(args.root) / f"n{n}"
    crawl = work / "crawl"
    work.mkdir(parents=True, exist_ok=True)
    log = work / "steps.log"
    row = {"n": n, "steps": {}, **row}
    if "ingest" in args.steps:  # in a child: this process stays small, so it cannot inflate a step's peak RSS
        row["generate"] = run_step([sys.executable, __file__, "--generate", str(crawl), str(n)], log)
    extra = [f"runtime.threads={args.threads}"]
    for name, argv in stage_commands(work, crawl, extra).items():
        if name not in args.steps:
            continue
        if name == "purify" and args.purify_inputs == "stand-in":
            run_step([sys.executable, __file__, "--stand-ins", str(work)], log)
        shutil.rmtree(work / OUTPUTS[name], ignore_errors=True)
        if args.cold_cache:
            drop_page_cache()
        figures = with_net(run_step(argv, log), startup, sitting) | {"cold_cache": args.cold_cache}
        if name == "purify":
            figures["inputs"] = args.purify_inputs
        row["steps"][name] = figures
        print(json.dumps({"n": n, "step": name, **row["steps"][name]}), flush=True)
        if name == "ingest" and not args.keep_crawl:
            shutil.rmtree(crawl)
    if args.near_duplicates:
        row["steps"]["near_duplicate_check"] = with_net(near_duplicate_check(work), startup, sitting)
    dataset = json.loads((work / "dataset" / "dataset.json").read_text())
    row["counts"] = dataset["counts"]
    row["store_bytes"] = sum(p.stat().st_size for p in (work / "dataset").glob("*.npy"))
    return row


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> None:
    """Write dirty pages out and empty the kernel's page cache, so the next step reads its input from disk."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError as error:
        raise SystemExit(f"--cold-cache needs root to write {DROP_CACHES}: {error}") from error


NEAR_DUPLICATES = """
import sys
from labelsieve.data import near_duplicates
from labelsieve.data.store import load_dataset
dataset = load_dataset(sys.argv[1])
train, test = (near_duplicates.phash(dataset.images(split)) for split in ("train", "test"))
near_duplicates.nearest(train, test)
"""


def near_duplicate_check(work: Path) -> dict[str, float]:
    """Ingest's train-vs-test perceptual-hash check on the stored splits, in a fresh process."""
    return run_step([sys.executable, "-c", NEAR_DUPLICATES, str(work / "dataset")], work / "steps.log")


def with_net(figures: dict[str, float], startup: float, sitting: str) -> dict[str, Any]:
    """A step's figures plus ``net_seconds`` (less the start-up time) and the sitting that measured them."""
    return {
        **figures,
        "net_seconds": figures["seconds"] - startup,
        "startup_seconds": startup,
        "sitting": sitting,
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a README-ready table plus growth ratios."""
    env = result["environment"]
    rows = result["rows"]
    steps = [name for name in (*STEPS, "near_duplicate_check") if any(name in row["steps"] for row in rows)]
    lines = [
        "# Scale: a synthetic crawl through the stages",
        "",
        f"{env['cpu']} ({env['cores']} cores); torch {env['torch']}; {env['threads']} thread(s); "
        f"commit {env['commit']} (the latest sitting); {SIDE} px RGB, {CLASSES} classes; "
        "one fresh process per step.",
        "",
        "Net s is the wall time less the time a process takes to start and import labelsieve and torch",
        "(measured in the same sitting); µs per image and the growth ratios use it.",
        "",
        "Peak RSS counts the touched pages of the memory-mapped store too; peak anon is the process's own",
        "memory (heap, stacks), polled every 0.1 s.",
        "",
        "CPU s is the step's user + system time (all its threads; blank where a sitting did not record it).",
        "A step marked cold cache ran after the kernel's page cache was dropped (`--cold-cache`): it read",
        "its input from disk, not from the memory the previous step left it in.",
        "Sitting is the UTC time the invocation that measured the row started.",
        "",
        "| N | step | sitting | wall s | net s | CPU s | µs per image | peak RSS MiB | peak anon MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in steps:
        for row in rows:
            if name not in row["steps"]:
                continue
            fig = row["steps"][name]
            per = fig["net_seconds"] / row["n"] * 1e6
            cpu = f"{fig['cpu_seconds']:.1f}" if "cpu_seconds" in fig else ""
            label = name + (", stand-in inputs" if fig.get("inputs") == "stand-in" else "")
            label += ", cold cache" if fig.get("cold_cache") else ""
            sitting = fig["sitting"].replace("T", " ")[:16]
            lines.append(
                f"| {row['n']:.0e} | {label} | {sitting} | {fig['seconds']:.1f} | {fig['net_seconds']:.1f} | "
                f"{cpu} | {per:.1f} | {fig['peak_rss_mib']:.0f} | {fig['peak_anon_mib']:.0f} |"
            )
    lines += ["", "Growth from the smallest to the largest N of one sitting (linear = the size ratio):", ""]
    lines += [
        "| step | sizes | size ratio | time ratio | CPU time ratio | anon memory ratio |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in steps:
        have = [row for row in rows if name in row["steps"]]
        have = [row for row in have if row["steps"][name]["sitting"] == have[-1]["steps"][name]["sitting"]]
        if len(have) < 2:
            continue
        first, last = have[0], have[-1]
        a, b = first["steps"][name], last["steps"][name]
        both = "cpu_seconds" in a and "cpu_seconds" in b
        cpu = f"{b['cpu_seconds'] / a['cpu_seconds']:.2f}x" if both else ""
        lines.append(
            f"| {name} | {first['n']:.0e} -> {last['n']:.0e} | {last['n'] / first['n']:.0f}x | "
            f"{b['net_seconds'] / a['net_seconds']:.2f}x | {cpu} | "
            f"{b['peak_anon_mib'] / a['peak_anon_mib']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=[100_000, 1_000_000])
    parser.add_argument(
        "--steps",
        type=lambda text: text.split(","),
        default=list(STEPS),
        help="comma-separated steps to run; the others' outputs must exist under --root "
        "(figures merge into --out's crawl_scale.json)",
    )
    parser.add_argument("--root", default="/var/tmp/labelsieve-crawl-scale")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep-crawl", action="store_true", help="keep the PPM files after ingest")
    parser.add_argument("--near-duplicates", action="store_true", help="also time the train-vs-test check")
    parser.add_argument("--clean", action="store_true", help="remove --root at the end")
    parser.add_argument(
        "--cold-cache",
        action="store_true",
        help="drop the page cache before each step (root only), so every size reads its input from disk",
    )
    parser.add_argument(
        "--purify-inputs",
        choices=("chain", "stand-in"),
        default="chain",
        help="chain: purify reads ssl-train's and group-regularize's outputs; stand-in: the warm-up's "
        "networks and seeded stand-ins of the rest (`write_stand_ins`), without running the steps between",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure every size; write the JSON and the table."""
    if argv is None and len(sys.argv) == 4 and sys.argv[1] == "--generate":
        generate(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--stand-ins":
        write_stand_ins(Path(sys.argv[2]))
        return
    args = parse_args(argv)
    if unknown := set(args.steps) - set(STEPS):
        raise SystemExit(f"unknown steps {sorted(unknown)}; choose from {', '.join(STEPS)}")
    out = Path(args.out)
    earlier = {}
    if (out / "crawl_scale.json").is_file():
        earlier = {row["n"]: row for row in json.loads((out / "crawl_scale.json").read_text())["rows"]}
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    startup = statistics.median(
        run_step([sys.executable, "-c", "import labelsieve.stages, torch"], root / "startup.log")["seconds"]
        for _ in range(3)
    )
    sitting = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    measured = {n: measure(n, args, earlier.get(n, {}), startup, sitting) for n in args.sizes}
    rows = [measured.get(n) or earlier[n] for n in sorted({*earlier, *measured})]
    result = {
        "environment": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "machine": platform.machine(),
            "torch": importlib.metadata.version("torch"),
            "threads": args.threads,
            "commit": git_commit(),
        },
        "settings": list(SETTINGS),
        "rows": rows,
    }
    write_json(out / "crawl_scale.json", result)
    write_text(out / "crawl_scale.md", markdown(result))
    if args.clean:
        shutil.rmtree(args.root, ignore_errors=True)
    print(markdown(result))


if __name__ == "__main__":
    main()
