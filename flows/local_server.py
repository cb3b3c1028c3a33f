"""The local Prefect server the CLI keeps running between runs.

A manual `accrete nightly`, `backfill` or `retrain` is a recorded Prefect flow run. Prefect's own answer
when no server is configured is a temporary API: a new uvicorn process per CLI call that imports FastAPI
and SQLAlchemy, migrates its database and is torn down at exit, 5 to 20 s on two cores for a step whose
own work is a fraction of a second. Instead, the first run starts `prefect server start` once, detached,
and every later run reuses it: runs, states, logs and artifacts stay in PREFECT_HOME's database and in the
UI at the recorded address.

The server:

* runs in its own session (`start_new_session`) with stdin from /dev/null and stdout and stderr appended
  to ``PREFECT_HOME/accrete-server.log``, so it holds none of the CLI's pipes: a `kill -9` of the CLI (or
  of its process group) leaves nothing that keeps a caller's read of the CLI's output from ending;
* is recorded in ``PREFECT_HOME/accrete-server.json`` (pid, its kernel start time, port, URL, log) the
  moment it is spawned, so a CLI killed while it boots orphans nothing unknown;
* is health-checked (``GET /api/health``) before use; a record whose process is gone is replaced;
* is started by one CLI at a time (a `flock` on ``PREFECT_HOME/accrete-server.lock``): two runs started
  together share one server;
* stops with `accrete server stop` (SIGTERM to its process group, then SIGKILL).

A user's PREFECT_API_URL (environment, or the active profile in PREFECT_HOME/profiles.toml) wins: that
server is used and none is started. Disabling Prefect's temporary servers
(PREFECT_SERVER_EPHEMERAL_ENABLED=false) also disables this one.

Everything here runs before Prefect is imported (that import costs 1.5 s), so it uses the standard
library only, and sets PREFECT_API_URL in the environment for the Prefect code that follows.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

STATE_FILE = "accrete-server.json"
LOG_FILE = "accrete-server.log"
START_LOCK = "accrete-server.lock"

#: Seconds to wait for a starting server to answer, unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
#: says otherwise: it imports FastAPI and SQLAlchemy and migrates its database, 6-10 s on 2 idle cores and
#: several times that on a loaded machine.
STARTUP_SECONDS = 120.0
STOP_SECONDS = 10.0
REMEDY = "start one with `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api"


class PrefectAPIUnavailable(RuntimeError):
    """No Prefect API to run flows on: the local server did not start (twice), a configured one does not
    answer, or starting one is disabled and PREFECT_API_URL is not set. Not a bug and not a mistake in the
    user's data: the message says what to do (the CLI exits 1 with it)."""


@dataclass(frozen=True)
class ServerRecord:
    """What `accrete-server.json` holds about the server a CLI started."""

    pid: int
    process_start: str | None  # the kernel's start time of pid: a reused pid is not our server
    port: int
    url: str  # the API URL, http://127.0.0.1:PORT/api
    log: str
    started: str


# ----- settings read without Prefect -----------------------------------------------------------------
def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def configured_api_url() -> str | None:
    """The user's PREFECT_API_URL: the environment's, else the active profile's (as Prefect resolves it:
    PREFECT_PROFILES_PATH or PREFECT_HOME/profiles.toml, profile PREFECT_PROFILE or the file's `active`)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or prefect_home() / "profiles.toml").expanduser()
    try:
        profiles = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None  # no profiles (the usual case), or one Prefect itself will complain about
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    profile = (profiles.get("profiles") or {}).get(active) or {}
    value = profile.get("PREFECT_API_URL") if isinstance(profile, dict) else None
    return str(value) if value else None


def _falsy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def starting_allowed() -> bool:
    """False when the user turned Prefect's temporary servers off (they want no server started for them)."""
    return not (_falsy("PREFECT_SERVER_EPHEMERAL_ENABLED") or _falsy("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"))


def startup_seconds() -> float:
    text = os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")
    try:
        return float(text) if text else STARTUP_SECONDS
    except ValueError:
        return STARTUP_SECONDS


