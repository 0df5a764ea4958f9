"""The journal's lock: a worker killed while it appends to the journal must not stall the others.

Optuna's ``JournalFileBackend`` appends under a lock file, by default a symbolic link made
with one atomic call (``JournalFileSymlinkLock``, which NFS honours too). A lock whose holder
was killed is released by its grace period of 30 s, measured on the mtime of the link's
target; but the target is the journal's path as given, and a relative one is read from the
link's own folder, where nothing is found: the lock is then never released, and every other
worker waits for ever (found with optuna 5.0: the killed-worker test of tests/test_sweep.py
timed out).

:class:`JournalLock` makes the lock the same way (the same file, journal.log.lock), with a
target naming its holder: the host, its boot, the pid namespace, the process and a token of
this one holding. A lock held by a process of this host that no longer exists is broken at
once. One held by another host's worker (or by a process that still exists: suspended, say)
is broken once the same holding has lasted :data:`GRACE` seconds of this worker's clock, as
Optuna does: an append takes milliseconds. Optuna's own lock objects have the same two
methods, ``acquire`` and ``release``, which are all the backend calls.

Breaking is a rename that no file system makes conditional, so breakers take turns under a
second lock (journal.log.lock.breaking, a folder) and rename only a link that still names the
holder they judged gone. A dead holder cannot change its link meanwhile; only a live one past
its grace period, releasing in the very instant it is broken, leaves a window (then its
successor's link is put back).
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

GRACE = 30.0          # seconds one holding may last before a waiter breaks it (Optuna's grace period)
MAX_WAIT = 0.05       # the longest sleep between two looks at a held lock
BREAK_GRACE = 5.0     # seconds the breakers' mutex may stay the same before it is thought left behind
MARK = "nncompile"    # the first word of a holder's name: a lock of another kind has an unknown holder


def _name_in(path: str) -> str:
    """The holder named by the lock at ``path``: a link's target, or a plain file's text."""
    try:
        return os.readlink(path)
    except FileNotFoundError:
        raise
    except OSError:
        return _read(path)   # a plain file (Optuna's JournalFileOpenLock): no holder named


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def this_host() -> tuple[str, str, str]:
    """(host name, boot id, pid namespace): a process named with the same three is one whose
    existence this process can check."""
    namespace = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        pass
    return socket.gethostname(), _read("/proc/sys/kernel/random/boot_id") or "-", namespace or "-"


class JournalLock:
    """An exclusive lock on ``journal`` for the processes (on any host) that append to it."""

    def __init__(self, journal: str | Path, *, grace: float = GRACE, say: Callable[[str], None] | None = None):
        self.path = f"{journal}.lock"
        self.breaking = f"{self.path}.breaking"
        self.grace, self.say = grace, say
        self.break_grace = min(grace, BREAK_GRACE)
        self._breaking_seen: tuple[tuple[int, int], float] | None = None   # (identity, first seen)
        self.host = this_host()
        self.held: str | None = None   # this holding's name, while this process holds the lock

    def name(self) -> str:
        return " ".join([MARK, *self.host, str(os.getpid()), uuid.uuid4().hex])

    def acquire(self) -> bool:
        """Wait for the lock and take it; a lock its holder can no longer release is broken."""
        mine = self.name()
        seen, since, wait = None, time.monotonic(), 0.001
        while True:
            try:
                os.symlink(mine, self.path)
                self.held = mine
                return True
            except FileExistsError:
                pass
            holder = self.holder()
            if holder is None:
                continue   # released meanwhile
            now = time.monotonic()
            if holder != seen:
                seen, since = holder, now
            why = "which has ended" if self.ended(holder) else \
                f"for {self.grace:g}s" if now - since >= self.grace else None
            if why is not None and self.take_over(holder, why):
                wait = 0.001
                continue
            time.sleep(wait)
            wait = min(2 * wait, MAX_WAIT)

    def release(self) -> None:
        """Give the lock up, unless another worker broke this holding (it lasted too long)."""
        try:
            if self.held is not None and os.readlink(self.path) == self.held:
                os.unlink(self.path)
        except OSError:
            pass   # broken and released meanwhile
        self.held = None

    def ended(self, holder: str) -> bool:
        """Whether ``holder`` is a process of this host that no longer exists."""
        words = holder.split(" ")
        if len(words) != 6 or words[0] != MARK or tuple(words[1:4]) != self.host or not words[4].isdigit():
            return False
        try:
            os.kill(int(words[4]), 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass   # it exists (another user's)
        return False

    def take_over(self, holder: str, why: str) -> bool:
        """Break the lock of ``holder`` if it still holds it; whether it was broken.

        Breakers take turns (:meth:`_begin_breaking`): without that, a waiter that read a dead
        holder's name could rename away the lock another waiter had just broken and taken."""
        if not self._begin_breaking():
            return False
        try:
            if self.holder() != holder:
                return False   # released, or broken by another waiter and taken since
            aside = f"{self.path}.{uuid.uuid4().hex}.broken"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return False   # its (live) holder released it just now
            taken = _name_in(aside)
            if taken != holder:   # a live holder released it and a new one took it in that instant
                try:
                    os.symlink(taken, self.path)
                except OSError:
                    pass
            os.unlink(aside)
        finally:
            with suppress(OSError):
                os.rmdir(self.breaking)
        if taken == holder and self.say is not None:
            self.say(f"note: {self.path} was held by {describe(holder)}, {why}: taken over")
        return taken == holder

    def holder(self) -> str | None:
        """The name the lock gives its holder; None when it is free."""
        try:
            return _name_in(self.path)
        except FileNotFoundError:
            return None

    def _begin_breaking(self) -> bool:
        """Take the breakers' mutex (a folder, made atomically), or say it is taken. One left by
        a breaker killed while breaking (which takes microseconds) is removed once it has stayed
        the same for :data:`BREAK_GRACE` seconds."""
        try:
            os.mkdir(self.breaking)
            return True
        except FileExistsError:
            pass
        try:
            stat = os.stat(self.breaking)
        except FileNotFoundError:
            return False
        seen, now = (stat.st_ino, stat.st_mtime_ns), time.monotonic()
        if self._breaking_seen is None or self._breaking_seen[0] != seen:
            self._breaking_seen = (seen, now)
        elif now - self._breaking_seen[1] >= self.break_grace:
            with suppress(OSError):
                os.rmdir(self.breaking)
            self._breaking_seen = None
        return False

def describe(holder: str) -> str:
    words = holder.split(" ")
    if len(words) == 6 and words[0] == MARK:
        return f"process {words[4]} of {words[1]}"
    return "a process that does not say which"
