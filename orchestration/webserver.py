"""Start `dagster dev` (webserver + daemon) on a free localhost port: tests and scripts/screenshot_asset_graph.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(url: str, query: str, **variables) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query,
                                                                        "variables": variables}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def webserver(dagster_home: Path, params_path: Path, timeout: float = 180) -> Iterator[str]:
    """`dagster dev` from the repository root (pyproject's [tool.dagster] names the code location), as a user
    runs it, with these params; yields its URL.

    The daemon comes with it, so runs launched from the UI (or its GraphQL API) are dequeued and run."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PSCB_PARAMS": str(params_path), "DO_NOT_TRACK": "1",
           "PYTHONPATH": str(REPO)}
    # to a file, not a pipe: a long run's logs would fill an unread pipe and stall dagster dev
    log = open(Path(dagster_home) / "dagster_dev.log", "w")  # noqa: SIM115 (closed in finally)
    process = subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "dev", "-h", "127.0.0.1", "-p",
                                str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/server_info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"dagster-webserver did not answer on {url} in {timeout} s") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGINT)  # dagster dev stops its webserver, daemon and code server
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
