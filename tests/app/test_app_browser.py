"""A real browser (Debian's headless Chromium, driven by Playwright) uses the app like a visitor would.

Chromium comes from the system package (`apt-get install chromium`, done by .ci/run); Playwright never
downloads its own browser. A missing /usr/bin/chromium fails this test: it is not skipped.
Set DD3G_SCREENSHOT=PATH to keep the screenshot (docs/space-screenshot.png is made that way).
"""

from __future__ import annotations

import io
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import app
from helpers import REPO

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium waits on network services that a closed network lacks.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLE = REPO / "examples" / "heldout-0.png"
# The viewer's canvas is the element a visitor would touch at its centre: no overlay covers it.
VIEWER_UNCOVERED = """() => {
    const canvas = document.querySelector('#viewer canvas');
    if (!canvas) return false;
    let box = canvas.getBoundingClientRect();
    if (box.top < 0 || box.bottom > innerHeight) {  // a visitor would scroll to it
        canvas.scrollIntoView({block: 'center'});
        box = canvas.getBoundingClientRect();
    }
    return box.width > 0 && document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2) === canvas;
}"""
VISIBLE_PROGRESS_BARS = """() => [...document.querySelectorAll('.progress-text, .progress-level')]
    .filter(e => e.getBoundingClientRect().height > 0 && getComputedStyle(e).visibility !== 'hidden')
    .map(e => e.closest('[id]') ? e.closest('[id]').id : '?')"""

# The size an <img> is drawn at, in CSS pixels (object-fit decides how its box is filled).
SHOWN_IMAGE_SIZE = """img => {
    const box = img.getBoundingClientRect(), fit = getComputedStyle(img).objectFit;
    let scale = Math.min(box.width / img.naturalWidth, box.height / img.naturalHeight);
    if (fit === 'none' || fit === 'scale-down') scale = Math.min(1, scale);
    return [img.naturalWidth * scale, img.naturalHeight * scale];
}"""


def _pixels(element) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(int)


def test_browser_shows_the_object_before_the_turntable_then_everything(running_app, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (see README)"
    url, _, settings = running_app
    # Hold the turntable until the test has looked at the page, so "before the video" is not a race.
    release = threading.Event()
    render_turntable = app.turntable_frames

    def held_turntable(*args, **kwargs):
        release.wait(timeout=300)
        return render_turntable(*args, **kwargs)

    monkeypatch.setattr(app, "turntable_frames", held_turntable)
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
            preview = page.wait_for_selector("#preprocessed img", timeout=30_000)  # what the model sees
            page.wait_for_timeout(500)
            preview_size = page.evaluate(SHOWN_IMAGE_SIZE, preview)
            panel_box = page.locator("#preprocessed").bounding_box()

            variations = page.locator("#num-variations input[type=number]")
            variations.fill("2")
            variations.press("Enter")
            page.click("#generate")

            # While the turntable is still being made: the object is in the viewer, uncovered and drawn.
            page.wait_for_function(VIEWER_UNCOVERED, timeout=180_000)  # generous: a loaded CI machine, earlier tests' jobs
            canvas = page.wait_for_selector("#viewer canvas")
            deadline = time.time() + 20
            while _pixels(canvas).std() <= 2.0 and time.time() < deadline:
                page.wait_for_timeout(250)
            early_pixels = _pixels(canvas)
            early_video = page.locator("#turntable video").count()
            progress_bars = page.evaluate(VISIBLE_PROGRESS_BARS)
            early_screenshot = tmp_path / "while-rendering.png"
            page.screenshot(path=str(early_screenshot), full_page=True)
            release.set()

            video = page.wait_for_selector("#turntable video", timeout=120_000)
            page.wait_for_function(  # the turntable is loaded and decodable, not just an element
                "v => v.readyState >= 2 && v.videoWidth > 0", arg=video, timeout=30_000
            )
            video_size = page.evaluate("v => [v.videoWidth, v.videoHeight]", video)
            page.wait_for_selector("#downloads a[href*='dd3g_seed1.glb'], #downloads :text('dd3g_seed1.glb')",
                                   timeout=30_000)
            page.wait_for_timeout(1_000)  # let the splat viewer draw its first frames
            viewer_pixels = _pixels(canvas)
            timing = page.inner_text("#timing")
            thumbnails = [t.bounding_box() for t in page.locator("#variations img").all()]
            gallery_box = page.locator("#variations").bounding_box()
            screenshot = tmp_path / "space-screenshot.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            release.set()
            browser.close()

    assert not page_errors, page_errors
    # Before the turntable existed, the viewer already showed the object, and one progress bar was shown.
    assert early_video == 0
    assert early_pixels.std() > 2.0, "the 3D viewer's canvas was blank while the turntable was being made"
    assert progress_bars and set(progress_bars) == {"turntable"}, progress_bars
    # The viewer's background is the page's white, not black.
    corners = np.stack([viewer_pixels[2, 2], viewer_pixels[2, -3], viewer_pixels[-3, 2], viewer_pixels[-3, -3]])
    assert corners.min() >= 245, corners
    # Two variations side by side in the video, at the configured size, and two thumbnail-sized thumbnails.
    assert video_size == [2 * settings.video_size, settings.video_size]
    assert len(thumbnails) == 2
    assert all(t["width"] <= gallery_box["width"] / settings.max_variations for t in thumbnails), (thumbnails, gallery_box)
    assert all(t["y"] + t["height"] <= gallery_box["y"] + gallery_box["height"] for t in thumbnails)  # not cut off
    # The preview fills its panel instead of sitting small in it.
    assert max(preview_size[0] / panel_box["width"], preview_size[1] / panel_box["height"]) >= 0.7, (preview_size, panel_box)
    assert "Generation:" in timing and "ms" in timing and "Preprocessing 0 ms" not in timing
    assert viewer_pixels.std() > 2.0, "the 3D viewer's canvas is blank"
    assert screenshot.stat().st_size > 10_000
    keep = os.environ.get("DD3G_SCREENSHOT")
    if keep:
        shutil.copyfile(screenshot, keep)
        shutil.copyfile(early_screenshot, Path(keep).with_name(Path(keep).stem + "-while-rendering.png"))
