"""A Redis and a PostgreSQL that a test owns: started on free ports in temp directories, so a
test can restart, SIGKILL or stop them without touching the machine's shared services.

Redis: `redis-server` with AOF (`--appendonly yes --appendfsync everysec`), as production
should run it; a restart replays the AOF.

PostgreSQL: the Debian binaries in `/usr/lib/postgresql/<version>/bin` (not on PATH). `initdb`
and `postgres` refuse to run as root, so when the test runs as root both run as the `postgres`
system user (`runuser -u postgres --`) in a directory that user owns (`tempfile.mkdtemp`, then
`chown`: pytest's own tmp_path is private to root). Trust authentication on 127.0.0.1 only;
`fsync=off` because these tests kill the server, not the machine.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class PrivateRedis:
    """`redis-server` on a free port with AOF on; `url` stays the same across restarts."""

    def __init__(self, directory: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.binary is not None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--daemonize", "no"],
            stdout=open(self.dir / "redis.log", "ab"),  # noqa: SIM115 - handed to the child
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_ping()

    def _wait_ping(self, timeout: float = 30) -> None:
        import redis

        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return
                except redis.exceptions.RedisError:  # refused, or still loading its AOF
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise AssertionError(f"private redis on {self.port} did not answer in {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean shutdown (AOF flushed); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port; `dsn` stays the same across restarts."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        self.bin = Path(found[-1]).parent if found else None
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.root = Path(tempfile.mkdtemp(prefix="rtml-pg-"))
        self.data = self.root / "data"
        self._as_root = os.geteuid() == 0

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        assert self.bin is not None
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check)

    def init(self) -> None:
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "pg.log"), "-w", "start")
        deadline = time.monotonic() + 30
        while not _answers(self.port):
            assert time.monotonic() < deadline, "private postgres did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean (fast) shutdown: sessions are disconnected, nothing is lost."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def kill(self) -> None:
        """SIGKILL the postmaster (a crash; the next start runs crash recovery), and its children."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        os.kill(pid, signal.SIGKILL)
        for child in children:
            try:
                os.kill(int(child), signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while _answers(self.port):
            assert time.monotonic() < deadline, "killed postgres still listens"
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
