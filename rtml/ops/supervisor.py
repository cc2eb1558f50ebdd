"""Process supervisor behind `rtml up`: starts the long-running components, restarts any that
die (with exponential backoff), and stops them cleanly on SIGTERM.

The supervisor is itself a detached process holding an exclusive lock on
`<data_dir>/run/supervisor.lock`, so a second `rtml up` finds it and starts nothing. Its view of
the components is written to `<data_dir>/run/state.json` for `rtml status`; each component
logs to `<data_dir>/logs/<name>.log`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rtml.config import Settings, get_settings

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 30.0
# A component that stays up this long has its backoff reset.
HEALTHY_AFTER_S = 30.0
STOP_TIMEOUT_S = 20.0


@dataclass
class Component:
    """One supervised process; `argv` is an rtml command line without the program name."""

    name: str
    argv: list[str]
    ready_url: str | None = None


@dataclass
class ComponentState:
    name: str
    argv: list[str]
    state: str = "starting"  # starting | running | backoff | finished | stopped
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    last_exit: int | None = None
    ready_url: str | None = None
    next_start: float = 0.0
    backoff_s: float = BACKOFF_START_S


@dataclass
class SupervisorState:
    pid: int
    started_at: float
    profile: str
    components: dict[str, ComponentState] = field(default_factory=dict)
    stopping: bool = False


def run_dir(settings: Settings) -> Path:
    return settings.folder("run")


def state_path(settings: Settings) -> Path:
    return run_dir(settings) / "state.json"


def lock_path(settings: Settings) -> Path:
    return run_dir(settings) / "supervisor.lock"


def read_state(settings: Settings) -> dict | None:
    try:
        return json.loads(state_path(settings).read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def supervisor_running(settings: Settings) -> int | None:
    """The supervisor's pid when one holds the lock, else None."""
    path = lock_path(settings)
    if not path.exists():
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            text = handle.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


class Supervisor:
    def __init__(self, settings: Settings, components: list[Component]) -> None:
        self.settings = settings
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.state = SupervisorState(pid=os.getpid(), started_at=time.time(), profile=settings.profile)
        for c in components:
            self.state.components[c.name] = ComponentState(c.name, c.argv, ready_url=c.ready_url)
        self.logs = settings.folder("logs")

    def _write_state(self) -> None:
        tmp = state_path(self.settings).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=1))
        tmp.replace(state_path(self.settings))

    def _start(self, comp: ComponentState) -> None:
        log = open(self.logs / f"{comp.name}.log", "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n--- start {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtml", *comp.argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ.copy(),
        )
        log.close()
        self.procs[comp.name] = proc
        comp.pid, comp.started_at, comp.state = proc.pid, time.time(), "running"

    def _reap(self, now: float) -> None:
        for name, proc in list(self.procs.items()):
            code = proc.poll()
            comp = self.state.components[name]
            if code is None:
                if comp.started_at and now - comp.started_at > HEALTHY_AFTER_S:
                    comp.backoff_s = BACKOFF_START_S
                continue
            del self.procs[name]
            comp.last_exit, comp.pid = code, None
            if code == 0:  # done its work (a replay reached its end): not a failure
                comp.state = "finished"
                continue
            comp.state, comp.next_start = "backoff", now + comp.backoff_s
            comp.backoff_s = min(comp.backoff_s * 2, BACKOFF_MAX_S)

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        for comp in self.state.components.values():
            self._start(comp)
        self._write_state()
        while not self.state.stopping:
            now = time.time()
            self._reap(now)
            for comp in self.state.components.values():
                if comp.state == "backoff" and now >= comp.next_start and not self.state.stopping:
                    comp.restarts += 1
                    self._start(comp)
            self._write_state()
            time.sleep(0.2)
        self._stop_all()

    def _on_stop(self, signum: int, frame: object) -> None:
        self.state.stopping = True

    def _stop_all(self) -> None:
        """SIGTERM every child so it commits its work, then SIGKILL what outlives the timeout."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.time() + STOP_TIMEOUT_S
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            comp = self.state.components[name]
            comp.state, comp.pid, comp.last_exit = "stopped", None, proc.returncode
        for comp in self.state.components.values():
            comp.state = "stopped"
        self._write_state()


def main() -> None:
    """Entry point of the detached supervisor: `python -m rtml.ops.supervisor SPEC_JSON`."""
    settings = get_settings()
    handle = open(lock_path(settings), "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit("another supervisor already runs for this data directory")
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    spec = json.loads(sys.argv[1])
    Supervisor(settings, [Component(**c) for c in spec]).run()


if __name__ == "__main__":
    main()
