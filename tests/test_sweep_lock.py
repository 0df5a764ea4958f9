"""The journal's lock (nncompile/sweep/lock.py), with real processes: exclusive among them, broken
at once when its holder has died, kept while its holder lives, broken after the grace period when
the holder cannot be checked (another host's, or a lock of Optuna's own kind)."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nncompile.sweep.lock import JournalLock

FORK = multiprocessing.get_context("fork")


def add_under_the_lock(journal: str, times: int) -> None:
    """Read the count and write it back plus one, slowly enough that two unlocked writers collide."""
    lock = JournalLock(journal)
    for _ in range(times):
        lock.acquire()
        try:
            count = int(Path(journal).read_text())
            os.sched_yield()
            Path(journal).write_text(str(count + 1))
        finally:
            lock.release()


def hold_until_told(journal: str, held, go_on) -> None:
    lock = JournalLock(journal)
    lock.acquire()
    held.set()
    go_on.wait(60)
    lock.release()


def die_holding(journal: str) -> None:
    JournalLock(journal).acquire()
    os._exit(0)   # no release, no cleanup: as a SIGKILL leaves it


def test_processes_appending_under_the_lock_never_interleave(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    Path(journal).write_text("0")
    workers = [FORK.Process(target=add_under_the_lock, args=(journal, 50)) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * 4
    assert Path(journal).read_text() == "200"
    assert not os.path.lexists(journal + ".lock")


def test_a_lock_whose_holder_died_is_taken_over_at_once_and_said_so(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    dead = FORK.Process(target=die_holding, args=(journal,))
    dead.start()
    dead.join(60)
    assert os.path.lexists(journal + ".lock")
    said: list[str] = []
    lock = JournalLock(journal, grace=3600, say=said.append)   # no grace period can have run out
    lock.acquire()
    assert said == [f"note: {journal}.lock was held by process {dead.pid} of {os.uname().nodename}, which has "
                    "ended: taken over"]
    lock.release()
    assert not os.path.lexists(journal + ".lock")


@contextmanager
def held_by_another_process(journal: str) -> Iterator[tuple[multiprocessing.Process, Any]]:
    """A process holding the lock until the event yielded with it is set."""
    held, go_on = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=hold_until_told, args=(journal, held, go_on))
    holder.start()
    try:
        assert held.wait(60)
        yield holder, go_on
    finally:
        if holder.is_alive():
            os.kill(holder.pid, signal.SIGCONT)
        go_on.set()
        holder.join(60)


def test_a_live_holders_lock_is_waited_for_and_then_taken(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    with held_by_another_process(journal) as (holder, go_on):
        said: list[str] = []
        lock = JournalLock(journal, grace=3600, say=said.append)
        taken = threading.Event()
        waiter = threading.Thread(target=lambda: (lock.acquire(), taken.set()), daemon=True)
        waiter.start()
        assert not taken.wait(0.5), "the lock of a live process was broken"
        go_on.set()
        assert taken.wait(60) and said == []
        lock.release()


def test_a_suspended_holders_lock_is_broken_after_the_grace_period(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    with held_by_another_process(journal) as (holder, go_on):
        os.kill(holder.pid, signal.SIGSTOP)
        said: list[str] = []
        lock = JournalLock(journal, grace=0.3, say=said.append)
        lock.acquire()
        assert said == [f"note: {journal}.lock was held by process {holder.pid} of {os.uname().nodename}, "
                        "for 0.3s: taken over"]
        os.kill(holder.pid, signal.SIGCONT)
        go_on.set()
        holder.join(60)
        assert os.readlink(journal + ".lock") == lock.held, "the holder that resumed released a lock not its own"
        lock.release()


def test_a_lock_of_optunas_own_kind_left_behind_is_broken_after_the_grace_period(tmp_path: Path) -> None:
    """Optuna's JournalFileSymlinkLock links journal.log.lock to the journal: no holder named."""
    journal = str(tmp_path / "journal.log")
    os.symlink(journal, journal + ".lock")
    said: list[str] = []
    lock = JournalLock(journal, grace=0.2, say=said.append)
    lock.acquire()
    assert said == [f"note: {journal}.lock was held by a process that does not say which, for 0.2s: taken over"]
    lock.release()


def a_dead_holders_lock(journal: str) -> tuple[str, JournalLock]:
    """journal.log.lock naming a process of this host that has ended, and a lock object."""
    dead = FORK.Process(target=os._exit, args=(0,))
    dead.start()
    dead.join(60)
    lock = JournalLock(journal)
    name = " ".join(["nncompile", *lock.host, str(dead.pid), "deadbeef"])
    os.symlink(name, lock.path)
    return name, lock


def test_a_waiter_late_to_break_a_dead_holders_lock_leaves_the_new_holders_alone(tmp_path: Path, monkeypatch) -> None:
    """A reads the dead holder's name, B breaks that lock and takes it, then A breaks what it read:
    A must not set B's holding aside, where a third waiter C takes the lock before A gives it back."""
    journal = str(tmp_path / "journal.log")
    dead, a = a_dead_holders_lock(journal)
    b, c = JournalLock(journal), JournalLock(journal)
    assert a.ended(dead)
    b.acquire()
    symlink = os.symlink

    def c_first(target: str, path: str) -> None:
        if target == b.held:
            c.acquire()   # C links the free path in the instant B's holding is set aside
        symlink(target, path)

    monkeypatch.setattr(os, "symlink", c_first)
    assert not a.take_over(dead, "which has ended")
    monkeypatch.undo()
    assert c.held is None and os.readlink(a.path) == b.held
    taken = threading.Thread(target=c.acquire, daemon=True)
    taken.start()
    taken.join(0.3)
    assert taken.is_alive(), "C took a lock B holds"
    b.release()
    taken.join(60)
    assert os.readlink(a.path) == c.held
    c.release()
    assert os.listdir(tmp_path) == []


def test_waiters_break_a_dead_holders_lock_one_at_a_time(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    dead, a = a_dead_holders_lock(journal)
    b = JournalLock(journal)
    assert a._begin_breaking()   # A is breaking it
    assert not b.take_over(dead, "which has ended")
    assert os.readlink(a.path) == dead
    os.rmdir(a.breaking)
    assert b.take_over(dead, "which has ended") and not os.path.lexists(a.path)


def test_the_mutex_of_a_waiter_killed_while_breaking_is_removed_after_its_grace_period(tmp_path: Path) -> None:
    journal = str(tmp_path / "journal.log")
    dead, a = a_dead_holders_lock(journal)
    os.mkdir(a.breaking)   # as a breaker killed between taking the mutex and giving it back leaves it
    b = JournalLock(journal, grace=0.2)
    b.acquire()
    assert os.readlink(a.path) == b.held and not os.path.lexists(a.breaking)
    b.release()
