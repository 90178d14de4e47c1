"""Worker processes of a launch end soon after their launcher dies.

``accelerate launch`` / ``torchrun`` start each worker in its own session, so a SIGKILL of the
launcher's process group (a scheduler, the OOM killer) does not reach them: they would finish the
batch as orphans while a rerun writes the same store. `die_with_launcher` makes a worker exit
within about a second of its parent's death: on Linux the kernel sends it SIGKILL
(``prctl(PR_SET_PDEATHSIG)``), and everywhere a daemon thread polls the parent pid. Store locks
held by the worker are released first when the thread sees it (a SIGKILL leaves them stale, and
the next writer recovers a stale lock).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

logger = logging.getLogger(__name__)

_started = False
LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def launched() -> bool:
    """Whether this process was started by a distributed launcher (torchrun / accelerate launch)."""
    return any(os.environ.get(k) for k in LAUNCHER_ENV)


def die_with_launcher(poll_s: float = 0.5, *, force: bool = False) -> bool:
    """Exit when the parent process dies (only under a launcher unless ``force``). Returns whether
    the watch was started; calling it again does nothing."""
    global _started
    if _started or not (force or launched()):
        return False
    parent = os.getppid()
    if parent == 1:
        return False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError) as exc:  # no prctl: the thread below still watches
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable: %s", exc)
    if os.getppid() != parent:  # it died before the watch was set up
        _orphaned(parent)

    def watch() -> None:
        while True:
            threading.Event().wait(poll_s)
            if os.getppid() != parent:
                _orphaned(parent)

    threading.Thread(target=watch, name="hf_task2vec-lifeline", daemon=True).start()
    _started = True
    return True


def _orphaned(parent: int) -> None:
    logger.error("the launcher (pid %d) is gone: process %d stops", parent, os.getpid())
    try:
        from .locking import release_all

        release_all()
    finally:
        os._exit(143)
