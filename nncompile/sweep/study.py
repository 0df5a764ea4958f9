"""The shared study: where it is stored, how workers join it, and how a dead worker's trial is failed.

Workers cooperate only through Optuna's storage, never through each other: a journal file
(``JournalStorage`` on ``JournalFileBackend``, whose lock file makes appends exclusive: a
:class:`~nncompile.sweep.lock.JournalLock`, which a killed worker does not leave held; on one
machine or a shared filesystem, the default) or an SQL database (``RDBStorage``: sqlite on
one machine, PostgreSQL or MySQL on a cluster). The study is created by whichever worker
comes first (``load_if_exists``).

A worker killed with its trial RUNNING cannot say so. Optuna's own heartbeat
(``heartbeat_interval``, ``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``) exists
for ``RDBStorage`` only, and compares the database's clock with the heartbeat's time; the
journal storage has none. So a worker keeps its own heartbeat for every storage alike: a
thread (:class:`Watch`) bumps a counter in the trial's system attrs every few seconds and
looks at the other RUNNING trials; one whose counter has not moved for ``stale_after``
seconds of the watcher's own monotonic clock (no clocks of two machines are compared) is set
to FAIL, and Optuna's ``RetryHeartbeatStaleTrialCallback`` enqueues its params again, so the
point of the space is still tried.
"""
from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import NNError
from .lock import JournalLock

BEAT = "nncompile:beat"          # the trial's heartbeat counter (a system attr)
STALE = "nncompile:stale"        # why a watcher failed a trial
STALE_AFTER = 60.0               # seconds without a heartbeat before a RUNNING trial is failed
MAX_RETRIES = 2                  # times a killed or interrupted trial's params are tried again
JOURNAL = "journal.log"          # the default storage's file, in the sweep directory


