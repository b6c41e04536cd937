"""Peak memory of one large image through `dd3g.preprocess.preprocess`, each case in a fresh process.

    python benchmarks/preprocess_memory.py                      # this checkout's dd3g
    python benchmarks/preprocess_memory.py --code /tmp/before   # another copy of the code, e.g. an older commit:
        mkdir /tmp/before && git archive <commit> dd3g hub/efficientnet-lite0 | tar -x -C /tmp/before

Cases (issue 20): a 6300 x 6300 16-bit grayscale PNG and an 8-bit RGB PNG of the same size (a dark disc on a
white background, so both are opaque and go through background removal, as an upload would), plus a 6300 x
6300 JPEG. Each runs in its own subprocess: the process first warms up (imports, the rembg session, one small
image, twice), then preprocesses the big file once. Reported per case:
  - peak RSS: the process's resident high-water mark (ru_maxrss) after the call, and its growth over the
    warmed-up process (what one request adds);
  - tracemalloc peak: Python and numpy allocations during the call (Pillow's and torch's C buffers are not
    traced; the RSS figure covers them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from dd3g.testing import make_images

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the measured subprocess; argv: code folder, image path.
MEASURE = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from dd3g.preprocess import preprocess

def rss_peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

warm = np.full((64, 64, 3), 255, np.uint8)
warm[16:48, 16:48] = 40
for _ in range(2):  # imports, the rembg session and its arena (onnxruntime grows it on the 2nd run) are not the request's
    preprocess(warm)
before = rss_peak_mb()
tracemalloc.start()
start = time.perf_counter()
out = preprocess(sys.argv[2])
seconds = time.perf_counter() - start
_, traced_peak = tracemalloc.get_traced_memory()
after = rss_peak_mb()
print(json.dumps(dict(rss_peak_mb=after, rss_growth_mb=after - before, traced_peak_mb=traced_peak / 2**20,
                      seconds=seconds, background_removed=out.background_removed, box=out.foreground_box)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="folder holding the dd3g package to measure")
    parser.add_argument("--side", type=int, default=6300, help="image side in pixels (default 6300, as in issue 20)")
    parser.add_argument("--images", type=Path, default=Path(tempfile.gettempdir()) / "dd3g-preprocess-memory",
                        help="where the test images are written (and reused)")
    args = parser.parse_args()
    args.images.mkdir(parents=True, exist_ok=True)
    print(f"code: {args.code.resolve()}")
    for name, path in make_images(args.images, args.side).items():
        run = subprocess.run([sys.executable, "-c", MEASURE, str(args.code.resolve()), str(path)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            print(f"{name}: failed: {run.stderr.strip().splitlines()[-1:]}")
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"{name} ({args.side} x {args.side}, {path.stat().st_size / 1e3:.0f} kB): peak RSS {result['rss_peak_mb']:.0f} MB "
              f"(+{result['rss_growth_mb']:.0f} MB over the warmed-up process), tracemalloc peak "
              f"{result['traced_peak_mb']:.0f} MB, {result['seconds']:.1f} s, background removed: "
              f"{result['background_removed']}, box {tuple(result['box'])}")


if __name__ == "__main__":
    main()
