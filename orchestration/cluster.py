"""A Dask cluster on this machine for Dagster's steps: one scheduler and N workers, one GPU slot each.

    python -m orchestration.cluster up --workers 2     # prints the DASK_SCHEDULER_ADDRESS to export
    python -m orchestration.cluster down
    python -m orchestration.cluster certs DIR          # a CA and the cluster's certificate, for TLS

Each worker is one process with one thread (Dagster steps are not thread-safe) and the Dask resource
GPU=1, so it runs one compute step at a time; on a machine with GPUs worker i sees only GPU i
(CUDA_VISIBLE_DEVICES), so N GPUs are N slots; without GPUs the workers split the CPU cores
(OMP_NUM_THREADS). Workers start in this directory with this environment
plus PSCB_EXECUTOR=dask, so they load the same code location (and PSCB_PARAMS) as the daemon.

Everything listens on 127.0.0.1 only: the scheduler, each worker and its nanny, and their HTTP servers
(health and metrics; the Bokeh dashboards only with --dashboard). A worker runs whatever it is sent and
Dask does not authenticate plain TCP, so nothing else on the network may reach it. Between machines the
cluster speaks TLS or nothing: `certs DIR` makes a CA and one certificate signed by it, and with
PSCB_DASK_TLS_DIR=DIR `up` starts a tls:// cluster that refuses any peer without that certificate (the
executor and `python -m orchestration.backfill` read the same variable); `up --host ADDR` (the scheduler
and the local workers on ADDR) and `join tls://ADDR:8786` (workers on another machine, DIR copied there)
refuse a non-loopback address without it. docs/security.md lists every port.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from orchestration.executor import GPU_RESOURCE, TLS_DIR_ENV, TLS_FILES, ClusterUnavailable, connect, tls_dir

STATE = Path(".cluster")  # pids and logs of `up`, for `down`; ignored by git
LOOPBACK = "127.0.0.1"
DASHBOARD_PORT = 8787  # Dask's default; taken, the scheduler picks another and says so in its log


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def dask_command(name: str) -> list[str]:
    return [sys.executable, "-m", f"distributed.cli.dask_{name}"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere


def check_host(host: str, env: Mapping[str, str]) -> None:
    """Plain TCP only on loopback (a Dask worker runs the functions it is sent, and Dask authenticates
    nobody on TCP), and one interface, never all of them."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        raise SystemExit(f"error: --host {host!r} listens on every interface; give the one address of this "
                         f"machine that the other hosts reach")
    if not is_loopback(host) and tls_dir(env) is None:
        raise SystemExit(f"error: {host} is not a loopback address, and a Dask cluster without TLS runs code for "
                         f"anyone who reaches it: `python -m orchestration.cluster certs DIR`, then "
                         f"{TLS_DIR_ENV}=DIR (docs/security.md)")


def tls_arguments(env: Mapping[str, str]) -> list[str]:
    folder = tls_dir(env)
    if folder is None:
        return []
    return ["--tls-ca-file", str(folder / TLS_FILES["ca"]), "--tls-cert", str(folder / TLS_FILES["cert"]),
            "--tls-key", str(folder / TLS_FILES["key"])]


def cluster_env(env: Mapping[str, str] | None, address: str) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    folder = tls_dir(env)
    if folder is not None:
        env[TLS_DIR_ENV] = str(folder)  # absolute, for every process that inherits it
    env.update(PSCB_EXECUTOR="dask", DASK_SCHEDULER_ADDRESS=address)
    return env


