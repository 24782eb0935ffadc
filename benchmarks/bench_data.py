"""Does the data path scale? Start-up, throughput and memory at N images, for an image folder,
tar shards and the token cache.

    nice -n 10 .venv/bin/python benchmarks/bench_data.py --n 20000 --work /tmp/bench_data
    nice -n 10 .venv/bin/python benchmarks/bench_data.py --n 200000 --work /tmp/bench_data

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


def run_child(kind: str, path: Path, workers: int = 0) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--path", str(path), "--workers", str(workers)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--work", default="/tmp/bench_data")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.kind = args.child
        return child(args)

    work = Path(args.work) / f"n{args.n}"
    folder, shards, tokens = work / "folder", work / "shards", work / "tokens"
    if not (work / "done").exists():
        print(f"generating {args.n} images ...", flush=True)
        print(f"  folder: {generate_folder(folder, args.n):.1f} s", flush=True)
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).with_name("stratagen")), "data", "pack", str(folder), str(shards),
                        "--shard-size", "1000"], check=True, capture_output=True)
        print(f"  pack: {time.perf_counter() - start:.1f} s", flush=True)
        (work / "done").touch()
    start = time.perf_counter()
    listed = sum(len(files) for _, _, files in os.walk(folder))
    print(f"N = {args.n}: os.walk lists {listed} files in {time.perf_counter() - start:.2f} s")
    rows = {}
    for kind, path in (("folder", folder), ("shards", shards)):
        for workers in (0, 1, 2):
            r = run_child(kind, path, workers)
            rows[f"{kind}/{workers}w"] = r
            print(f"  {kind:<7} workers={workers}: build {r['build_s']:.2f} s, first batch {r['first_batch_s']:.2f} s, "
                  f"{r['images_per_s_cold']:.0f} images/s cold, {r['images_per_s_warm']:.0f} warm, peak RSS {r['peak_rss_mib']:.0f} MiB "
                  f"(+{r['growth_mib']:.0f} over imports), worker private {r['worker_rss_anon_mib']:.0f} MiB",
                  flush=True)
    per_image = write_token_cache(str(tokens), args.n)
    r = run_child("tokens", tokens)
    rows["tokens"] = {**r, "bytes_per_image": per_image}
    print(f"  token cache (16x16 + 32x32, uint16, 1 view): {per_image:.1f} bytes/image, open {r['open_s']:.3f} s, "
          f"{r['rows_per_s']:.0f} rows/s gathered, peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"(+{r['growth_mib']:.0f} over imports)", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"results: {work / 'results.json'}")


if __name__ == "__main__":
    main()
