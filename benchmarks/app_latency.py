"""Time from the Generate click to the 3D viewer (and to the turntable video) in a real browser.

    python benchmarks/app_latency.py                         # the shipped model (hub/dd3g-tiny)
    python benchmarks/app_latency.py --random tiny           # a random model of the tiny preset (same compute)

Starts `python app.py` on 127.0.0.1 with the app's default settings (so the CPU video is its default 24 frames
at 256 px), drives Debian's headless Chromium with Playwright like a visitor: upload an example, click
Generate, wait for the Model3D canvas, then for a decodable turntable video. Repeats and reports the median.
Trained and random weights of one preset cost the same compute, so `--random` measures the speed of a model
that has not shipped yet.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not answer at {url} within {timeout:.0f} s")


def save_random_pipeline(preset: str, folder: Path) -> Path:
    from benchmarks.latency import random_pipeline

    random_pipeline(preset).save_pretrained(folder, safe_serialization=True)
    return folder


def measure(url: str, image: Path, repeats: int, profile_dir: Path) -> list:
    from playwright.sync_api import sync_playwright

    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        try:
            for seed in range(repeats):
                page = browser.new_page()
                page.goto(url, wait_until="load")
                page.set_input_files("#input-image input[type=file]", str(image))
                page.wait_for_selector("#preprocessed img", timeout=120_000)
                seed_box = page.locator("#seed input[type=number]")
                if seed_box.count():
                    seed_box.fill(str(seed))
                    seed_box.press("Enter")
                clicked = time.perf_counter()
                page.click("#generate")
                page.wait_for_selector("#viewer canvas", timeout=300_000)
                viewer = time.perf_counter() - clicked
                video = page.wait_for_selector("#turntable video", timeout=300_000)
                page.wait_for_function("v => v.readyState >= 2 && v.videoWidth > 0", arg=video, timeout=300_000)
                rows.append({"seed": seed, "click_to_viewer_s": viewer, "click_to_video_s": time.perf_counter() - clicked,
                             "timing_text": page.inner_text("#timing")})
                print(json.dumps(rows[-1]), flush=True)
                page.close()
        finally:
            browser.close()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="a pipeline folder (default: the app's default, hub/dd3g-tiny)")
    p.add_argument("--random", default=None, metavar="PRESET", help="time a random model of this PEPD preset instead")
    p.add_argument("--image", default=str(ROOT / "examples" / "test-0.png"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.random:
            checkpoint = str(save_random_pipeline(args.random, Path(tmp) / "random"))
        port = free_port()
        command = [sys.executable, str(ROOT / "app.py"), "--port", str(port)] + (["--checkpoint", checkpoint] if checkpoint else [])
        app = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for_server(url, app)
            rows = measure(url, Path(args.image), args.repeats, Path(tmp) / "profile")
        finally:
            app.terminate()
            app.wait(timeout=30)
    summary = {
        "model": f"random {args.random}" if args.random else (checkpoint or "hub/dd3g-tiny"),
        "median_click_to_viewer_s": statistics.median(r["click_to_viewer_s"] for r in rows),
        "median_click_to_video_s": statistics.median(r["click_to_video_s"] for r in rows),
        "runs": rows, "cpu_count": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
