"""Peak memory of the web app for one hostile upload: the 6300 x 6300 16-bit grayscale PNG of issue 20.

    python benchmarks/app_memory.py [--app PATH/app.py] [--side 6300]

Starts `python APP --port P` (the app of this checkout by default; `--app` another version, e.g. an older commit
unpacked with `git archive`) on 127.0.0.1, sends a small image through its `/preprocess` endpoint to warm it up,
resets the kernel's peak-RSS mark of the server process (/proc/PID/clear_refs), sends the big image (a 77 KB file)
the way a browser would (upload, then `/preprocess`), and reports the server's peak RSS during that request
(VmHWM) above its resident size before it, with the answer the client got. Linux only.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dd3g.testing import make_images
from dd3g.evaluation.timing import print_and_save

ROOT = Path(__file__).resolve().parents[1]


def memory_kb(pid: int) -> dict:
    """{'VmRSS': kB, 'VmHWM': kB} of a process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--app", type=Path, default=ROOT / "app.py")
    p.add_argument("--side", type=int, default=6300)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file

    images = make_images(Path(tempfile.gettempdir()) / "dd3g-preprocess-memory", args.side)
    big = images["16-bit grayscale PNG"]
    port = free_port()
    server = subprocess.Popen([sys.executable, str(args.app), "--port", str(port), "--device", "cpu"], cwd=args.app.parent,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        client = None
        for _ in range(240):  # loading the model and gradio takes a while on a small CPU
            if server.poll() is not None:
                raise SystemExit(f"the app exited: {server.stderr.read()[-2000:]}")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                time.sleep(1)
        if client is None:
            raise SystemExit("the app did not come up in 4 minutes")
        client.predict(handle_file(str(ROOT / "examples" / "test-0.png")), 0.85, api_name="/preprocess")  # warm-up
        before = memory_kb(server.pid)
        Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # reset the peak to the current size
        start = time.time()
        try:
            client.predict(handle_file(str(big)), 0.85, api_name="/preprocess")
            answer = "accepted"
        except Exception as error:  # the app's refusal reaches the client as an error
            answer = f"refused: {str(error).splitlines()[0][:200]}"
        after = memory_kb(server.pid)
        report = {"app": str(args.app), "image": f"{args.side} x {args.side} 16-bit grayscale PNG, {big.stat().st_size} bytes",
                  "answer": answer, "seconds": round(time.time() - start, 2), "rss_before_mb": round(before["VmRSS"] / 1024),
                  "peak_rss_during_mb": round(after["VmHWM"] / 1024),
                  "peak_above_before_mb": round((after["VmHWM"] - before["VmRSS"]) / 1024)}
    finally:
        server.terminate()
        server.wait(timeout=60)
    return print_and_save(report, args.json)


if __name__ == "__main__":
    main()
