"""A PNG of an HTML report or a web page (the MLflow UI) as a real browser draws it: headless Chromium.

    png = screenshot("runs/my-study/report/report.html", "docs/img/report.png")
    png = screenshot("http://127.0.0.1:5000/#/experiments/1/runs/<id>", "mlflow.png", wait_ms=15000)

Used by jobs/screenshot.py and by the report's browser test; needs `chromium` on PATH
(`apt-get install -y chromium`).
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of the first Chromium-family browser on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def screenshot(target: str | Path, out_png: str | Path, width: int = 1280, height: int = 3000,
               wait_ms: int | None = None, trim: bool = True, timeout_s: float = 120.0) -> Path:
    """Draw ``target`` in headless Chromium and save the visible ``width`` × ``height`` pixels as PNG.

    Args:
        target: an http(s) URL, or a local HTML file (opened as file://).
        out_png: where the PNG goes (parent folders are created).
        wait_ms: virtual time Chromium lets scripts run before the shot; a JavaScript app such as
            the MLflow UI draws nothing without it (15000 is enough for MLflow 3).
        trim: cut the blank band below a page shorter than ``height``.

    Raises:
        RuntimeError: no Chromium on PATH, or Chromium failed / wrote no PNG (its stderr included).
    """
    browser = find_chromium()
    if browser is None:
        raise RuntimeError(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); "
                           "install it: apt-get install -y chromium")
    target = str(target)
    url = target if target.startswith(("http://", "https://", "file://")) else Path(target).resolve().as_uri()
    out = Path(out_png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as profile:  # a fresh profile: no lock shared with another browser
        cmd = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
               "--no-first-run", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out}"]
        if wait_ms:
            cmd.append(f"--virtual-time-budget={int(wait_ms)}")
        proc = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} exited {proc.returncode} without a screenshot of {url}:\n"
                           + proc.stderr[-2000:])
    if trim:
        _trim_bottom(out)
    return out


def _trim_bottom(png: Path, margin: int = 24) -> None:
    """Crop the rows below the last one that differs from the bottom row's colour (plus ``margin``)."""
    from matplotlib import image

    px = image.imread(png)  # [H, W, 3 or 4] floats
    differs = (px != px[-1:, :1]).any(axis=(1, 2))
    last = int(np.flatnonzero(differs)[-1]) if differs.any() else 0
    if last + margin + 1 < px.shape[0]:
        image.imsave(png, px[:last + margin + 1], metadata={"Software": None})
