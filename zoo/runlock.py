"""One training run per run folder: ``train_all.py`` holds ``OUT/.train.lock`` while it runs.

The lock is an OS file lock (``filelock``: released by the kernel when the process dies, however it dies), and
``OUT/.train.lock.json`` says who holds it (process, host, start time, command), so a second run is refused with a
message naming the first, and a run that finds the record of one that died without releasing takes over with a note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from zoo.atomic import write_text

LOCK_NAME = ".train.lock"
HOLDER_NAME = ".train.lock.json"


class RunLocked(RuntimeError):
    """Another process holds the run folder; the message names it."""


def _holder(out: Path) -> dict | None:
    try:
        return json.loads((out / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None


def describe(h: dict | None) -> str:
    if not h:
        return "another process (no record of which)"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("started", 0)))
    return f"pid {h.get('pid')} on host {h.get('host')!r}, started {started} ({h.get('command', '?')})"


def _alive_here(h: dict) -> bool:
    """Whether the recorded holder is a live process on this host (unknown elsewhere: treated as alive)."""
    if h.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(h["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


@contextmanager
def run_lock(out: str | Path, say=print):
    """Hold ``out``'s lock for the ``with`` block; :class:`RunLocked` at once if another process holds it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(f"{out}: another train_all.py run is using this --out: {describe(_holder(out))}. Two runs on "
                        "one folder delete each other's checkpoints and mix their files: wait for it to finish, stop "
                        "it, or give another --out") from None
    try:
        old = _holder(out)
        if old is not None:  # we hold the OS lock, so its holder is gone: it ended without cleaning up
            why = "is no longer running" if not _alive_here(old) else "no longer holds the lock"
            say(f"note: {out}: taking over the lock of an earlier run that {why}: {describe(old)}")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}
        write_text(out / HOLDER_NAME, json.dumps(me))
        yield me
    finally:
        (out / HOLDER_NAME).unlink(missing_ok=True)
        lock.release()