# ----- the record and the process --------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of a live (not zombie) process; None when there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def read_record(home: Path) -> ServerRecord | None:
    try:
        return ServerRecord(**json.loads((home / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # none, or not ours to read: treated as no server


def _write_record(home: Path, record: ServerRecord) -> None:
    tmp = home / f".{STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, home / STATE_FILE)


def _remove_record(home: Path, record: ServerRecord) -> None:
    if read_record(home) == record:
        with contextlib.suppress(FileNotFoundError):
            (home / STATE_FILE).unlink()


def is_alive(record: ServerRecord) -> bool:
    start = _process_start(record.pid)
    return start is not None and (record.process_start is None or start == record.process_start)


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def running_server(home: Path | None = None) -> ServerRecord | None:
    """The recorded server if it is alive and answers; None otherwise."""
    record = read_record(home or prefect_home())
    return record if record is not None and is_alive(record) and is_healthy(record.url) else None


@contextlib.contextmanager
def _start_lock(home: Path) -> Iterator[None]:
    """One CLI at a time checks and starts the server; the kernel drops the flock if that CLI dies."""
    fd = os.open(home / START_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(home: Path) -> ServerRecord:
    port = _free_port()
    log = home / LOG_FILE
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    # The CLI quiets Prefect's console for its own output; the server's log is a file worth reading.
    env["PREFECT_LOGGING_LEVEL"] = os.environ.get("ACCRETE_PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with open(log, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} accrete starts prefect server on port {port}\n"
                  .encode())
        out.flush()
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            close_fds=True)
    record = ServerRecord(pid=process.pid, process_start=_process_start(process.pid), port=port,
                          url=f"http://127.0.0.1:{port}/api", log=str(log),
                          started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    _write_record(home, record)
    return record  # not waited for: it outlives this CLI (init reaps it), or `_terminate` reaps it


def _wait_healthy(record: ServerRecord, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not is_alive(record):
            return False
        if is_healthy(record.url, timeout=min(2.0, max(0.1, deadline - time.monotonic()))):
            return True
        time.sleep(0.2)
    return False


def _terminate(record: ServerRecord, seconds: float = STOP_SECONDS) -> None:
    """SIGTERM to the server's process group (uvicorn and Prefect's services), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, seconds)):
        if not is_alive(record):
            break
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + wait
        while is_alive(record) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record.pid, os.WNOHANG)  # our own child (a failed start, `server stop` right after)
            time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(record.pid, signal.SIGKILL)  # anything its leader left behind


def ensure_server(home: Path | None = None, timeout: float | None = None,
                  on_start: Callable[[ServerRecord], None] | None = None) -> ServerRecord:
    """The local server, started (detached) when none answers; waits up to `timeout` seconds for it, and
    tries a second start once if the first does not answer in time.

    Raises:
        PrefectAPIUnavailable: it did not start, twice (the message names the log and the remedy).
    """
    home = home or prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    seconds = startup_seconds() if timeout is None else timeout
    with _start_lock(home):
        record = read_record(home)
        if record is not None and is_alive(record):
            # Another CLI may have started it a moment ago and been killed: give it the same time to boot.
            if _wait_healthy(record, seconds):
                return record
            _terminate(record)
        if record is not None:
            _remove_record(home, record)
        from accrete.flows import warm_runner

        warm_runner.stop(home)  # a runner of an earlier server would send its runs to a dead URL
        for _attempt in range(2):
            record = _spawn(home)
            if _wait_healthy(record, seconds):
                if on_start is not None:
                    on_start(record)
                return record
            _terminate(record)  # one that missed the limit would hold the port and the database
            _remove_record(home, record)
    raise PrefectAPIUnavailable(
        f"the local Prefect server did not start within {seconds:g} s, twice (the machine may be busy; its log: "
        f"{home / LOG_FILE}); {REMEDY}, or allow more time with PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")


def stop_server(home: Path | None = None) -> ServerRecord | None:
    """Stop the recorded server; returns its record, or None when none was running."""
    from accrete.flows import warm_runner

    home = home or prefect_home()
    if not home.is_dir():
        return None
    with _start_lock(home):
        warm_runner.stop(home)  # its runs need the server
        record = read_record(home)
        if record is None:
            return None
        alive = is_alive(record)
        _terminate(record)
        _remove_record(home, record)
    return record if alive else None


def use_prefect_api(on_start: Callable[[ServerRecord], None] | None = None) -> str:
    """Point this process's Prefect at an API before Prefect is imported, and return its URL: the user's
    PREFECT_API_URL when set (it must answer), else the local server (started if needed).

    Raises:
        PrefectAPIUnavailable: the configured API does not answer, the local server did not start, or
            starting one is disabled.
    """
    url = configured_api_url()
    if url:
        if not is_healthy(url, timeout=10.0):
            raise PrefectAPIUnavailable(f"the Prefect API at PREFECT_API_URL={url} does not answer ({url}/health); "
                                        f"start that server, or unset PREFECT_API_URL to let accrete run its own")
        return url
    if not starting_allowed():
        raise PrefectAPIUnavailable(f"no Prefect API: PREFECT_API_URL is not set and the temporary server is "
                                    f"disabled; {REMEDY}")
    record = ensure_server(on_start=on_start)
    os.environ["PREFECT_API_URL"] = record.url
    return record.url

