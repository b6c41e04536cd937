"""A real browser (Debian's headless Chromium, driven by Playwright) uses the app like a visitor would.

Chromium comes from the system package (`apt-get install chromium`, done by .ci/run); Playwright never
downloads its own browser. A missing /usr/bin/chromium fails this test: it is not skipped.
Set DD3G_SCREENSHOT=PATH to keep the screenshot (docs/space-screenshot.png is made that way).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium waits on network services that a closed network lacks.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "heldout-0.png"


def test_browser_uploads_generates_and_shows_viewer_and_video(running_app, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (see README)"
    url, _, settings = running_app
    page_errors = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(url, wait_until="load")
            page.set_input_files("#input-image input[type=file]", str(EXAMPLE))
            page.wait_for_selector("#preprocessed img", timeout=30_000)  # the preview of what the model sees

            variations = page.locator("#num-variations input[type=number]")
            variations.fill("2")
            variations.press("Enter")
            page.click("#generate")

            canvas = page.wait_for_selector("#viewer canvas", timeout=60_000)
            video = page.wait_for_selector("#turntable video", timeout=60_000)
            page.wait_for_function(  # the turntable is loaded and decodable, not just an element
                "v => v.readyState >= 2 && v.videoWidth > 0", arg=video, timeout=30_000
            )
            video_size = page.evaluate("v => [v.videoWidth, v.videoHeight]", video)
            page.wait_for_selector("#downloads a[href*='dd3g_seed1.glb'], #downloads :text('dd3g_seed1.glb')",
                                   timeout=30_000)
            page.wait_for_timeout(1_000)  # let the splat viewer draw its first frames
            viewer_pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
            timing = page.inner_text("#timing")
            thumbnails = page.locator("#variations img").count()
            screenshot = tmp_path / "space-screenshot.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()

    assert not page_errors, page_errors
    # Two variations side by side in the video, at the configured size.
    assert video_size == [2 * settings.video_size, settings.video_size]
    assert thumbnails == 2
    assert "Generation:" in timing and "ms" in timing
    # The viewer drew Gaussians: its canvas is not one flat colour.
    assert viewer_pixels.std() > 2.0, "the 3D viewer's canvas is blank"
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("DD3G_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
