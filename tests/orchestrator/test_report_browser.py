"""The HTML report in a real (headless) browser: every embedded plot decodes and shows
(issue 18). Needs Debian's chromium (``apt-get install -y chromium``); skipped without it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from orchestrator.cli import main

from ._planted import planted

BROWSER = next(
    (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
)

# Appended to a copy of the report: after load, the images' state as a body attribute.
_PROBE = (
    "<script>window.addEventListener('load', () => document.body.setAttribute('data-images', "
    "JSON.stringify([...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight, "
    "i.getBoundingClientRect().width]))));</script>"
)


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no chromium: apt-get install -y chromium")
def test_every_plot_of_the_report_loads_in_a_browser(tmp_path, capsys):
    store = planted(str(tmp_path / "res"), n=8)
    assert main(["analyze", store.root, "--name", "s", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    report = (tmp_path / "out" / "s-report.html").read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(report.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    flags = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"]
    dom = subprocess.run(
        [*flags, "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    found = re.search(r"data-images=\"([^\"]*)\"", dom)
    assert found, dom[-2000:]
    images = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(images) == report.count("<img") >= 6
    for alt, complete, w, h, shown in images:
        assert complete and w > 100 and h > 100 and shown > 100, (alt, complete, w, h, shown)
    subprocess.run(
        [*flags, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1280,4000", probe.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert (tmp_path / "report.png").stat().st_size > 10_000
