"""Where every benchmark writes its figures: benchmarks/results/<name>-<device>.{json,md}."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(results: dict, markdown: str, name: str, device: str, out: str | None = None) -> Path:
    """Write the figures as JSON and as a markdown table (printed too); return the JSON path."""
    path = Path(out or f"benchmarks/results/{name}-{device.split(':')[0]}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"written: {path} and {path.with_suffix('.md')}")
    return path
