"""What the project exposes, checked from the outside (docs/security.md):

- `python -m orchestration.cluster up` (what `make cluster` runs) listens on loopback only: every listening
  socket of its processes and their children, read from /proc/net/tcp{,6}, is on 127.0.0.1, and each is one
  the docs list;
- a TLS cluster (`cluster certs`, PSCB_DASK_TLS_DIR) runs a Dagster step through the Dask executor, and
  refuses a plain-TCP client, a TLS client without a certificate and one whose certificate another CA signed;
- no literal password, token or key in deploy/ or the params files."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.executor import TLS_DIR_ENV, ClusterUnavailable, connect
from orchestration.webserver import free_port
from tests.conftest import REPO, tiny_params
from tests.test_distributed import environment, project_instance

SECURITY_DOC = REPO / "docs" / "security.md"


# --- the local cluster listens on loopback only ---------------------------------------------------------

def listening_sockets() -> dict[int, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state (st 0A), IPv4 and IPv6."""
    found = {}
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)  # 32-bit words in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found[int(fields[9])] = (str(ipaddress.ip_address(raw)), int(hex_port, 16))
    return found


def process_tree(roots: list[int]) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(" (", 1)
            parents[int(pid)] = int(rest.rsplit(") ", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def sockets_of(pids: set[int]) -> dict[int, list[tuple[str, int]]]:
    """pid -> the (address, port) each of its listening sockets is bound to."""
    listening, owned = listening_sockets(), {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            found = re.fullmatch(r"socket:\[(\d+)\]", target)
            if found and int(found.group(1)) in listening:
                owned.setdefault(pid, []).append(listening[int(found.group(1))])
    return owned


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def documented_listeners() -> dict[str, str]:
    """The `make cluster` rows of docs/security.md's port table: what -> where it listens."""
    rows = {}
    for line in SECURITY_DOC.read_text().splitlines():
        cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] == "make cluster":
            rows[cells[1]] = cells[2]
    return rows


@pytest.mark.parametrize("dashboard", [False, True], ids=["default", "dashboard"])
def test_make_cluster_listens_on_loopback_only(tmp_path, dashboard):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "DO_NOT_TRACK": "1"}
    env.pop(TLS_DIR_ENV, None)
    command = [sys.executable, "-m", "orchestration.cluster"]
    up = subprocess.run([*command, "up", "--workers", "1", "--port", str(port)] + (["--dashboard"] if dashboard
                                                                                    else []),
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        address = f"tcp://127.0.0.1:{port}"
        assert f"DASK_SCHEDULER_ADDRESS={address}" in up.stdout
        pids = json.loads((tmp_path / ".cluster" / "pids.json").read_text())["pids"]
        with connect(address, 10, env={}) as client:
            info = client.scheduler_info(n_workers=-1)
            (worker_address, worker), = info["workers"].items()
        scheduler_pid, nanny_pid = pids
        worker_pids = process_tree([nanny_pid]) - {nanny_pid}
        owned = sockets_of(process_tree(pids))

        # every socket is on loopback, and each is one the scheduler reports
        assert all(ipaddress.ip_address(host).is_loopback for bound in owned.values() for host, _ in bound), owned
        observed = {("dask scheduler", p) for _, p in owned.get(scheduler_pid, [])}
        observed |= {("dask nanny", p) for _, p in owned.get(nanny_pid, [])}
        observed |= {("dask worker", p) for pid in worker_pids for _, p in owned.get(pid, [])}
        expected = {("dask scheduler", port), ("dask scheduler", info["services"]["dashboard"]),
                    ("dask nanny", port_of(worker["nanny"])), ("dask worker", port_of(worker_address)),
                    ("dask worker", worker["services"]["dashboard"])}
        assert observed == expected, (owned, info)
        assert sum(len(bound) for bound in owned.values()) == 5, owned  # one address each: no [::] twin

        # the HTTP servers: health always, the Bokeh dashboard only when asked for
        for http_port in (info["services"]["dashboard"], worker["services"]["dashboard"]):
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10) as response:
                assert response.read() == b"ok"
        status = f"http://127.0.0.1:{info['services']['dashboard']}/status"
        if dashboard:
            assert f"dashboard: {status}" in up.stdout
            with urllib.request.urlopen(status, timeout=30) as response:
                assert response.status == 200
        else:
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(status, timeout=10)

        # and docs/security.md lists each of them on 127.0.0.1
        documented = documented_listeners()
        labels = {"dask scheduler", "dask scheduler HTTP", "dask nanny", "dask worker", "dask worker HTTP"}
        assert labels <= set(documented), documented
        assert all(documented[label].startswith("127.0.0.1") for label in labels), documented
    finally:
        down = subprocess.run([*command, "down"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert down.returncode == 0, down.stderr


def test_a_cluster_off_loopback_needs_tls_and_one_interface(tmp_path, monkeypatch, capsys):
    """Refused before anything starts (and before any packet leaves: nothing is contacted)."""
    from orchestration.cluster import main

    monkeypatch.delenv(TLS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="not a loopback address.*certs DIR"):
        main(["up", "--workers", "1", "--host", "192.0.2.10"])  # TEST-NET-1: never routed
    with pytest.raises(SystemExit, match="every interface"):
        main(["up", "--workers", "1", "--host", "0.0.0.0"])
    with pytest.raises(SystemExit, match="not a loopback address"):
        main(["join", "tcp://192.0.2.10:8786", "--workers", "1", "--host", "192.0.2.11"])
    assert not (tmp_path / ".cluster").exists()


# --- between hosts: TLS or nothing ------------------------------------------------------------------------

def make_certs(folder: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "orchestration.cluster", "certs", str(folder)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"export {TLS_DIR_ENV}={folder.resolve()}" in done.stdout
    assert (folder / "key.pem").stat().st_mode & 0o077 == 0  # the key: its owner's alone
    return folder


def tls_reply(port: int, ca: Path, cert: Path | None = None, key: Path | None = None) -> bytes:
    """The first bytes the scheduler sends after a TLS handshake with this client (Dask's handshake
    message), or the SSLError it ends the connection with."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = False  # Dask's own choice: a dedicated CA per cluster, peers by IP
    if cert:
        context.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw) as tls:
        return tls.recv(64)


BUILD_RAW_TASKS = """
import os, dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
repository = ReconstructableRepository.for_module('orchestration.definitions', 'defs', '.')
job = repository.get_reconstructable_job('build_bank')
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(job, instance, asset_selection=[dg.AssetKey('tasks')],
                            tags={'dagster/partition': 'arc_easy|tiny', 'dagster/partition/dataset': 'arc_easy',
                                  'dagster/partition/model': 'tiny'})
    print('run', result.run_id, 'SUCCESS' if result.success else 'FAILED', 'pid', os.getpid())
"""


def test_a_tls_cluster_runs_a_dagster_step_and_refuses_clients_without_its_certificate(tmp_path, tiny_model_dir,
                                                                                       monkeypatch):
    from orchestration.backfill import cluster_gpu_slots
    from orchestration.cluster import local_cluster

    tls, other = make_certs(tmp_path / "tls"), make_certs(tmp_path / "other-ca")
    home = project_instance(tmp_path / "dagster_home")
    port = free_port()
    env = {**environment(home, tiny_params(tmp_path, tiny_model_dir), f"tls://127.0.0.1:{port}"),
           TLS_DIR_ENV: str(tls)}
    with local_cluster(1, port, tmp_path / "cluster", env) as address:
        assert address == f"tls://127.0.0.1:{port}"

        # refused: plain TCP, TLS without a certificate, a certificate from another CA
        with pytest.raises(ClusterUnavailable, match="did not answer"):
            connect(f"tcp://127.0.0.1:{port}", 5, env={}).close()
        with pytest.raises(ClusterUnavailable, match="speaks TLS"):  # no certificate: refused before sending
            connect(address, 5, env={}).close()
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED|certificate required"):
            tls_reply(port, tls / "ca.pem")
        with pytest.raises(ssl.SSLError, match="UNKNOWN_CA|unknown ca|CERTIFICATE_VERIFY_FAILED"):
            tls_reply(port, tls / "ca.pem", other / "cert.pem", other / "key.pem")
        with pytest.raises(ClusterUnavailable, match="did not answer"):
            connect(address, 5, env={TLS_DIR_ENV: str(other)}).close()
        # the same probe with the cluster's certificate gets Dask's handshake: the refusals are the server's
        assert tls_reply(port, tls / "ca.pem", tls / "cert.pem", tls / "key.pem")

        # accepted: the backfill's check, and a run's step through the Dask executor, on the worker
        for name in (TLS_DIR_ENV, "DASK_SCHEDULER_ADDRESS", "PSCB_EXECUTOR"):
            monkeypatch.setenv(name, env[name])
        assert cluster_gpu_slots() == 1
        with connect(address, 10, env=env) as client:
            (worker_pid,) = client.run(os.getpid).values()
        done = subprocess.run([sys.executable, "-c", BUILD_RAW_TASKS], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
    assert " SUCCESS " in done.stdout, done.stdout[-3000:] + done.stderr[-5000:]
    run_id = done.stdout.split("run ", 1)[1].split()[0]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (start,) = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_START).records]
        assert start.step_key == "tasks" and start.pid == worker_pid  # it ran in the Dask worker
        (record,) = instance.fetch_materializations(dg.AssetKey("tasks"), limit=10).records
        assert record.partition_key == "arc_easy|tiny"
    assert any((tmp_path / "data").rglob("*.jsonl"))


def test_the_executor_refuses_a_mismatched_address(tmp_path):
    """A tls:// address without certificates, or certificates with a tcp:// address: said, not attempted."""
    tls = make_certs(tmp_path / "tls")
    with pytest.raises(ClusterUnavailable, match="speaks TLS: set PSCB_DASK_TLS_DIR"):
        connect("tls://127.0.0.1:1", 1, env={})
    with pytest.raises(ClusterUnavailable, match="TLS only"):
        connect("tcp://127.0.0.1:1", 1, env={TLS_DIR_ENV: str(tls)})
    (tls / "key.pem").unlink()
    with pytest.raises(ClusterUnavailable, match="key.pem missing"):
        connect("tls://127.0.0.1:1", 1, env={TLS_DIR_ENV: str(tls)})


# --- no secrets in the repository -------------------------------------------------------------------------

SECRET_PARTS = ("password", "passwd", "passphrase", "secret", "credential", "apikey", "accesskey", "privatekey")
SECRET_WORDS = ("token", "pwd")  # whole words: max_new_tokens is a count
# keys whose value names a Secret object (or a key in one), not a secret value
REFERENCE_KEY = re.compile(r"(existingsecret|secretname|secrets|passwordsecret|secretref|secretkeyref)$")
NOT_SECRETS = {"baseline_token": "attribute.baseline_token: the attribution baseline's vocabulary token (pad/unk)"}
SECRET_VALUE = [
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:[^\s@/]+@"), "a URL with a password"),
    (re.compile(r"\b(AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|hf_[A-Za-z0-9]{30,}|xox[bp]-[A-Za-z0-9-]+)\b"),
     "an access token"),
]
SCANNED = ["deploy/**/*", "params*.yaml", "experiments/**/*.yaml", ".dagster/dagster.yaml"]


def is_reference(value: str) -> bool:
    return bool(re.fullmatch(r"\$\{?\w+\}?|\{\{.*\}\}|\$\(.*\)", value.strip()))


def literal_secrets(document, path: str = "") -> list[str]:
    """Places in a parsed YAML document where a secret-named key holds a literal value, and Secret
    manifests that carry their data."""
    found = []
    if isinstance(document, dict):
        if document.get("kind") == "Secret" and (document.get("data") or document.get("stringData")):
            found.append(f"{path or '/'}: a Secret with its data in the file")
        for key, value in document.items():
            where = f"{path}.{key}"
            words = re.findall(r"[a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(key)).lower())
            name = "".join(words)
            secret_named = (any(part in name for part in SECRET_PARTS) or any(w in words for w in SECRET_WORDS)) \
                and str(key) not in NOT_SECRETS
            if secret_named and not REFERENCE_KEY.search(name) and isinstance(value, (str, int, float)) \
                    and not isinstance(value, bool) and str(value).strip() and not is_reference(str(value)):
                found.append(f"{where}: {key} = {str(value)[:3]}...")
            found += literal_secrets(value, where)
    elif isinstance(document, list):
        for i, item in enumerate(document):
            found += literal_secrets(item, f"{path}[{i}]")
    return found  # values of any key: SECRET_VALUE, on the whole text


def scan(path: Path) -> list[str]:
    text = path.read_text()
    found = [f"{path.name}:{text.count(chr(10), 0, m.start()) + 1}: {what}"
             for pattern, what in SECRET_VALUE for m in pattern.finditer(text)]
    if path.suffix in (".yaml", ".yml"):
        for document in yaml.safe_load_all(text):
            found += [f"{path.name}: {place}" for place in literal_secrets(document)]
    else:  # Dockerfile, shell: NAME=value with a secret-like NAME
        for number, line in enumerate(text.splitlines(), 1):
            for name, value in re.findall(r"\b([A-Za-z_]*(?:PASSWORD|SECRET|TOKEN|API_KEY)[A-Za-z_]*)=(\S+)", line,
                                          re.IGNORECASE):
                if not is_reference(value):
                    found.append(f"{path.name}:{number}: {name}=...")
    return found


def scanned_files() -> list[Path]:
    return sorted({path for pattern in SCANNED for path in REPO.glob(pattern) if path.is_file()})


def test_no_literal_secret_in_deploy_or_the_params_files():
    files = scanned_files()
    assert {"values.yaml", "storage.yaml", "dagster.yaml", "Dockerfile", "params.yaml"} <= {f.name for f in files}
    found = [place for path in files for place in scan(path)]
    assert not found, "literal secrets (create them as Kubernetes Secrets instead, docs/security.md):\n" + \
        "\n".join(found)


def test_the_secret_scan_catches_what_the_deployment_used_to_commit(tmp_path):
    """The scan's own check: the literal passwords deploy/ had before (issue 26) and a few other shapes."""
    samples = {
        "values.yaml": "postgresql:\n  postgresqlUsername: pscb\n  postgresqlPassword: change-me\n",
        "storage.yaml": "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData:\n  PGPASSWORD: change-me\n",
        "params.yaml": "mlflow:\n  tracking_uri: postgresql://pscb:hunter2@db:5432/mlflow\n",
        "tokens.yaml": "hub:\n  hf_token: abc123\n  apiKey: 12345\n  clientSecret: s3cr3t\n",
        "key.yaml": "tls:\n  key: |\n    -----BEGIN EC PRIVATE KEY-----\n    MHcCAQEE\n",
        "Dockerfile": "FROM python:3.11-slim\nENV DAGSTER_PG_PASSWORD=change-me\n",
    }
    for name, text in samples.items():
        (tmp_path / name).write_text(text)
        assert scan(tmp_path / name), name
    fine = ("password: {env: DAGSTER_PG_PASSWORD}\nenvSecrets: [{name: pscb-postgresql}]\n"
            "existingSecret: pscb-postgresql\nvalueFrom: {secretKeyRef: {name: pscb-postgresql, key: "
            "postgresql-password}}\ngeneratePostgresqlPasswordSecret: false\nattribute: {baseline_token: pad}\n"
            "max_new_tokens_decision: 32\npostgres_password_secret: pscb-postgresql\n")
    (tmp_path / "fine.yaml").write_text(fine)
    assert scan(tmp_path / "fine.yaml") == []
