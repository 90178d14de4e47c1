"""One writer at a time for a local store: a lock file naming its owner, with a lease.

The lock is ``<store>/.hf_task2vec.lock``, created exclusively (``O_CREAT | O_EXCL``) and holding
JSON ``{pid, host, created, expires, purpose, token}``. While it is held a daemon thread renews the
lease (``expires``) every quarter lease. Another writer waits for it (logging who holds it) up to
``timeout`` seconds and then raises `StoreLockedError`. A lock is *stale*, and is removed, when its
owner is a process of this host that no longer exists, or when its lease ran out (an owner on
another host that stopped renewing). The lock is re-entrant within a process (a batch run holds it
for the whole run and its pushes take it again).

Hub stores need no lock file: each commit names the revision it was based on and the Hub refuses
a commit on a stale base (the store then reads again and retries).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from .errors import StoreLockedError

logger = logging.getLogger(__name__)

LOCK_NAME = ".hf_task2vec.lock"
DEFAULT_LEASE_S = 120.0


def default_timeout() -> float:
    """Seconds a writer waits for a busy store: ``HF_TASK2VEC_LOCK_TIMEOUT`` or 600."""
    raw = os.environ.get("HF_TASK2VEC_LOCK_TIMEOUT", "")
    try:
        return float(raw) if raw else 600.0
    except ValueError:
        logger.warning("HF_TASK2VEC_LOCK_TIMEOUT=%r is not a number; waiting 600 s", raw)
        return 600.0


_held: dict[Path, StoreLock] = {}
_held_guard = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class StoreLock:
    """The write lock of the store folder ``root`` (a context manager).

    Args:
        root: the store folder (created if missing).
        timeout: seconds to wait for another writer (default `default_timeout`); ``0``: do not wait.
        lease: seconds the lock stays valid without renewal (renewed every ``lease / 4``).
        purpose: a few words recorded in the lock (shown to a writer that waits).
    """

    def __init__(self, root: str | os.PathLike[str], *, timeout: float | None = None,
                 lease: float = DEFAULT_LEASE_S, purpose: str = "") -> None:
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.timeout = default_timeout() if timeout is None else float(timeout)
        self.lease = float(lease)
        self.purpose = purpose
        self.token = secrets.token_hex(8)
        self._depth = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outer: StoreLock | None = None

    # -- the owner record ---------------------------------------------------------------------
    def _record(self) -> bytes:
        now = time.time()
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "created": now,
                           "expires": now + self.lease, "purpose": self.purpose, "token": self.token}).encode()

    def _read(self) -> dict | None:
        try:
            owner = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) else None

    def _is_stale(self, owner: dict | None) -> bool:
        if owner is None:  # unreadable: stale only once it is older than a lease (a writer may be mid-write)
            try:
                return time.time() - self.path.stat().st_mtime > self.lease
            except FileNotFoundError:
                return True
        try:
            if owner.get("host") == socket.gethostname() and not _pid_alive(int(owner["pid"])):
                return True
            return time.time() > float(owner["expires"])
        except (KeyError, TypeError, ValueError):
            return False

    def _describe(self, owner: dict | None) -> str:
        if not owner:
            return f"an unreadable lock file {str(self.path)!r}"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("created", 0))))
        what = f" ({owner['purpose']})" if owner.get("purpose") else ""
        return f"pid {owner.get('pid')} on host {owner.get('host')}{what} since {since}"

    def _break(self, owner: dict | None) -> None:
        """Remove a stale lock, unless another process replaced it since it was judged stale (a
        short-lived ``.break`` file serialises the breakers)."""
        guard = self.path.with_name(LOCK_NAME + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - guard.stat().st_mtime > 30:
                    guard.unlink(missing_ok=True)  # a breaker died here
            except FileNotFoundError:
                pass
            return
        try:
            os.close(fd)
            if self._read() == owner or (owner is None and self._read() is None):
                self.path.unlink(missing_ok=True)
                logger.warning("removed the stale lock of store %s (held by %s)", self.root, self._describe(owner))
        finally:
            guard.unlink(missing_ok=True)

    # -- acquire / release ----------------------------------------------------------------------
    def acquire(self) -> StoreLock:
        with _held_guard:
            outer = _held.get(self.path.resolve() if self.root.exists() else self.path)
        if outer is not None and outer._depth > 0:  # re-entrant within this process
            outer._depth += 1
            self._outer = outer
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        announced = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner == {}:
                    continue  # released between our open and our read
                if self._is_stale(owner):
                    self._break(owner)
                    continue
                waited = time.monotonic() - start
                if waited >= self.timeout:
                    fix = (
                        "delete it if no hf_task2vec process is writing to this store"
                        if owner is None
                        else f"wait for it to finish, or if that process is gone delete {str(self.path)!r}"
                    )
                    raise StoreLockedError(
                        f"the store {str(self.root)!r} is being written by {self._describe(owner)} (lock file "
                        f"{LOCK_NAME}); gave up after waiting {waited:.0f} s: {fix} "
                        "(HF_TASK2VEC_LOCK_TIMEOUT sets how long to wait)"
                    ) from None
                if not announced:
                    logger.warning("store %s is locked by %s; waiting up to %.0f s", self.root,
                                   self._describe(owner), self.timeout)
                    announced = True
                time.sleep(min(0.5, max(0.05, self.timeout - waited)))
                continue
            try:
                os.write(fd, self._record())
            finally:
                os.close(fd)
            break
        self._depth = 1
        with _held_guard:
            _held[self.path.resolve()] = self
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="hf_task2vec-store-lock", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.lease / 4):
            owner = self._read()
            if not owner or owner.get("token") != self.token:
                logger.error("the lock of store %s was taken from this process (%s)", self.root,
                             self._describe(owner))
                return
            tmp = self.path.with_name(f"{LOCK_NAME}.{self.token}.tmp")
            try:
                tmp.write_bytes(self._record())
                os.replace(tmp, self.path)
            except OSError as exc:
                logger.warning("could not renew the lock of store %s: %s", self.root, exc)

    def release(self) -> None:
        if self._outer is not None:
            self._outer._depth -= 1
            self._outer = None
            return
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with _held_guard:
            _held.pop(self.path.resolve(), None)
        owner = self._read()
        if owner and owner.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def release_all() -> None:
    """Release every lock this process holds (called before a forced exit)."""
    with _held_guard:
        locks = list(_held.values())
    for lock in locks:
        lock._depth = 1
        lock.release()