def worker_commands(address: str, workers: int, folder: Path, env: dict[str, str], host: str = LOOPBACK,
                    dashboard: bool = False, named: bool = True) -> list[tuple[list[str], dict[str, str], str]]:
    """`dask worker` processes (each a nanny and its worker) listening on `host`, HTTP on 127.0.0.1;
    named worker-i, or (joining another machine's scheduler, where names must be unique) by address."""
    gpus = gpu_count()
    if not gpus and "OMP_NUM_THREADS" not in env:  # CPU workers split the cores instead of each taking all
        env = {**env, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // workers))}
    commands = []
    for i in range(workers):
        worker_env = {**env, "CUDA_VISIBLE_DEVICES": str(i)} if gpus else env
        commands.append((dask_command("worker") + [
            address, *(["--name", f"worker-{i}"] if named else []), "--nthreads", "1",
            "--resources", f"{GPU_RESOURCE}=1", "--memory-limit", "0",
            "--local-directory", str(folder / f"worker-{i}"), "--host", host,
            "--dashboard-address", f"{LOOPBACK}:0", "--dashboard" if dashboard else "--no-dashboard",
            *tls_arguments(env)], worker_env, f"worker-{i}"))
    return commands


def launch(commands: list[tuple[list[str], dict[str, str], str]], folder: Path) -> list[int]:
    folder.mkdir(parents=True, exist_ok=True)
    pids = []
    for command, command_env, name in commands:
        with open(folder / f"{name}.log", "ab") as log:
            pids.append(subprocess.Popen(command, env=command_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True).pid)
    return pids


def start(workers: int, port: int, folder: Path, env: Mapping[str, str] | None = None, *, host: str = LOOPBACK,
          dashboard: bool = False) -> tuple[str, list[int]]:
    """Scheduler and workers as background processes logging into `folder`; returns (address, pids).

    The scheduler and the workers listen on `host` alone (loopback unless PSCB_DASK_TLS_DIR is set), every
    HTTP server on 127.0.0.1; the Bokeh dashboards only with `dashboard` (the scheduler's on port 8787)."""
    check_host(host, os.environ if env is None else env)
    protocol = "tls" if tls_dir(env) else "tcp"
    address = f"{protocol}://{host}:{port}"
    env = cluster_env(env, address)
    scheduler = dask_command("scheduler") + [
        "--host", host, "--port", str(port), "--protocol", protocol,
        "--dashboard-address", f"{LOOPBACK}:{DASHBOARD_PORT if dashboard else 0}",
        "--dashboard" if dashboard else "--no-dashboard", *tls_arguments(env)]
    commands = [(scheduler, env, "scheduler"), *worker_commands(address, workers, folder, env, host, dashboard)]
    return address, launch(commands, folder)


def wait_for_workers(address: str, workers: int, timeout_s: float = 120, env: Mapping[str, str] | None = None
                     ) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with connect(address, 5, env) as client:
                client.wait_for_workers(workers, timeout=max(1.0, deadline - time.monotonic()))
                return
        except Exception:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{workers} Dask workers did not join {address} in {timeout_s:.0f}s") from None
            time.sleep(1)


def stop(pids: list[int]) -> None:
    """SIGTERM each process group (started with start_new_session), SIGKILL what is left after 20 s."""
    for pid in reversed(pids):  # workers first, so none reconnects to a new scheduler
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_cluster(workers: int, port: int, folder: Path, env: dict[str, str] | None = None, *,
                  dashboard: bool = False) -> Iterator[str]:
    """A cluster for the length of a `with` (tests, benchmarks): yields the scheduler address."""
    address, pids = start(workers, port, folder, env, dashboard=dashboard)
    try:
        wait_for_workers(address, workers, env=env)
        yield address
    finally:
        stop(pids)


def dashboard_url(address: str) -> str | None:
    with connect(address, 5) as client:
        port = client.scheduler_info(n_workers=0).get("services", {}).get("dashboard")
    return f"http://{LOOPBACK}:{port}/status" if port else None


def make_certs(folder: Path, days: int = 365) -> None:
    """A CA and one certificate (with its key) that it signs, for every member of one cluster: the
    scheduler, the workers and the clients present it and accept only peers that present it. The CA's
    key is not kept: no further certificate can be signed, and a new `certs` replaces the set."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    # a name of its own: a peer looks its issuer up by name, so two clusters' CAs must not share one
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"pscb dask cluster CA {secrets.token_hex(8)}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pscb dask cluster member")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = serialization.Encoding.PEM
    (folder / TLS_FILES["ca"]).write_bytes(ca.public_bytes(pem))
    (folder / TLS_FILES["cert"]).write_bytes(cert.public_bytes(pem))
    descriptor = os.open(folder / TLS_FILES["key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def record(pid_file: Path, address: str, pids: list[int], workers: int, env: Mapping[str, str]) -> int:
    pid_file.write_text(json.dumps({"address": address, "pids": pids}))
    try:
        wait_for_workers(address, workers, env=env)
    except TimeoutError as err:
        stop(pids)
        pid_file.unlink()
        print(f"error: {err}; logs in {STATE}/", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return command(argv)
    except ClusterUnavailable as err:  # a TLS folder without its files, a scheduler that does not answer
        print(f"error: {err}", file=sys.stderr)
        return 1


def command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down", "join", "certs"])
    parser.add_argument("target", nargs="?", help="join: the scheduler's tls:// address; certs: the folder")
    parser.add_argument("--workers", type=int, help="default: one per GPU, or 1")
    parser.add_argument("--port", type=int, default=8786)
    parser.add_argument("--host", default=LOOPBACK,
                        help="up, join: the address the scheduler and workers listen on (default 127.0.0.1; "
                             "any other needs PSCB_DASK_TLS_DIR)")
    parser.add_argument("--dashboard", action="store_true",
                        help="the Bokeh dashboards (on 127.0.0.1); without it only health and metrics are served")
    parser.add_argument("--force", action="store_true", help="certs: replace the certificates in the folder")
    args = parser.parse_args(argv)
    pid_file = STATE / "pids.json"
    if args.action == "certs":
        if not args.target:
            parser.error("certs needs a folder: python -m orchestration.cluster certs DIR")
        folder = Path(args.target)
        if any((folder / name).exists() for name in TLS_FILES.values()) and not args.force:
            print(f"error: {folder} already holds certificates (--force replaces them, and every host then "
                  f"needs the new ones)", file=sys.stderr)
            return 1
        make_certs(folder)
        print(f"{folder}/: {', '.join(TLS_FILES.values())} (keep {TLS_FILES['key']} private: whoever holds it is a "
              f"member of the cluster). Then, on every machine (the folder copied there):\n"
              f"  export {TLS_DIR_ENV}={folder.resolve()}")
        return 0
    if args.action == "down":
        if not pid_file.exists():
            print("no cluster started from this directory", file=sys.stderr)
            return 1
        stop(json.loads(pid_file.read_text())["pids"])
        pid_file.unlink()
        print("cluster stopped")
        return 0
    if pid_file.exists():
        print(f"a cluster is already up ({pid_file}); `python -m orchestration.cluster down` first", file=sys.stderr)
        return 1
    workers = args.workers or max(1, gpu_count())  # only `up` and `join` pay for importing torch
    if args.action == "join":
        if not args.target:
            parser.error("join needs the scheduler's address: python -m orchestration.cluster join tls://HOST:8786")
        from distributed.comm import get_address_host

        check_host(args.host, os.environ)
        if is_loopback(args.host) != is_loopback(get_address_host(args.target)):
            parser.error("--host: the address of this machine that the scheduler reaches")
        with connect(args.target, 10) as client:  # it answers, to these certificates (or says why not)
            before = len(client.scheduler_info(n_workers=-1)["workers"])
        env = cluster_env(None, args.target)
        commands = worker_commands(args.target, workers, STATE, env, args.host, args.dashboard, named=False)
        pids = launch(commands, STATE)
        if record(pid_file, args.target, pids, before + workers, env):
            return 1
        print(f"{workers} workers on {args.host} joined {args.target} (logs in {STATE}/)")
        return 0
    address, pids = start(workers, args.port, STATE, host=args.host, dashboard=args.dashboard)
    if record(pid_file, address, pids, workers, cluster_env(None, address)):
        return 1
    tls = f" {TLS_DIR_ENV}={tls_dir()}" if tls_dir() else ""
    print(f"{workers} workers at {address} (logs in {STATE}/). For Dagster:\n"
          f"  export PSCB_EXECUTOR=dask DASK_SCHEDULER_ADDRESS={address}{tls}")
    if args.dashboard:
        print(f"dashboard: {dashboard_url(address)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
