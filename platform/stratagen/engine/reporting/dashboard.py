"""Check a TensorBoard logdir the way a person sees it: served on 127.0.0.1, opened in Chromium.

``python -m stratagen.engine.reporting.dashboard LOGDIR --expect A,B --screenshot shot.png`` serves LOGDIR
with TensorBoard, checks its HTTP API (``/data/runs``, ``/data/plugin/scalars/tags``), loads the
custom-scalars page in headless Chromium (the system's, driven by Playwright; nothing is
downloaded), waits until every expected run name is on the page, and saves a screenshot.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from stratagen.registry import StratagenError

#: flags that keep headless Chromium off the network on a closed machine (DESIGN.md)
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def serve(logdir: str, timeout: float = 90.0) -> Iterator[str]:
    """Run TensorBoard on a free 127.0.0.1 port until the context ends; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
                                "--port", str(port), "--reload_interval", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                _get(f"{base}/data/runs")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise StratagenError(f"tensorboard did not start: {process.stderr.read().decode()[-500:]}")
                time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class DashboardReport:
    runs: list[str]
    scalar_tags: dict[str, list[str]]
    screenshot: str | None


def wait_for_runs(base: str, expected: list[str], timeout: float = 60.0) -> list[str]:
    """Poll ``/data/runs`` until every expected run is listed (TensorBoard loads lazily)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _get(f"{base}/data/runs")
        if all(any(r == e or r.startswith(f"{e}/") for r in runs) for e in expected) or time.monotonic() > deadline:
            return runs
        time.sleep(1)


def check_dashboard(logdir: str, expected: list[str], screenshot: str | None,
                    chromium: str | None = None) -> DashboardReport:
    """Serve ``logdir``, check the HTTP API lists ``expected`` runs, and (with Chromium) that the
    custom-scalars page shows them; saves the page as ``screenshot``."""
    with serve(logdir) as base:
        runs = wait_for_runs(base, expected)
        missing = [e for e in expected if e not in runs]
        if missing:
            raise StratagenError(f"runs missing from /data/runs: {missing}; found {runs}")
        tags = {run: sorted(t) for run, t in _get(f"{base}/data/plugin/scalars/tags").items()}
        if screenshot is not None:
            _browser_check(base, expected, screenshot, chromium or find_chromium())
        return DashboardReport(runs, tags, screenshot)


def _browser_check(base: str, expected: list[str], screenshot: str, chromium: str | None) -> None:
    if chromium is None:
        raise StratagenError("no Chromium found (install Debian's `chromium` package)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000})
        try:
            page = browser.new_page()
            page.goto(f"{base}/#custom_scalars", wait_until="networkidle")
            for name in expected:
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(2000)  # let the charts draw
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--expect", required=True, help="comma-separated run names that must appear")
    parser.add_argument("--screenshot", default=None, help="PNG path (needs Chromium)")
    args = parser.parse_args(argv)
    try:
        report = check_dashboard(args.logdir, args.expect.split(","), args.screenshot)
    except StratagenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"runs": report.runs, "screenshot": report.screenshot}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
