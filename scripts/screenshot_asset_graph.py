"""Screenshot the Dagster asset graph with headless Chromium (Debian package `chromium`, driven by Playwright).

    .venv/bin/pip install playwright            # the driver only: it uses the system chromium, downloads nothing
    .venv/bin/python scripts/screenshot_asset_graph.py [--home .dagster] [--params params.yaml] [--out FILE]

Starts `dagster dev` on a free localhost port against the given instance (its materializations and check
results show in the picture), opens the global asset lineage, expands every asset group and saves a PNG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestration.webserver import REPO, webserver  # noqa: E402

GROUPS = ("bank", "fine_tuning")
GRAPH_STATE_KEY = "asset-graph-open-graph-nodes-global-__GLOBAL__"


def screenshot(url: str, out: Path, browser_path: str, width: int, height: int, page_path: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(f"{url}{page_path}", wait_until="networkidle")
        # the UI keeps expanded groups in localStorage; a fresh load then fits the whole expanded graph
        expanded = json.dumps({"expanded": ",".join(f"global@global:{group}" for group in GROUPS)})
        page.evaluate("([key, value]) => { localStorage.setItem(key, value); "
                      "localStorage.setItem('dagster-nav-collapsed', 'true'); }", [GRAPH_STATE_KEY, expanded])
        page.reload(wait_until="networkidle")
        time.sleep(4)
        page.screenshot(path=str(out))
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", default=str(REPO / ".dagster"), help="DAGSTER_HOME (default: .dagster)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default=str(REPO / "docs" / "asset-graph.png"))
    parser.add_argument("--page", default="/asset-groups", help="UI path (default: the global asset lineage)")
    parser.add_argument("--size", default="2200x900", help="viewport WIDTHxHEIGHT")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("error: no chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    with webserver(Path(args.home).resolve(), Path(args.params).resolve()) as url:
        screenshot(url, out, browser, width, height, args.page)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
