"""Time from the Generate click to what a visitor sees: the object in the 3D viewer, then the turntable video.

    python benchmarks/app_latency.py                         # the shipped model (hub/dd3g-tiny)
    python benchmarks/app_latency.py --random tiny           # a random model of the tiny preset (same compute)
    python benchmarks/app_latency.py --screenshots /tmp/shots # also keep the page 2 s after the click and at the end
    python benchmarks/app_latency.py --app OLD/app.py        # another version of the app (before/after figures)

Starts `python app.py` on 127.0.0.1 with the app's default settings (so the CPU video is its default frames
and size), drives Debian's headless Chromium with Playwright like a visitor: upload an example, click
Generate, then time
- viewer_uncovered: the viewer's canvas is the topmost element at its own centre (`elementFromPoint`), i.e.
  no progress overlay covers it; timed in the page by requestAnimationFrame;
- viewer_drawn: additionally, a screenshot of the canvas is not one flat colour (the splats are drawn);
- video: the turntable <video> can play (readyState >= 2).
Repeats (a fresh page and seed each time) and reports the medians. Trained and random weights of one preset
cost the same compute, so `--random` measures the speed of a model that has not shipped yet.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

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
    from dd3g.testing import random_pipeline

    random_pipeline(preset).save_pretrained(folder, safe_serialization=True)
    return folder


# Started with the click: records (page clock) when the viewer's canvas is first the element at its centre.
WATCH_AND_CLICK = """() => {
    const state = {uncovered_ms: null, clicked_ms: performance.now()};
    window.__dd3gLatency = state;
    const check = () => {
        const canvas = document.querySelector('#viewer canvas');
        if (canvas) {
            let box = canvas.getBoundingClientRect();
            if (box.top < 0 || box.bottom > innerHeight) {  // a visitor would scroll to it
                canvas.scrollIntoView({block: 'center'});
                box = canvas.getBoundingClientRect();
            }
            if (box.width > 0 && box.height > 0
                    && document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2) === canvas) {
                state.uncovered_ms = performance.now();
                return;
            }
        }
        requestAnimationFrame(check);
    };
    document.querySelector('#generate').click();
    requestAnimationFrame(check);
}"""
VIDEO_READY = """() => { const v = document.querySelector('#turntable video'); return !!v && v.readyState >= 2 && v.videoWidth > 0; }"""


def canvas_is_drawn(page) -> bool:
    """The viewer's canvas shows something other than one flat colour (a screenshot, as a person sees it)."""
    from PIL import Image
    import io

    canvas = page.query_selector("#viewer canvas")
    if canvas is None:
        return False
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(float)
    return float(pixels.std()) > 2.0


def measure(url: str, image: Path, repeats: int, profile_dir: Path, screenshots: Path | None = None,
            timeout_s: float = 300.0) -> list:
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
                page.wait_for_timeout(500)  # let the preview's own event settle before the click
                clicked = time.perf_counter()
                page.evaluate(WATCH_AND_CLICK)
                drawn_s = video_s = None
                shot_at_2s = screenshots is None or seed > 0
                while video_s is None or drawn_s is None:
                    elapsed = time.perf_counter() - clicked
                    if elapsed > timeout_s:
                        raise SystemExit(f"nothing to see {timeout_s:.0f} s after the click")
                    if not shot_at_2s and elapsed >= 2.0:
                        page.screenshot(path=str(screenshots / "after-2s.png"), full_page=True)
                        shot_at_2s = True
                    uncovered = page.evaluate("() => window.__dd3gLatency.uncovered_ms !== null")
                    if drawn_s is None and uncovered and canvas_is_drawn(page):
                        drawn_s = time.perf_counter() - clicked
                    if video_s is None and page.evaluate(VIDEO_READY):
                        video_s = time.perf_counter() - clicked
                    time.sleep(0.05)
                state = page.evaluate("() => window.__dd3gLatency")
                if screenshots is not None and seed == 0:
                    page.wait_for_timeout(1_000)
                    page.screenshot(path=str(screenshots / "at-end.png"), full_page=True)
                rows.append({"seed": seed, "click_to_viewer_uncovered_s": (state["uncovered_ms"] - state["clicked_ms"]) / 1000,
                             "click_to_viewer_drawn_s": drawn_s, "click_to_video_s": video_s,
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
    p.add_argument("--app", default=str(ROOT / "app.py"), help="the app to serve (another version for comparisons)")
    p.add_argument("--screenshots", default=None, help="folder for the page 2 s after the first click and at its end")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.random:
            checkpoint = str(save_random_pipeline(args.random, Path(tmp) / "random"))
        port = free_port()
        command = [sys.executable, str(args.app), "--port", str(port)] + (["--checkpoint", checkpoint] if checkpoint else [])
        app = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_for_server(url, app)
            screenshots = Path(args.screenshots) if args.screenshots else None
            if screenshots:
                screenshots.mkdir(parents=True, exist_ok=True)
            rows = measure(url, Path(args.image), args.repeats, Path(tmp) / "profile", screenshots)
        finally:
            app.terminate()
            app.wait(timeout=30)
    summary = {
        "model": f"random {args.random}" if args.random else (checkpoint or "hub/dd3g-tiny"),
        "app": str(args.app),
        "median_click_to_viewer_uncovered_s": statistics.median(r["click_to_viewer_uncovered_s"] for r in rows),
        "median_click_to_viewer_drawn_s": statistics.median(r["click_to_viewer_drawn_s"] for r in rows),
        "median_click_to_video_s": statistics.median(r["click_to_video_s"] for r in rows),
        "runs": rows, "cpu_count": os.cpu_count(),
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
