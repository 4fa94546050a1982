"""report.html: report.md's text as one self-contained page, its figures embedded, written by
``bench run`` and ``bench report`` for every run, byte for byte the same on re-render, and
shown by a real browser (headless Chromium) with its figures."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import report
from bench.cli import main

from tiny_runs import run_argv

FIGURE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A run of two architectures (every figure) and a run of one (no accuracy_cost.png)."""
    folder = tmp_path_factory.mktemp("html")
    made = {}
    for label, names in (("two", ("unet_thesis", "segnet_basic")), ("one", ("segnet_basic",))):
        out = folder / label
        assert main(run_argv(*names, epochs=1, deterministic=True, out=out)) == 0
        made[label] = out
    return made


def linked_figures(run: Path) -> list[str]:
    return FIGURE_LINK.findall((run / "report.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("label", ["two", "one"])
def test_bench_run_writes_html_that_embeds_every_figure_the_markdown_links(runs, label):
    run = runs[label]
    page = (run / "report.html").read_text(encoding="utf-8")
    figures = linked_figures(run)
    assert "predictions.png" in figures and "curves.png" in figures
    assert ("accuracy_cost.png" in figures) == (label == "two")
    for name in figures:
        data = base64.b64encode((run / name).read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{data}"' in page, name
    # nothing points outside the file: every image is a data URI, no link to a stylesheet
    assert re.findall(r'src="(?!data:image/png;base64,)', page) == []
    assert page.count("<img ") == len(figures)
    assert "<link" not in page and "<script" not in page


@pytest.mark.parametrize("label", ["two", "one"])
def test_the_html_holds_the_markdowns_text_and_tables(runs, label):
    run = runs[label]
    markdown_text = (run / "report.md").read_text(encoding="utf-8")
    page = (run / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
    assert page == report.render_html(markdown_text, run)
    headings = re.findall(r"^## (.+)$", markdown_text, flags=re.MULTILINE)
    assert headings and all(f"<h2>{h}</h2>" in page for h in headings)
    tables = sum(1 for line in markdown_text.splitlines() if line.startswith("|---"))
    assert tables >= 3 and page.count("<table>") == tables
    assert "<strong>Verdict.</strong>" in page


def test_bench_report_rewrites_the_html_byte_for_byte(runs, capsys):
    run = runs["two"]
    original = (run / "report.html").read_bytes()
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").read_bytes() == original


def test_a_linked_figure_that_is_missing_becomes_a_note(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG fake")
    text = "# Report `x`\n\n![first](a.png)\n\n![second](b.png)\n\n![away](../a.png)\n"
    page = report.render_html(text, tmp_path)
    assert page.count("<img ") == 1
    assert "(figure second not drawn: b.png is missing)" in page
    assert "(figure away not drawn: ../a.png is missing)" in page
    assert "<title>Report x</title>" in page


def test_markup_in_the_data_is_shown_as_text(tmp_path):
    text = "# R\n\n- `x`: error in <module> & <b>y</b>\n\n<div>z</div>\n"
    page = report.render_html(text, tmp_path)
    assert "error in &lt;module&gt; &amp; &lt;b&gt;y&lt;/b&gt;" in page
    assert "&lt;div&gt;z&lt;/div&gt;" in page and "<div>" not in page


# --------------------------------------------------------------------------- a real browser


def chromium() -> str:
    """The Chromium on PATH; in CI (CI=true) a missing one fails the test, elsewhere skips."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium not on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def screenshot(browser: str, page: Path, out: Path, workdir: Path) -> np.ndarray:
    """The page as headless Chromium draws it, 1200 px wide, as an RGB array."""
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={PAGE_WIDTH},{PAGE_HEIGHT}",
            f"--screenshot={out}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


PAGE_WIDTH, PAGE_HEIGHT = 1200, 9000
EMBEDDED = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def ink(pixels: np.ndarray) -> np.ndarray:
    """Where something is drawn: pixels clearly darker or more coloured than white."""
    return (pixels.min(axis=-1) < 200) | (pixels.max(axis=-1) - pixels.min(axis=-1) > 40)


def whitened(match: re.Match[str]) -> str:
    """The same image tag with a white PNG of the figure's size: the same page layout."""
    figure = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    buffer = io.BytesIO()
    Image.new("RGB", figure.size, "white").save(buffer, format="PNG")
    return f'src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}"'


def test_chromium_shows_the_page_and_its_figures(runs, tmp_path):
    """Chromium draws the page (text and tables) and, where each figure sits, the figure:
    the page is compared with the same page whose figures are white images of their size."""
    browser = chromium()
    run = runs["two"]
    page = (run / "report.html").read_text(encoding="utf-8")
    blank_figures = tmp_path / "blank_figures.html"
    blank_figures.write_text(EMBEDDED.sub(whitened, page), encoding="utf-8")
    shown = screenshot(browser, run / "report.html", tmp_path / "shown.png", tmp_path)
    text_only = screenshot(browser, blank_figures, tmp_path / "text_only.png", tmp_path)
    assert shown.shape == (PAGE_HEIGHT, PAGE_WIDTH, 3)
    assert not ink(shown[-50:]).any(), "the page is longer than the screenshot"
    # not blank: the text and tables alone draw on many rows of the page (about 1,000)
    text_rows = ink(text_only).any(axis=1).sum()
    assert text_rows > 600, text_rows
    # the figures are drawn where they sit: the drawn pixels that differ from the page with
    # white figures are at least half of the figures' own ink, scaled as the page shows them
    content_width = PAGE_WIDTH - 48  # body: 72rem at most, 1rem padding each side
    expected = 0.0
    for data in EMBEDDED.findall(page):
        figure = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
        scale = min(1.0, content_width / figure.shape[1])
        expected += ink(figure.astype(int)).sum() * scale * scale
    drawn = (ink(shown) & (shown != text_only).any(axis=-1)).sum()
    assert drawn > 0.5 * expected, (drawn, expected)
