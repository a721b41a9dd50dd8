"""`dvc plots show` offline: the repo's `.dvc/config` points DVC at `.dvc/plots/offline.html`, which inlines
the vendored Vega, Vega-Lite and Vega-Embed builds, so the page loads no script from a CDN."""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO / ".dvc" / "plots" / "vendor"
DVC_YAML = """\
plots:
  - Accuracy per epoch:
      x: step
      y:
        curves.csv: [test_acc, val_acc]
  - Confusion:
      template: confusion
      x: predicted
      y:
        confusion.csv: actual
"""


class _Scripts(HTMLParser):
    """Each <script>'s attributes and text."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts.append((dict(attrs), ""))
            self._open = True

    def handle_endtag(self, tag: str) -> None:
        self._open = self._open and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._open:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)


def _dvc(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    """`dvc plots show` of two small plots in a fresh repo holding the project's `.dvc/config` and plots."""
    root = tmp_path_factory.mktemp("plots")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    _dvc(root, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "curves.csv").write_text("step,test_acc,val_acc\n0,0.5,0.4\n1,0.7,0.6\n2,0.8,0.7\n")
    (root / "confusion.csv").write_text("actual,predicted\na,a\na,b\nb,b\nb,b\n")
    _dvc(root, "plots", "show")
    return root / "dvc_plots" / "index.html"


def test_dvc_plots_page_loads_no_remote_script_and_inlines_the_vendored_libraries(page):
    html = page.read_text(encoding="utf-8")
    parser = _Scripts()
    parser.feed(html)
    assert [attrs["src"] for attrs, _ in parser.scripts if "src" in attrs] == []  # nothing fetched
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?:""", html)
    notice = (VENDOR / "NOTICE.md").read_text()
    inlined = {}
    for _attrs, text in parser.scripts:
        match = re.match(
            r"/\*! ([\w-]+)@([\d.]+) \(BSD-3-Clause\): \.dvc/plots/vendor/(LICENSE-[\w-]+) \*/\n", text
        )
        if match:
            name, version, licence = match.groups()
            build = text[match.end() :].removesuffix("\n    ")
            inlined[name] = version
            # the npm build, byte for byte: NOTICE.md records its sha256, and its license is vendored
            assert f"`{hashlib.sha256(build.encode()).hexdigest()}`" in notice, name
            assert f"| {name} | {version} | BSD-3-Clause |" in notice
            assert (VENDOR / licence).read_text().startswith("Copyright (c) 2015")
    assert set(inlined) == {"vega", "vega-lite", "vega-embed"}
    assert [v.split(".")[0] for v in inlined.values()] == ["5", "5", "6"]
    assert html.count("vegaEmbed(") >= 2  # both plots are on the page
    assert (VENDOR / "THIRD-PARTY-LICENSES.txt").read_text().count("(ISC)") > 10  # d3's modules


def test_dvc_plots_page_draws_every_plot_in_headless_chromium_without_a_network(page, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh installs Debian's chromium)")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--proxy-server=127.0.0.1:9",  # any request to the network would fail
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "HOME": str(tmp_path)},
    ).stdout
    # vega-embed turns each plot's div into a container with a drawn canvas
    assert dom.count('class="vega-embed') == 2
    assert len(re.findall(r'<canvas width="\d+" height="\d+" class="marks"', dom)) == 2
