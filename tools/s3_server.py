"""Run a local S3-compatible server (moto) on 127.0.0.1, from the command line or from tests.

    python tools/s3_server.py --port 9000      # runs until Ctrl-C, prints the variables to export

Tests use `local_s3_server()`, a context manager that starts `moto_server` on a free port, waits until
it answers, yields the endpoint URL and stops it again (also when the test fails; on Linux the server
also dies with its parent process, so a killed test run leaves no orphan). When the environment
variable WDSPQ_TEST_S3_ENDPOINT is set, that external endpoint (MinIO, AWS, ...) is yielded instead and
nothing is started; credentials then come from the usual AWS variables.

moto is installed by the project's `test` extra (`pip install -e '.[test]'`, see tools/setup.sh).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

EXTERNAL_ENDPOINT_VAR = "WDSPQ_TEST_S3_ENDPOINT"
HOST = "127.0.0.1"


def moto_server_command() -> list[str]:
    """The command that runs moto's standalone server with this Python.

    The `moto_server` entry script next to sys.executable is run by sys.executable itself, not through
    its shebang: a venv that was moved after creation keeps shebangs pointing at its old location.
    """
    exe = Path(sys.executable).parent / "moto_server"
    if exe.is_file():
        return [sys.executable, str(exe)]
    found = shutil.which("moto_server")
    if found:
        return [found]
    try:
        import moto.server  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "moto_server is not installed: run tools/setup.sh (installs the 'test' extra, moto[server])"
        ) from None
    return [sys.executable, "-m", "moto.server"]


def free_port(host: str = HOST) -> int:
    """A TCP port that is free right now (the caller retries if another process takes it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_answers(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `url` with HTTP GET until any HTTP answer comes back; raise if `proc` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the S3 server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                return
        except urllib.error.HTTPError:
            return  # an HTTP error status is still an answer
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the S3 server at {url} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


def _die_with_parent() -> None:
    """In the child before exec (Linux): get SIGTERM when the parent dies, so no server is orphaned."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextlib.contextmanager
def run_moto_server(port: int | None = None, host: str = HOST, log: str | os.PathLike | None = None,
                    attempts: int = 3) -> Iterator[str]:
    """Start moto_server on host:port (a free port when None), yield its endpoint URL, stop it on exit.

    The server's output goes to `log` (a path; "-" for this process's stdout), by default to a temporary
    file that is shown when the server fails to start.
    """
    cmd = moto_server_command()
    last_error: Exception | None = None
    for _ in range(attempts if port is None else 1):
        p = port or free_port(host)
        inherit = log == "-"
        log_file = open(os.devnull if inherit else log, "ab") if log else tempfile.TemporaryFile()  # noqa: SIM115
        proc = subprocess.Popen(
            [*cmd, "-H", host, "-p", str(p)],
            stdin=subprocess.DEVNULL, stdout=None if inherit else log_file,
            stderr=None if inherit else subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            url = f"http://{host}:{p}"
            try:
                wait_until_answers(url, proc=proc)
            except RuntimeError as exc:  # port taken between free_port and bind, or a broken install
                log_file.seek(0)
                tail = log_file.read()[-2000:].decode(errors="replace") if not log else ""
                last_error = RuntimeError(f"{exc}\n{' '.join(cmd)} output:\n{tail}")
                continue
            yield url
            return
        finally:
            _stop(proc)
            log_file.close()
    raise RuntimeError(f"could not start a local S3 server: {last_error}")


@contextlib.contextmanager
def local_s3_server() -> Iterator[str]:
    """Yield an S3 endpoint URL for tests: $WDSPQ_TEST_S3_ENDPOINT if set, else a fresh local moto."""
    external = os.environ.get(EXTERNAL_ENDPOINT_VAR)
    if external:
        yield external.rstrip("/")
        return
    with run_moto_server() as url:
        yield url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a local S3-compatible server (moto) until Ctrl-C.")
    parser.add_argument("--port", type=int, default=9000, help="TCP port (default 9000; 0 picks a free one)")
    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST})")
    parser.add_argument("--verbose", action="store_true", help="show the server's request log")
    args = parser.parse_args(argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)  # `kill PID` stops the server too, like Ctrl-C
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # background jobs of scripts ignore SIGINT
        signal.signal(signal.SIGINT, stop)
    try:
        with run_moto_server(args.port or None, args.host, log="-" if args.verbose else os.devnull) as url:
            print(f"S3 server (moto) listening on {url}\n"
                  f"export AWS_ENDPOINT_URL={url}\n"
                  f"export AWS_ACCESS_KEY_ID=testing\n"
                  f"export AWS_SECRET_ACCESS_KEY=testing\n"
                  f"export AWS_DEFAULT_REGION=us-east-1\n"
                  f"Buckets live in memory until the server stops. Ctrl-C to stop.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 0
    except RuntimeError as exc:
        print(f"s3_server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
