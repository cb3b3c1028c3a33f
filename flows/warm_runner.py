"""The warm runner: a process that has already imported Prefect and the pipeline, and forks one child per CLI run.

With the local Prefect server already running, a `nightly` through the CLI still paid about four seconds
before and around its fraction of a second of work: importing Prefect (1.4 s), the flows and pipeline
(0.8 s), and Plotly's first figure (1.3 s of lazy validator imports for the dashboard). The runner pays
them once. A CLI run that passed its checks connects to it over a Unix socket and hands over its argv,
working directory, environment and its own stdin, stdout and stderr (file descriptors, SCM_RIGHTS); the
runner forks a child that takes those descriptors as its own and runs `cli.main(argv)`, exactly what the
CLI would have run in-process. The flow run is recorded on the same Prefect server. The CLI relays
SIGTERM and Ctrl-C to the child and exits with the child's exit code.

What keeps this safe:

* the parent never starts a thread or a Prefect client (it only imports), so a forked child is an
  ordinary fresh process as far as Prefect is concerned;
* the child watches its connection: when the CLI goes away (`kill -9`), the child kills itself at once,
  so nothing keeps running on the store and nothing holds the dead CLI's pipes (the caller's read ends);
  once it has reported its exit code it lets go of the CLI's descriptors before Prefect's exit-time
  flush;
* a CLI uses the runner only when the runner was started from the same interpreter, the same package
  files (path, modification times) and the same PREFECT_*/ACCRETE_*/TF_*/thread settings
  (`fingerprint`); otherwise it runs in-process as before, and replaces a runner whose code changed;
* only a process of the same user may connect (SO_PEERCRED), on a socket in a 0700 directory.

The runner is started in the background by a CLI run that found none (that run itself runs in-process),
recorded in PREFECT_HOME/accrete-runner.json, and stopped with the local server (`accrete server stop`).
`ACCRETE_WARM_RUNNER=0` turns it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

RECORD_FILE = "accrete-runner.json"
LOG_FILE = "accrete-runner.log"
ENV_SWITCH = "ACCRETE_WARM_RUNNER"
#: Set in the environment a CLI hands over: the child may skip the checks the CLI already made.
CHECKED_ENV = "ACCRETE_RUN_CHECKED"
_FINGERPRINT_PREFIXES = ("PREFECT_", "ACCRETE_", "TF_", "PYTHON", "OMP_", "OPENBLAS_", "MKL_", "LD_")
_FINGERPRINT_EXCLUDED = (CHECKED_ENV, ENV_SWITCH)


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def _code_files() -> list[Path]:
    package = Path(__file__).resolve().parent.parent  # flows/ -> the repository or site-packages root
    files: list[Path] = []
    for name in ("pipeline", "models", "flows"):
        with contextlib.suppress(OSError):
            files += sorted((package / name).glob("*.py"))
    return files


def fingerprint() -> str:
    """What a runner's imports depend on: interpreter, import path, package files, import-time settings."""
    digest = hashlib.sha256()
    digest.update(sys.executable.encode())
    # sys.path[0] is the script's directory or the working directory (`python -m`), not where accrete is.
    digest.update("\0".join(sys.path[1:]).encode())
    for path in _code_files():
        with contextlib.suppress(OSError):
            stat = path.stat()
            digest.update(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode())
    digest.update(b"\0code\0")
    code = digest.hexdigest()[:16]
    env = sorted((k, v) for k, v in os.environ.items()
                 if k.startswith(_FINGERPRINT_PREFIXES) and k not in _FINGERPRINT_EXCLUDED)
    # Prefect also reads settings from these files in the working directory when it is imported.
    local = []
    for name in ("prefect.toml", "pyproject.toml", ".env"):
        with contextlib.suppress(OSError):
            stat = Path(name).stat()
            local.append((name, stat.st_mtime_ns, stat.st_size))
    return code + ":" + hashlib.sha256(json.dumps([env, local]).encode()).hexdigest()[:16]


def socket_path(home: Path) -> Path:
    """A short path (a Unix socket name is limited to 107 bytes) in a directory only this user can enter."""
    directory = Path(f"/tmp/accrete-runner-{os.getuid()}")
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    return directory / (hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:20] + ".sock")


