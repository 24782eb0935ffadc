"""Copy what a comparison's committed results are from its compare directory, with its stage times.

    .venv/bin/python benchmarks/collect_results.py configs/compare/strait_vs_maskgit_medium.yaml \
        benchmarks/results/strait_vs_maskgit_medium --log compare.log

Copies results.md/.csv, results_per_seed.csv, claims.csv, tokenizers.md and figures/ (not the
caches or TensorBoard files) from the config's ``dir`` to DEST, and, given the compare's log, writes
DEST/stages.txt: every run the comparison trains (``<variant> seed <s>: training <dir>``) and every
finished stage's line (``... (done in N s)``), in order, then those of every run it trained in a
process of its own (``train_jobs``: its log under ``jobs/``), with the total of the stage times
(with ``train_jobs`` the runs trained side by side, so the total exceeds the wall time).
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

from stratagen.config.compare import load_compare_config

FILES = ("results.md", "results.csv", "results_per_seed.csv", "claims.csv", "tokenizers.md")
DONE = re.compile(r"\(done in (\d+) s\)")


def stage_times(log: str, job_logs: dict[str, str]) -> str:
    """The log's finished stages and trained runs, one a line, then each job log's finished stages
    under its name, then the sum of the stage times."""
    def finished(text: str) -> list[str]:
        return [line.strip() for line in text.replace("\r", "\n").splitlines()
                if DONE.search(line) or ": training " in line]

    lines = finished(log)
    for name, text in sorted(job_logs.items()):
        lines += [f"== {name} (trained in a process of its own)"] + finished(text)
    total = sum(int(m.group(1)) for line in lines for m in [DONE.search(line)] if m)
    return "\n".join(lines + [f"sum of the stage times: {total} s ({total / 60:.1f} min)"]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the compare config")
    parser.add_argument("dest", help="where the results go")
    parser.add_argument("--log", help="the compare's output, for stages.txt")
    args = parser.parse_args()
    source, dest = Path(load_compare_config(args.config).dir), Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (source / name).exists():
            shutil.copy(source / name, dest / name)
    if (source / "figures").is_dir():
        shutil.rmtree(dest / "figures", ignore_errors=True)  # no figure of an earlier run left beside them
        shutil.copytree(source / "figures", dest / "figures")
    if args.log:
        job_logs = {log.stem: log.read_text(errors="replace") for log in (source / "jobs").glob("*.log")}
        (dest / "stages.txt").write_text(stage_times(Path(args.log).read_text(errors="replace"), job_logs))


if __name__ == "__main__":
    main()
