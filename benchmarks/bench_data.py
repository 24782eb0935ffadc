"""Does the data path scale? Start-up, throughput and memory at N images, for an image folder,
tar shards and the token cache.

    nice -n 10 .venv/bin/python benchmarks/bench_data.py --n 20000 200000 --work /tmp/bench_data

Generates (once per N, reused after) a folder of N small PNGs in 10 class folders, the same
images packed as tar shards (``stratagen data pack``), and a token cache of N images with the
levels of StraIT's tokenizer at 256 px (16x16 + 32x32, 8192 codes, uint16; random tokens, since
only the format is measured). Each measurement runs in its own process, so its peak resident
memory is its own: reported as the peak (VmHWM) and the growth over the same process right after
its imports; loader workers are reported by their private memory (RssAnon), which is what grows
when a forked worker copies pages of the parent's index.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 32
BATCH = 64
BATCHES = 40  # timed batches after the first


def generate_folder(root: Path, n: int) -> float:
    """N random-texture PNGs (SIZE x SIZE) under root/<class>/; seconds taken."""
    from PIL import Image

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    for c in range(CLASSES):
        (root / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (64, SIZE + 8, SIZE + 8, 3), dtype=np.uint8)
    for i in range(n):
        y, x = divmod(i % 64, 8)
        Image.fromarray(base[i % 64, y: y + SIZE, x: x + SIZE]).save(root / f"class{i % CLASSES:02d}" / f"{i:07d}.png",
                                                                     compress_level=1)
    return time.perf_counter() - start


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """VmHWM (peak resident) and RssAnon (private resident) of a process, MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon")}


def worker_memory_mib() -> float:
    """Largest RssAnon among this process's children (the loader workers), MiB; 0 without any."""
    pid = os.getpid()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return max([memory_mib(c)["RssAnon"] for c in children], default=0.0)


def measure_loader(kind: str, path: str, workers: int) -> dict:
    """Time to first batch (dataset built from scratch), then images/s over BATCHES batches: once
    with the files cold (as read for the first time; the page cache may hold some), then the same
    batches again with them in the page cache (what the loader itself costs)."""
    import torch

    from stratagen.data import ImageFolder, StepBatches
    from stratagen.data.shards import TarShards

    torch.set_num_threads(1)
    start = time.perf_counter()
    dataset = ImageFolder(path, SIZE, augment=True) if kind == "folder" else TarShards(path, SIZE, augment=True)
    built = time.perf_counter() - start
    result = {"build_s": built}
    for run in ("cold", "warm"):
        batches = StepBatches(dataset, BATCH, seed=0, rank=0, world=1, workers=workers, device=torch.device("cpu"))
        batches.at(0)
        if run == "cold":
            result["first_batch_s"] = time.perf_counter() - start
        t0 = time.perf_counter()
        for step in range(1, BATCHES + 1):
            batches.at(step)
        result[f"images_per_s_{run}"] = BATCHES * BATCH / (time.perf_counter() - t0)
        result["worker_rss_anon_mib"] = max(result.get("worker_rss_anon_mib", 0.0), worker_memory_mib())
        del batches
    return result


def measure_tokens(path: str) -> dict:
    """Open the cache and gather BATCHES random batches as a prior's training step does."""
    from stratagen.io.tokens import TokenCache

    start = time.perf_counter()
    reader = TokenCache(path).open()
    opened = time.perf_counter() - start
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(BATCHES * 10):
        reader.gather(rng.integers(len(reader), size=BATCH), np.zeros(BATCH, dtype=np.int64))
    rate = BATCHES * 10 * BATCH / (time.perf_counter() - t0)
    return {"open_s": opened, "rows_per_s": rate}


