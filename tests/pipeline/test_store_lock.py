"""The store's run lock: one holder at a time across real processes, and which left-over locks are cleared."""
from __future__ import annotations

import json
import multiprocessing
import os
import random
import socket
import time
from pathlib import Path

import pytest

from accrete.pipeline import store as store_module
from accrete.pipeline.errors import StoreError
from accrete.pipeline.store import LOCK, UNREADABLE_LOCK_GRACE_SECONDS, Store

HOLDS_PER_WORKER = 30
STALE_LOCK_ROUNDS = 25
WORKER_DEADLINE_SECONDS = 120.0


# ----- helpers run in the worker processes ----------------------------------------------------------
def _mark(markers: str, text: str) -> None:
    with open(markers, "a") as handle:  # O_APPEND: each line lands whole
        handle.write(f"{text} {os.getpid()}\n")


def _hold_once(root: str, markers: str) -> bool:
    """Try the lock once; while holding it, leave enter/exit markers around a short critical section."""
    try:
        with Store(root).lock("test"):
            _mark(markers, "enter")
            time.sleep(random.uniform(0.001, 0.004))
            _mark(markers, "exit")
        return True
    except StoreError:
        return False


def _slow_lock_steps() -> None:
    """Widen the windows a racy lock would lose in: the lock file stays empty for a few milliseconds
    after its creation, and judging a lock stale takes a few milliseconds."""
    write_record, is_stale = store_module._write_lock_record, store_module._lock_is_stale

    def slow_write(fd, record):
        time.sleep(0.003)
        write_record(fd, record)

    def slow_is_stale(seen):
        verdict = is_stale(seen)
        time.sleep(random.uniform(0.0, 0.003))
        return verdict

    store_module._write_lock_record = slow_write
    store_module._lock_is_stale = slow_is_stale


def _contend(root: str, markers: str, start, holds: int) -> None:
    _slow_lock_steps()
    start.wait(60)  # both workers have imported the store: they start contending together
    deadline = time.monotonic() + WORKER_DEADLINE_SECONDS
    held = 0
    while held < holds and time.monotonic() < deadline:
        if _hold_once(root, markers):
            held += 1
        else:
            time.sleep(random.uniform(0.0, 0.002))


def _break_stale_locks(root: str, markers: str, index: int, barrier, dead_pid: int, rounds: int) -> None:
    """Each round, worker 0 leaves a dead run's lock, then every worker tries to take the store at once."""
    _slow_lock_steps()
    for _ in range(rounds):
        barrier.wait(60)
        if index == 0:
            _write_lock(Path(root) / LOCK, _dead_record(dead_pid))
        barrier.wait(60)
        _hold_once(root, markers)


# ----- helpers ----------------------------------------------------------------------------------------
def _write_lock(path: Path, content: dict | bytes, age_seconds: float = 0.0) -> None:
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(path, (then, then))


def _dead_record(pid: int) -> dict:
    # A start time no process has: the lock is stale even if the pid was handed to a new process since.
    return {"pid": pid, "host": socket.gethostname(), "start": "-1", "since": "x", "command": "killed"}


def _dead_pid() -> int:
    process = multiprocessing.get_context("spawn").Process(target=os.getpid)
    process.start()
    process.join()
    return process.pid


def _holders(markers: Path) -> list[int]:
    """The pid of each critical section, after checking that none overlapped another."""
    lines = markers.read_text().split() if markers.exists() else []
    events = list(zip(lines[0::2], map(int, lines[1::2])))
    holders = []
    for position in range(0, len(events), 2):
        enter, leave = events[position], events[position + 1] if position + 1 < len(events) else None
        assert enter[0] == "enter" and leave == ("exit", enter[1]), \
            f"two holders at once around event {position}: {events[max(0, position - 2):position + 4]}"
        holders.append(enter[1])
    return holders


def _join(processes: list) -> None:
    for process in processes:
        process.join(WORKER_DEADLINE_SECONDS + 60)
    assert all(process.exitcode == 0 for process in processes), [process.exitcode for process in processes]


# ----- two real processes -----------------------------------------------------------------------------
def test_two_processes_contending_for_the_lock_never_hold_it_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root, markers = tmp_path / "store", tmp_path / "markers.txt"
    start = ctx.Barrier(2)
    workers = [ctx.Process(target=_contend, args=(str(root), str(markers), start, HOLDS_PER_WORKER)) for _ in range(2)]
    for worker in workers:
        worker.start()
    _join(workers)
    holders = _holders(markers)
    assert sorted(set(holders)) == sorted(w.pid for w in workers)
    assert len(holders) == 2 * HOLDS_PER_WORKER
    assert not (root / LOCK).exists()


