"""``--html``: a self-contained page with the report's plots, rendered by a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxprune.cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _page(tmp_path, *args) -> tuple[Path, str]:
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, [*map(str, args), "-o", str(tmp_path / "o.onnx"), "--html", str(page), "-q"])
    assert result.exit_code == 0, result.output
    return page, page.read_text()


def test_html_is_self_contained_with_three_plots(tmp_path):
    _, text = _page(tmp_path, MODELS / "digits_cnn.onnx", "--target-flops", "0.5", "--calib",
                    MODELS / "digits_calib.npz", "--calib-samples", "64")
    parser = _Tags()
    parser.feed(text)
    svgs = [a for t, a in parser.tags if t == "svg"]
    labels = [a.get("aria-label", "") for a in svgs]
    assert len(svgs) == 3, labels
    assert any("kept channels" in s for s in labels) and any("vs kept fraction" in s for s in labels)
    assert not any(t in ("script", "link", "img", "iframe") for t, _ in parser.tags)  # nothing to fetch or run
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?:", text)
    assert "Fidelity on calibration data" in text and "Blocked groups" in text


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on this machine (apt-get install chromium)")
def test_html_renders_in_headless_chromium(tmp_path):
    # with calibration data: all three plots (without it the sensitivity section says it was not measured)
    page, _ = _page(tmp_path, MODELS / "digits_cnn.onnx", "--target-flops", "0.5", "--calib",
                    MODELS / "digits_calib.npz", "--calib-samples", "64")
    base = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-500:]
    assert dom.stdout.count("<svg") == 3 and "onnxprune report" in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run([*base, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one