def optuna_module() -> Any:
    """Optuna, quietened (its INFO line per trial, its experimental warnings), or a clear error."""
    try:
        import optuna
    except ModuleNotFoundError as exc:
        if exc.name != "optuna":
            raise
        raise NNError("nncompile sweep needs Optuna, which is not installed: pip install 'nncompile[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def describe_storage(spec: str | None, out: Path) -> str:
    """The storage as a user reads it: a database URL as given, else the journal file's path."""
    return spec if spec is not None and "://" in spec else str(journal_path(spec, out))


def journal_path(spec: str | None, out: Path) -> Path:
    if spec is None:
        return out / JOURNAL
    return Path(spec[len("journal:"):] if spec.startswith("journal:") else spec)


def open_storage(spec: str | None, out: Path, say: Callable[[str], None] | None = None) -> Any:
    """An Optuna storage: ``sqlite:///FILE``, ``postgresql://...`` or another SQLAlchemy URL;
    otherwise (``journal:PATH``, a path, or None for OUT/journal.log) a journal file, locked
    by :class:`~nncompile.sweep.lock.JournalLock` (``say`` hears when it breaks a dead worker's lock)."""
    optuna = optuna_module()
    if spec is not None and "://" in spec:
        return _database(optuna, spec)
    path = journal_path(spec, out)
    if path.is_dir():
        raise NNError(f"--storage {path} is a folder: give a journal file (journal.log) or a database URL")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(str(path), lock_obj=JournalLock(path, say=say))
        return optuna.storages.JournalStorage(backend)
    except OSError as exc:
        raise NNError(f"cannot open the journal: {exc.strerror}", file=str(path)) from None
    except ValueError as exc:   # a line that is not Optuna's
        raise NNError(f"this file is not an Optuna journal ({exc})", file=str(path)) from None


def _database(optuna: Any, url: str, attempts: int = 5) -> Any:
    """RDBStorage on ``url``. Workers starting together on a new database race to create its
    tables (the loser sees "table ... already exists" or a UNIQUE constraint fail): it tries again."""
    from sqlalchemy.exc import DBAPIError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except ModuleNotFoundError as exc:
            raise NNError(f"--storage {url}: the database driver {exc.name} is not installed (pip install it)") \
                from None
        except Exception as exc:   # SQLAlchemy's errors: a bad URL, a server that does not answer, the race
            if attempt + 1 == attempts or not isinstance(exc, DBAPIError):
                raise NNError(f"--storage {url}: cannot open the database: {str(exc).splitlines()[0]}") from None
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def join_study(storage: Any, name: str, sampler: Any, pruner: Any, marks: dict[str, str]) -> Any:
    """The study ``name`` (created if it is new), checked to be the same sweep as this one:
    ``marks`` (the space, the model's text) must match what its first worker recorded."""
    optuna = optuna_module()
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    recorded = study.user_attrs
    for key, value in marks.items():
        if key not in recorded:
            study.set_user_attr(key, value)
        elif recorded[key] != value:
            what = key.split(":")[-1]
            raise NNError(f"study {name} was started with another {what} ({recorded[key][:80]!r}, now "
                          f"{value[:80]!r}): give the same, or another --study name")
    return study


def load_study(storage: Any, name: str | None) -> Any:
    """A study to show: ``name``, or the only study in the storage."""
    optuna = optuna_module()
    names = [s.study_name for s in storage.get_all_studies()]
    if name is None:
        if len(names) != 1:
            raise NNError("no study in this storage yet" if not names else
                          f"this storage holds several studies ({', '.join(names)}): pick one with --study")
        name = names[0]
    if name not in names:
        raise NNError(f"no study {name} in this storage" + (f"; there is {', '.join(names)}" if names else ""))
    return optuna.load_study(study_name=name, storage=storage)


class Watch:
    """This worker's heartbeat for its trial, and the watcher of the others' (see the module doc)."""

    def __init__(self, study: Any, stale_after: float = STALE_AFTER):
        self.study, self.stale_after = study, stale_after
        self.every = max(0.2, stale_after / 6)
        self.trial_id: int | None = None
        self.beats = 0
        self.seen: dict[tuple[int, Any], float] = {}   # (trial, its counter) -> when first seen so
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="nncompile-sweep-heartbeat", daemon=True)

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()

    def own(self, trial_id: int | None) -> None:
        """Beat for ``trial_id`` from now on (None: no trial of this worker runs)."""
        with self.lock:
            self.trial_id = trial_id
            if trial_id is not None:
                self._beat()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                with self.lock:
                    if self.trial_id is not None:
                        self._beat()
                self.reap()
            except Exception:   # a storage hiccup: try again at the next beat
                continue

    def _beat(self) -> None:
        self.beats += 1
        self.study._storage.set_trial_system_attr(self.trial_id, BEAT, self.beats)

    def reap(self) -> list[int]:
        """Fail the RUNNING trials whose heartbeat stood still for ``stale_after`` seconds, and
        enqueue each one's params again; returns their numbers."""
        optuna = optuna_module()
        now, failed = time.monotonic(), []
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for trial in running:
            if trial._trial_id == self.trial_id:
                continue
            since = self.seen.setdefault((trial._trial_id, trial.system_attrs.get(BEAT)), now)
            if now - since >= self.stale_after and self._fail(trial):
                failed.append(trial.number)
        alive = {(t._trial_id, t.system_attrs.get(BEAT)) for t in running}
        self.seen = {k: v for k, v in self.seen.items() if k in alive}
        return failed

    def _fail(self, trial: Any) -> bool:
        optuna = optuna_module()
        storage = self.study._storage
        try:
            storage.set_trial_system_attr(trial._trial_id, STALE, f"no heartbeat for {self.stale_after:g}s")
            if not storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL):
                return False
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            return False   # it finished meanwhile, or another watcher failed it first
        retry(self.study, storage.get_trial(trial._trial_id))
        return True


def retry(study: Any, trial: Any) -> None:
    """Enqueue a failed trial's params again (Optuna's own retry, which records the history),
    at most MAX_RETRIES times: a trial that kills its worker each time is given up."""
    optuna_module().storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)
