"""Screenshot of the web app as a browser shows it: docs/ui/web-app.png.

Starts `python -m patchscaler.ui --example` (the bundled example upscaled once at start, so
the page opens with a result in it) on a free port, renders the page with Debian's headless
chromium (`apt-get install chromium`), and stops the server. The PNG is reduced to a
256-colour palette to stay small in the repository.

    python scripts/ui_screenshot.py                      # -> docs/ui/web-app.png
    python scripts/ui_screenshot.py -o shot.png --size 1400,1000
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"no answer on {url} after {timeout:.0f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "ui" / "web-app.png")
    p.add_argument("--size", default="1400,1150", help="browser window WIDTH,HEIGHT in CSS pixels")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for the server (it upscales first)")
    args = p.parse_args(argv)
    browser = shutil.which("chromium")
    if browser is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "patchscaler.ui", "--port", str(port), "--example"], env=env)
    try:
        wait_for(url, server, args.timeout)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            raw = Path(profile) / "shot.png"
            # --virtual-time-budget: chromium runs the page's scripts (which fetch the app's
            # config and images from the server) for this much page time before the shot.
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--user-data-dir={profile}/chrome", f"--window-size={args.size}",
                 "--virtual-time-budget=30000", f"--screenshot={raw}", url],
                check=True, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            from PIL import Image

            with Image.open(raw) as im:
                im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(args.output, optimize=True)
        print(f"wrote {args.output} ({args.output.stat().st_size / 1e3:.0f} kB)")
    finally:
        server.terminate()
        server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