def test_processes_clearing_the_same_stale_lock_never_both_hold_the_store(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root, markers = tmp_path / "store", tmp_path / "markers.txt"
    root.mkdir()
    dead_pid, n_workers = _dead_pid(), 3
    barrier = ctx.Barrier(n_workers)
    workers = [ctx.Process(target=_break_stale_locks, args=(str(root), str(markers), i, barrier, dead_pid, STALE_LOCK_ROUNDS))
               for i in range(n_workers)]
    for worker in workers:
        worker.start()
    _join(workers)
    holders = _holders(markers)
    assert len(holders) >= STALE_LOCK_ROUNDS  # every round's stale lock was cleared and someone took the store
    assert not (root / LOCK).exists()


# ----- which left-over locks are cleared --------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b'{"pid": 12'], ids=["empty", "half-written"])
def test_a_fresh_unreadable_lock_is_not_cleared(tmp_path, content):
    """A lock is empty between its creation and the write of its record: its run is alive."""
    _write_lock(tmp_path / LOCK, content)
    with pytest.raises(StoreError, match="locked by another run"):
        with Store(tmp_path).lock("second run"):
            pass
    assert (tmp_path / LOCK).read_bytes() == content


@pytest.mark.parametrize("content", [b"", b'{"pid": 12'], ids=["empty", "half-written"])
def test_an_unreadable_lock_older_than_the_grace_period_is_cleared(tmp_path, content):
    _write_lock(tmp_path / LOCK, content, age_seconds=UNREADABLE_LOCK_GRACE_SECONDS + 30)
    with Store(tmp_path).lock("next run"):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists()


def test_a_lock_whose_process_is_gone_is_cleared(tmp_path):
    record = {**_dead_record(_dead_pid()), "start": None}  # no start time: only the pid can tell
    _write_lock(tmp_path / LOCK, record)
    with Store(tmp_path).lock("next run"):
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "next run"
    assert not (tmp_path / LOCK).exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_cleared(tmp_path):
    # This test's own pid is alive, but the lock records another process start time: a reused pid.
    _write_lock(tmp_path / LOCK, {"pid": os.getpid(), "host": socket.gethostname(), "start": "-1",
                                  "since": "x", "command": "before a reboot"})
    with Store(tmp_path).lock("next run"):
        assert json.loads((tmp_path / LOCK).read_text())["command"] == "next run"


def test_a_lock_whose_process_is_alive_is_never_cleared_however_old(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    alive = ctx.Process(target=time.sleep, args=(60,))
    alive.start()
    try:
        record = {"pid": alive.pid, "host": socket.gethostname(), "start": store_module._process_start(alive.pid),
                  "since": "x", "command": "long run"}
        _write_lock(tmp_path / LOCK, record, age_seconds=10 * UNREADABLE_LOCK_GRACE_SECONDS)
        with pytest.raises(StoreError, match=f"pid {alive.pid}"):
            with Store(tmp_path).lock("second run"):
                pass
        assert json.loads((tmp_path / LOCK).read_text()) == record
    finally:
        alive.kill()
        alive.join()


def test_a_lock_from_another_host_is_never_cleared(tmp_path):
    record = {**_dead_record(_dead_pid()), "host": socket.gethostname() + "-elsewhere"}
    _write_lock(tmp_path / LOCK, record, age_seconds=10 * UNREADABLE_LOCK_GRACE_SECONDS)
    with pytest.raises(StoreError, match="elsewhere"):
        with Store(tmp_path).lock("second run"):
            pass


def test_a_run_releases_only_its_own_lock(tmp_path):
    other = {"pid": 1, "host": socket.gethostname(), "start": None, "since": "x", "command": "other run"}
    with Store(tmp_path).lock("first run"):
        # Someone cleared our lock by hand and another run took the store: leaving must not free it.
        (tmp_path / LOCK).unlink()
        _write_lock(tmp_path / LOCK, other)
    assert json.loads((tmp_path / LOCK).read_text()) == other


def test_a_garbage_lock_names_no_made_up_holder_and_says_what_to_do(tmp_path):
    store = Store(tmp_path / "store")
    store.root.mkdir()
    (store.root / LOCK).write_text("garbage, not JSON")
    with pytest.raises(StoreError) as error:
        with store.lock("test"):
            pass
    message = str(error.value)
    assert "None" not in message, message
    assert f"{store.root / LOCK}: locked by another run, but the lock names no process" in message
    assert f"delete {store.root / LOCK}" in message and "cleared in" in message
    assert (store.root / LOCK).read_text() == "garbage, not JSON"


def test_a_store_path_that_is_a_file_is_one_store_error(tmp_path):
    path = tmp_path / "store"
    path.write_text("not a store")
    with pytest.raises(StoreError, match=f"{path}: not a directory"):
        with Store(path).lock("test"):
            pass
    assert path.read_text() == "not a store"


@pytest.fixture
def read_only_store(tmp_path):
    """A store directory nobody can create files in, root included: `chattr +i` (immutable) when running
    as root, where permission bits do not stop writes; mode 0o555 otherwise. Skipped when neither holds."""
    import subprocess

    root = tmp_path / "store"
    root.mkdir()
    immutable = os.geteuid() == 0
    if immutable:
        made = subprocess.run(["chattr", "+i", str(root)], capture_output=True)
        if made.returncode != 0:
            pytest.skip(f"running as root and cannot make a directory immutable: {made.stderr.decode().strip()}")
    else:
        root.chmod(0o555)
    try:
        try:
            (root / "probe").touch()
        except OSError:
            yield root
        else:
            pytest.skip("the directory is still writable (file system ignores the attribute)")
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(root)], check=False)
        else:
            root.chmod(0o755)


def test_a_read_only_store_is_one_store_error_naming_the_lock(read_only_store):
    with pytest.raises(StoreError, match=r"LOCK: cannot take the store lock: .*\(is the store read-only\?\)"):
        with Store(read_only_store).lock("test"):
            pass
    assert list(read_only_store.iterdir()) == []
