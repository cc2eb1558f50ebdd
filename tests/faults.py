"""Fault injection on services a test owns: a private `redis-server` on a free port.

The machine's Redis (6379) is shared by every engineer and CI: a test never stops, restarts or
reconfigures it. A fault test starts its own server here instead, points rtml at `url`, and
stops, kills or wipes it at will. The `private_redis` fixture (tests/conftest.py) hands out
these and stops whatever a test left running, even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: object, timeout: float, what: str, every: float = 0.05) -> float:
    """Poll `condition()` until it is truthy; returns the seconds it took (raises on timeout)."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if condition():  # type: ignore[operator]
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class PrivateRedis:
    """One `redis-server` of the test's own: AOF on (`appendonly=True`, fsync every second) or no
    persistence at all, data files in `dir`. Same port across restarts, so clients reconnect.

    `stop()` is a clean SHUTDOWN (AOF flushed), `kill()` a SIGKILL, `wipe()` deletes the data
    files (a Redis that lost its data while it was down); `start()` brings it back.
    """

    def __init__(self, dir: Path, *, appendonly: bool = True, port: int | None = None,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        assert REDIS_SERVER is not None, "redis-server is not installed"
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra = extra
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def args(self) -> list[str]:
        return [
            str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--protected-mode", "no", "--logfile", str(self.dir / "redis.log"), *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 20) -> PrivateRedis:
        assert not self.running, "already running"
        self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        wait_for(self.ping, timeout, f"private redis-server on port {self.port} to answer")
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def ping(self) -> bool:
        if not self.running:
            return False
        try:
            with self.client() as c:
                return bool(c.ping())
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop(self, timeout: float = 20) -> None:
        """A clean shutdown: SIGTERM makes Redis flush its AOF and exit."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: whatever was not fsynced yet is gone (up to one second with everysec)."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def wipe(self) -> None:
        """Delete the data files (only while stopped): the next start comes up empty."""
        assert not self.running, "wipe a stopped server"
        for path in self.dir.iterdir():
            if path.name != "redis.log":
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def restart(self, *, kill: bool = False, wipe: bool = False, down_s: float = 0.0) -> None:
        """Stop (or kill), optionally stay down `down_s` seconds and lose the data, start again."""
        self.kill() if kill else self.stop()
        if wipe:
            self.wipe()
        if down_s:
            time.sleep(down_s)  # the outage itself: its length is the fault, not a synchronisation
        self.start()