def write_token_cache(path: str, n: int) -> float:
    """A cache of n images, one view, StraIT-256 levels; bytes per image on disk."""
    import torch

    from stratagen.io.tokens import Fingerprint, TokenCache

    cache = TokenCache(path)
    shard = 10_000
    stamp = Fingerprint(n, 1, shard, "bench", "bench")
    counts = []
    g = torch.Generator().manual_seed(0)
    for j in range(-(-n // shard)):
        m = min(shard, n - j * shard)
        cache.write_shard(j, {"top": torch.randint(8192, (m, 1, 16, 16), generator=g).to(torch.uint16),
                              "bottom": torch.randint(8192, (m, 1, 32, 32), generator=g).to(torch.uint16)},
                          torch.randint(1000, (m,), generator=g), stamp)
        counts.append(m)
    cache.write_manifest(counts, {"top": {"shape": [16, 16], "codebook_size": 8192, "dtype": "uint16"},
                                  "bottom": {"shape": [32, 32], "codebook_size": 8192, "dtype": "uint16"}}, stamp)
    return sum(f.stat().st_size for f in Path(path).iterdir()) / n


def child(args: argparse.Namespace) -> None:
    """One measurement in this process; prints JSON with its memory (MiB)."""
    import torch  # noqa: F401  (imported before the baseline, as every measurement needs it)

    import stratagen.data  # noqa: F401
    import stratagen.io.tokens  # noqa: F401

    baseline = memory_mib()["VmHWM"]
    result = measure_tokens(args.path) if args.kind == "tokens" else measure_loader(args.kind, args.path, args.workers)
    result["peak_rss_mib"] = memory_mib()["VmHWM"]
    result["growth_mib"] = result["peak_rss_mib"] - baseline
    print(json.dumps(result))


def run_child(kind: str, path: Path, workers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--path", str(path), "--workers", str(workers)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(work: Path, n: int) -> None:
    """The folder, shards and token cache of n images under ``work`` (made once, reused after)."""
    if not (work / "done").exists():
        print(f"generating {n} images ...", flush=True)
        print(f"  folder: {generate_folder(work / 'folder', n):.1f} s", flush=True)
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("stratagen")), "data", "pack", str(work / "folder"),
                        str(work / "shards"), "--shard-size", "1000"], check=True, capture_output=True)
        print(f"  pack: {time.perf_counter() - start:.1f} s", flush=True)
        (work / "done").touch()
    bytes_per_image = write_token_cache(str(work / "tokens"), n)
    (work / "bytes_per_image").write_text(str(bytes_per_image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[20_000], help="dataset sizes, measured interleaved")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best throughput and the median "
                        "start-up of the rounds are reported (the machine may be shared)")
    parser.add_argument("--work", default="/tmp/bench_data")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.kind = args.child
        return child(args)

    works = {n: Path(args.work) / f"n{n}" for n in args.n}
    for n, work in works.items():
        prepare(work, n)
    cases = [(kind, w) for kind in ("folder", "shards") for w in (0, 1, 2)] + [("tokens", 0)]
    runs: dict[tuple[str, int, int], list[dict]] = {}
    for round_ in range(args.repeats):
        for kind, workers in cases:
            for n, work in works.items():  # interleaved, so a busy moment hits every N alike
                runs.setdefault((kind, workers, n), []).append(run_child(kind, work / kind, workers))
        print(f"round {round_ + 1}/{args.repeats} done", flush=True)

    def summary(kind: str, workers: int, n: int) -> dict[str, float]:
        rs = runs[(kind, workers, n)]
        out = {k: float(np.median([r[k] for r in rs])) for k in rs[0] if not k.startswith(("images", "rows"))}
        out.update({k: max(r[k] for r in rs) for k in rs[0] if k.startswith(("images", "rows"))})
        return out

    table = {f"{kind}/{w}w/n{n}": summary(kind, w, n) for kind, w in cases for n in args.n}
    for n, work in works.items():
        table[f"tokens/0w/n{n}"]["bytes_per_image"] = float((work / "bytes_per_image").read_text())
    keys = ["build_s", "first_batch_s", "images_per_s_cold", "images_per_s_warm", "peak_rss_mib", "growth_mib",
            "worker_rss_anon_mib", "open_s", "rows_per_s", "bytes_per_image"]
    low, high = args.n[0], args.n[-1]
    print(f"\n{'case':<12} {'metric':<20} " + " ".join(f"{'N=' + str(n):>12}" for n in args.n) + f" {'ratio':>8}")
    for kind, w in cases:
        a, b = table[f"{kind}/{w}w/n{low}"], table[f"{kind}/{w}w/n{high}"]
        for key in keys:
            if key in a:
                values = " ".join(f"{table[f'{kind}/{w}w/n{n}'][key]:>12.3f}" for n in args.n)
                ratio = b[key] / a[key] if a[key] else float("nan")
                print(f"{kind + '/' + str(w) + 'w':<12} {key:<20} {values} {ratio:>8.2f}")
    out = Path(args.work) / "results.json"
    out.write_text(json.dumps(table, indent=1))
    print(f"medians of start-up and memory, best of {args.repeats} for throughput; ratio = N={high} / N={low}; "
          f"all: {out}")


if __name__ == "__main__":
    main()