def read_record(home: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((home / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def ready_record(home: Path) -> dict[str, Any] | None:
    """The runner's record once it is alive and listening; None before (or without one)."""
    record = read_record(home)
    if record is None or record.get("socket") is None or not _alive(record["pid"], record.get("start")):
        return None
    return record


def _alive(pid: int, start: str | None) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)


def _process_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def stop(home: Path) -> bool:
    """Stop the runner of this Prefect home (and any run it is executing); True when one was running."""
    record = read_record(home)
    with contextlib.suppress(FileNotFoundError):
        (home / RECORD_FILE).unlink()
    if record is None or not _alive(record["pid"], record.get("start")):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record["pid"], sig)
        deadline = time.monotonic() + 5
        while _alive(record["pid"], record.get("start")) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(record["pid"], os.WNOHANG)
            time.sleep(0.05)
        if not _alive(record["pid"], record.get("start")):
            break
    return True


def start_in_background(home: Path, mine: str) -> None:
    """Start a runner for this home and the current settings, detached, without waiting for it to be ready.
    It is recorded at once (without a socket), so runs in the meantime neither wait nor start another."""
    with open(home / LOG_FILE, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "accrete.flows.warm_runner", str(home)],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, close_fds=True, env=dict(os.environ))
    _write_record(home, {"pid": process.pid, "start": _process_start(process.pid), "socket": None,
                         "fingerprint": mine, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _write_record(home: Path, record: dict[str, Any]) -> None:
    tmp = home / f".{RECORD_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, home / RECORD_FILE)


@contextlib.contextmanager
def _record_lock(home: Path) -> Iterator[None]:
    """Two CLIs that find no runner at the same moment start one, not two."""
    import fcntl

    fd = os.open(home / f"{RECORD_FILE}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ----- the CLI's side ----------------------------------------------------------------------------------
def run(home: Path, argv: list[str]) -> int | None:
    """Run `accrete ARGV` in a child of the warm runner and return its exit code; None when there is no
    usable runner (the caller then runs in-process; a runner is started for next time when none matches)."""
    if not enabled():
        return None
    mine = fingerprint()
    with _record_lock(home):
        record = read_record(home)
        alive = record is not None and _alive(record["pid"], record.get("start"))
        if record is not None and alive and record.get("fingerprint", "").split(":")[0] != mine.split(":")[0]:
            stop(home)  # its code is stale: replace it
            alive = False
        if record is None or not alive:
            start_in_background(home, mine)
            return None
    if record.get("socket") is None or record.get("fingerprint") != mine:
        return None  # still starting, or started for other settings: this run happens in-process
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(str(record["socket"]))
    except OSError:
        connection.close()
        return None
    with connection:
        request = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": {**os.environ, CHECKED_ENV: "1"}}).encode()
        try:
            socket.send_fds(connection, [struct.pack("!I", len(request)) + request], [0, 1, 2])
        except OSError:  # e.g. the CLI was started with stdin closed: nothing to hand over, run here
            return None
        return _wait_for_child(connection)


def _wait_for_child(connection: socket.socket) -> int:
    """Relay SIGTERM and Ctrl-C to the child until it reports its exit code."""
    reader = connection.makefile("rb")
    hello = reader.readline()
    if not hello:
        return _lost()
    child = int(json.loads(hello)["pid"])

    def relay(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    previous = {sig: signal.signal(sig, relay) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        line = reader.readline()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return int(json.loads(line)["exit"]) if line else _lost()


def _lost() -> int:
    print("accrete: error: the run's process ended without an exit code (killed?); the store keeps its last "
          "published version", file=sys.stderr)
    return 1


# ----- the runner's side -------------------------------------------------------------------------------
def _warm_up() -> None:
    """Import what a run needs and let Plotly load its validators, without starting a thread."""
    import accrete.flows.cli  # noqa: F401
    import accrete.flows.flows  # noqa: F401
    import accrete.pipeline.dashboard  # noqa: F401
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("a", "b"))
    figure.add_trace(go.Scatter(x=["2024-01-01"], y=[1.0], mode="lines+markers", name="a", line={"dash": "dot"},
                                marker={"size": 4}, hovertemplate="%{y}", showlegend=True), row=1, col=1)
    figure.add_trace(go.Bar(x=["2024-01-01"], y=[1], name="b", marker={"color": "#888"}), row=2, col=1)
    figure.add_hline(y=1.0, line_dash="dash", row=1, col=1)
    figure.add_vline(x="2024-01-01", line_dash="dot")
    figure.update_layout(title="warm-up", height=300, legend={"orientation": "h"}, margin={"l": 40},
                         hovermode="x unified", template="plotly_white")
    figure.update_xaxes(title_text="date", type="date")
    figure.update_yaxes(title_text="value", rangemode="tozero")
    figure.to_html(include_plotlyjs=False, full_html=False)
    assert threading.active_count() == 1, "a thread before fork would be lost in every child"


def serve(home: Path) -> None:
    _warm_up()
    path = socket_path(home)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    _write_record(home, {"pid": os.getpid(), "start": _process_start(os.getpid()), "socket": str(path),
                         "fingerprint": fingerprint(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(f"runner {os.getpid()} ready on {path}", flush=True)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            _child(connection)  # never returns
        connection.close()


def _receive(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    data, fds, _flags, _address = socket.recv_fds(connection, 65536, 3)
    if len(data) < 4 or len(fds) != 3:
        raise ValueError("malformed request")
    size = struct.unpack("!I", data[:4])[0]
    body = data[4:]
    while len(body) < size:
        chunk = connection.recv(size - len(body))
        if not chunk:
            raise ValueError("truncated request")
        body += chunk
    return json.loads(body), fds


def _child(connection: socket.socket) -> None:
    """One run: become the CLI process (its descriptors, directory, environment), run, report, exit."""
    code = 1
    try:
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1]
        if uid != os.getuid():
            os._exit(1)
        request, fds = _receive(connection)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        connection.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
        done = threading.Event()

        def watch() -> None:
            # The CLI only ever closes its end: EOF before we are done means it was killed.
            with contextlib.suppress(OSError):
                connection.recv(1)
            if not done.is_set():
                os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, daemon=True).start()
        from accrete.flows import cli

        sys.argv = ["accrete", *request["argv"]]
        try:
            code = cli.main(request["argv"])
        except SystemExit as exc:  # argparse's usage errors and --help
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        except BaseException:
            traceback.print_exc()
            code = 1
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        done.set()
        connection.sendall(json.dumps({"exit": code}).encode() + b"\n")
    except BaseException:
        with contextlib.suppress(Exception):
            traceback.print_exc()
    finally:
        # Let go of the CLI's descriptors before Prefect flushes its logs at exit: the caller's read ends now.
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.dup2(devnull, target)
    sys.exit(code)


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
