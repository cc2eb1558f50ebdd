"""Fault injection on a PostgreSQL the test owns: a private cluster on a free port.

The machine's PostgreSQL (5432) is shared by every engineer and CI: a test never stops or
reconfigures it. A fault test makes its own cluster here instead (initdb + pg_ctl in a temp
dir, ~3 s), points rtml at `dsn`, and stops or kills it at will. initdb refuses root: as root
the binaries run as the `postgres` user (`runuser`), in a directory that user owns. The
`private_postgres` fixture (tests/conftest.py) hands one out and removes it afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One cluster of the test's own, same port across restarts so clients reconnect.

    `stop()` is a fast shutdown (clients cut off, nothing lost), `kill()` an immediate one (a
    crash: recovery from the WAL at the next start), `start()` brings it back.
    """

    def __init__(self) -> None:
        assert BIN is not None, "PostgreSQL server binaries are not installed"
        self.dir = Path(tempfile.mkdtemp(prefix="rtml-pg-"))
        self.port = _free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, f"{BIN}/{tool}", *args], check=True, capture_output=True, cwd=self.dir)

    def start(self) -> PrivatePostgres:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "start", "-w", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", options)
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "stop", "-w", "-D", str(self.dir / "data"), "-m", mode)

    def kill(self) -> None:
        self.stop("immediate")

    @property
    def running(self) -> bool:
        return (self.dir / "data" / "postmaster.pid").exists()

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def close(self) -> None:
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_until(condition: object, timeout: float, what: str, every: float = 0.1) -> float:
    """Poll `condition()` until truthy; the seconds it took (TimeoutError past `timeout`)."""
    start = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)
    return time.monotonic() - start
