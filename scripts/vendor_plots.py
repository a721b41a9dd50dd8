"""Vendor Vega, Vega-Lite and Vega-Embed for `dvc plots show` offline (`.dvc/config`: plots.html_template).

DVC's default page loads the three libraries from a CDN, so offline its plots are blank. This script
installs the pinned npm packages into a temporary folder with `npm` and writes:

- ``.dvc/plots/offline.html``: DVC's page with the three minified builds inlined, so every page
  `dvc plots show` writes is self-contained (a relative ``<script src>`` would break for ``-o DIR``);
- ``.dvc/plots/vendor/``: each package's LICENSE, ``THIRD-PARTY-LICENSES.txt`` (the licenses of the
  packages the builds bundle) and ``NOTICE.md`` (versions, licenses and the sha256 of each inlined build,
  which tests/test_dvc_plots.py checks).

Run from the repository root: ``uv run python scripts/vendor_plots.py`` (needs `npm` and the npm registry).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelsieve.atomic import write_text  # noqa: E402
from labelsieve.errors import LabelsieveError  # noqa: E402

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # load order
# Dependencies the browser builds do not contain: command-line tools and their helpers, Node's fetch, type
# definitions, and a build tool that vega-tooltip lists as a dependency.
NOT_BUNDLED = (
    "@rollup/",
    "@types/",
    "ansi-",
    "cliui",
    "color-convert",
    "color-name",
    "commander",
    "emoji-regex",
    "escalade",
    "get-caller-file",
    "iconv-lite",
    "is-fullwidth-code-point",
    "node-fetch",
    "require-directory",
    "rw",
    "safer-buffer",
    "string-width",
    "strip-ansi",
    "tr46",
    "webidl-conversions",
    "whatwg-url",
    "wrap-ansi",
    "y18n",
    "yargs",
)
PLOTS = ROOT / ".dvc" / "plots"
VENDOR = PLOTS / "vendor"
# DVC's PAGE_HTML (dvc_render/html.py) without its {scripts} placeholder, which would add the CDN tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


class VendorError(LabelsieveError):
    """npm failed, or a package lacks the file this script copies."""


def _install(folder: Path) -> Path:
    """`npm install` the pinned packages into `folder`; returns its node_modules.

    Raises:
        VendorError: npm is missing or fails.
    """
    (folder / "package.json").write_text('{"name": "vendor", "version": "0.0.0", "private": true}\n')
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    command = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--omit=dev", *specs]
    try:
        subprocess.run(command, cwd=folder, check=True, capture_output=True, text=True)
    except FileNotFoundError as err:
        raise VendorError("npm is not installed (Debian: apt-get install npm)") from err
    except subprocess.CalledProcessError as err:
        raise VendorError(f"{' '.join(command)} failed:\n{err.stderr}") from err
    return folder / "node_modules"


def _license_file(package: Path) -> Path | None:
    """The package's LICENSE (any spelling), or None."""
    found = sorted(p for p in package.iterdir() if p.name.lower().startswith(("license", "licence")))
    return found[0] if found else None


def _third_party(modules: Path) -> str:
    """The license of every other installed package the builds bundle, packages sharing a text together."""
    by_text: dict[str, list[str]] = {}
    for package_json in sorted(modules.glob("*/package.json")) + sorted(modules.glob("@*/*/package.json")):
        package = package_json.parent
        meta = json.loads(package_json.read_text())
        if meta["name"] in PACKAGES or meta["name"].startswith(NOT_BUNDLED):
            continue
        file = _license_file(package)
        text = file.read_text().strip() if file else "(the package ships no license file)"
        by_text.setdefault(text, []).append(f"{meta['name']}@{meta['version']} ({meta.get('license', '?')})")
    parts = [
        "Licenses of the packages the minified builds of vega, vega-lite and vega-embed bundle: their\n"
        "production dependency tree less scripts/vendor_plots.py's NOT_BUNDLED (written by that script).\n"
    ]
    for text, names in by_text.items():
        parts.append("=" * 78 + "\n" + "\n".join(names) + "\n" + "-" * 78 + "\n" + text + "\n")
    return "\n".join(parts)


def main() -> None:
    """Install the packages and write the template, the licenses and the notice."""
    with tempfile.TemporaryDirectory() as tmp:
        modules = _install(Path(tmp))
        scripts, rows = [], []
        for name, version in PACKAGES.items():
            package = modules / name
            build = (package / "build" / f"{name}.min.js").read_text(encoding="utf-8")
            if "</script" in build.lower() or "{" + "scripts}" in build:
                raise VendorError(f"{name}'s build contains text that cannot be inlined in the page")
            licence = _license_file(package)
            target = VENDOR / f"LICENSE-{name}"
            if licence is not None:
                write_text(target, licence.read_text())
            elif not target.is_file():
                raise VendorError(f"{name}@{version} ships no LICENSE: put its repository's in {target}")
            meta = json.loads((package / "package.json").read_text())
            digest = hashlib.sha256(build.encode()).hexdigest()
            scripts.append(
                f"    <script>/*! {name}@{version} ({meta['license']}): .dvc/plots/vendor/LICENSE-{name} */\n"
                f"{build}\n    </script>"
            )
            rows.append(f"| {name} | {version} | {meta['license']} | `build/{name}.min.js` | `{digest}` |")
        write_text(PLOTS / "offline.html", PAGE.format(scripts="\n".join(scripts)))
        write_text(VENDOR / "THIRD-PARTY-LICENSES.txt", _third_party(modules))
    notice = [
        "# Vendored plotting libraries",
        "",
        "`.dvc/plots/offline.html` (DVC's `plots.html_template`, set in `.dvc/config`) inlines these npm",
        "builds, unmodified, so the pages `dvc plots show` writes draw without a network. Written by",
        "`scripts/vendor_plots.py`; to update, change its versions and run it.",
        "",
        "| package | version | license | file inlined | sha256 of the file |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        "Copyright (c) 2015-2023, University of Washington Interactive Data Lab (each package's LICENSE-*",
        "here; the vega npm package ships none, so `LICENSE-vega` is the vega repository's). The builds",
        "bundle code of other permissively licensed packages (d3: ISC, and others): their licenses are in",
        "`THIRD-PARTY-LICENSES.txt`.",
        "",
    ]
    write_text(VENDOR / "NOTICE.md", "\n".join(notice))


if __name__ == "__main__":
    try:
        main()
    except LabelsieveError as err:
        sys.exit(f"vendor_plots: error: {err}")
