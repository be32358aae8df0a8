"""The report as a real browser draws it: headless Chromium renders the self-contained HTML (skipped
without Chromium; install it with `apt-get install -y chromium`)."""
import re

import numpy as np
import pandas as pd
import pytest

from ple_adatt.report import StudyMeta, write_report
from ple_adatt.report.render import OUTCOME_STYLE
from ple_adatt.report.screenshot import find_chromium, screenshot
from ple_adatt.report.stats import RESULT_COLUMNS

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="no chromium on PATH: apt-get install -y chromium to run the browser check")


def test_report_renders_in_headless_chromium_with_embedded_images(tmp_path):
    # Synthetic rows (rendering check only): 4 seeds, ple_adatt clearly better on auc -> a green forest point.
    rows = [(v, s, "churn", "binary", "auc", 0.7 + 0.01 * s + (0.05 + 0.001 * s if v == "ple_adatt" else 0.0))
            for v in ("ple", "ple_adatt") for s in range(4)]
    files = write_report(tmp_path / "report", pd.DataFrame(rows, columns=list(RESULT_COLUMNS)),
                         StudyMeta("browser", "ple"))
    html = files["report.html"].read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)  # nothing to fetch
    assert not re.search(r"https?://|<link|<script|url\(|@import", html)

    png = screenshot(files["report.html"], tmp_path / "report.png", width=1000, height=1400)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib import image

    px = (image.imread(png)[..., :3] * 255).round().astype(int)  # [H, W, 3]
    assert px.shape[1] == 1000 and (px != 255).any(axis=2).mean() > 0.02  # not a blank page
    green = np.array([int(OUTCOME_STYLE["better"][0][i:i + 2], 16) for i in (1, 3, 5)])
    # The forest plot's "better" colour is only in the embedded PNG: the browser decoded and drew it.
    assert (np.abs(px - green).sum(axis=2) <= 6).sum() > 30
