"""S24: the manager against a plain model, on every backend, under hypothesis's stateful testing.

Rules save (from a fresh or a stale base), queue edits, flush, crash and reopen (queued
edits are lost, nothing else), go offline and online (saves park in the outbox and
replay on sync), roll back, and apply optimistic changes. After every step, every
user's load equals the model's head, and the newest versions in history equal the
model's list. Users include ids that differ only by case, by Unicode width, or that
look like paths.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from dashpersist import (
    ConflictError,
    Layout,
    PersistenceConfig,
    PersistenceManager,
    StorageUnavailableError,
    Widget,
)
from dashpersist.storage import DocumentKey, Storage
from dashpersist.testing import FakeClock, FaultyStorage
from tests.conftest import BACKENDS, backend_params

USERS = ["alice", "bob", "Alice", "../x", "\uff41\uff4c\uff49\uff43\uff45"]
titles = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


def board(title: str) -> Layout:
    return Layout(widgets=[Widget(id="w1", type="chart", title=title, w=4, h=2)])


class ManagerMachine(RuleBasedStateMachine):
    """One manager over one real store, checked against a model of confirmed versions."""

    storage: Storage
    outbox: Path

    def __init__(self) -> None:
        super().__init__()
        self.namespace = uuid.uuid4().hex[:8]  # examples share one store: keep them apart
        self.faulty = FaultyStorage(self.storage)
        self.clock = FakeClock()
        self.confirmed: dict[str, list[str]] = {user: [] for user in USERS}
        self.queued: dict[str, str] = {}
        self.parked: dict[str, list[str]] = {user: [] for user in USERS}
        self.counter = 0
        self.pm = self._open()

    def unique(self, title: str) -> str:
        # Every save carries new content, so "unchanged" (covered by unit tests) never
        # depends on what happens to be cached.
        self.counter += 1
        return f"{title}#{self.counter}"

    def _open(self) -> PersistenceManager:
        config = PersistenceConfig(
            outbox_dir=self.outbox / self.namespace,
            retry_attempts=1,
            enable_conflict_resolution=False,
            auto_save_delay=5,
            auto_save_max_wait=20,
        )
        return PersistenceManager(
            self.faulty,
            config=config,
            timer=self.clock,
            sleep=self.clock.sleep,
            start_threads=False,
        )

    def user(self, name: str) -> str:
        return f"{self.namespace}:{name}"

    def head(self, name: str) -> str | None:
        if name in self.queued:
            return self.queued[name]
        if self.parked[name]:
            return self.parked[name][-1]
        return self.confirmed[name][-1] if self.confirmed[name] else None

    def _record_write(self, name: str, title: str, source: str) -> None:
        if source == "outbox":
            self.parked[name].append(title)
        elif source == "storage":
            self.confirmed[name].append(title)

    @rule(name=st.sampled_from(USERS), title=titles)
    def save_fresh(self, name: str, title: str) -> None:
        self.queued.pop(name, None)  # an immediate save supersedes a queued one
        previous = self.head(name)
        if not self.faulty.is_offline:
            self.pm.load_layout(self.user(name))  # a fresh base
        result = self.pm.save_layout(self.user(name), board(title), immediate=True)
        if previous == title and not self.parked[name]:
            # Unchanged is known from the cache even offline; without it, it is parked.
            assert result.source in (
                ("unchanged", "outbox") if self.faulty.is_offline else ("unchanged",)
            )
        elif self.faulty.is_offline:
            assert result.source == "outbox"
        else:
            assert result.source == "storage"
        self._record_write(name, title, result.source)

    @precondition(lambda self: not self.faulty.is_offline)
    @rule(name=st.sampled_from(USERS), title=titles)
    def save_from_a_stale_base(self, name: str, title: str) -> None:
        if len(self.confirmed[name]) < 2 or self.parked[name] or name in self.queued:
            return
        with pytest.raises(ConflictError):
            self.pm.save_layout(self.user(name), board(title), immediate=True, base_version=1)

    @rule(name=st.sampled_from(USERS), title=titles)
    def queue_edit(self, name: str, title: str) -> None:
        title = self.unique(title)
        result = self.pm.save_layout(self.user(name), board(title))
        assert result.source == "queued"
        self.queued[name] = title

    @rule()
    def flush(self) -> None:
        results = self.pm.flush()
        assert len(results) == len(self.queued)
        for name, title in sorted(self.queued.items()):
            if self.faulty.is_offline:
                self.parked[name].append(title)
            else:  # a write replays what waits in the outbox first
                self.confirmed[name].extend(self.parked[name])
                self.parked[name] = []
                self.confirmed[name].append(title)
        self.queued.clear()

    @rule()
    def crash_and_reopen(self) -> None:
        for name in list(self.queued):  # the debounce window dies with the process
            self.pm._autosave.discard((self.pm_key(name), None))
        self.queued.clear()
        self.pm.close()
        self.pm = self._open()

    def pm_key(self, name: str) -> DocumentKey:
        return DocumentKey(self.user(name))

    @rule()
    def go_offline(self) -> None:
        self.faulty.go_offline()

    @precondition(lambda self: self.faulty.is_offline)
    @rule()
    def go_online_and_sync(self) -> None:
        self.faulty.go_online()
        for name in USERS:
            if self.parked[name] or name in self.queued:
                self.pm.sync(self.user(name))
                self.confirmed[name].extend(self.parked[name])
                self.parked[name] = []
                if name in self.queued:
                    self.confirmed[name].append(self.queued.pop(name))

    @precondition(lambda self: not self.faulty.is_offline)
    @rule(name=st.sampled_from(USERS), data=st.data())
    def rollback(self, name: str, data: st.DataObject) -> None:
        history = self.confirmed[name]
        if not history or self.parked[name] or name in self.queued:
            return
        version = data.draw(st.integers(1, len(history)))
        self.pm.rollback_to_version(self.user(name), version)
        history.append(history[version - 1])

    @invariant()
    def loads_equal_the_model(self) -> None:
        for name in USERS:
            try:
                loaded = self.pm.load_layout(self.user(name))
            except StorageUnavailableError:
                # Offline, a document neither cached nor pending cannot be read: loudly.
                assert self.faulty.is_offline, name
                continue
            head = self.head(name)
            assert (None if loaded is None else loaded.widget("w1").title) == head, name

    @precondition(lambda self: not self.faulty.is_offline)
    @invariant()
    def history_equals_the_model(self) -> None:
        for name in USERS:
            expected = self.confirmed[name]
            history = self.pm.get_version_history(self.user(name), limit=3)
            assert [v.version for v in history] == list(range(len(expected), 0, -1))[:3], name
            for info in history:
                version = self.pm.get_version(self.user(name), info.version)
                assert version.widget("w1").title == expected[info.version - 1], name

    def teardown(self) -> None:
        self.queued.clear()
        self.faulty.go_online()
        self.pm.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params(list(BACKENDS)))
def test_the_manager_agrees_with_a_model(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    storage = BACKENDS[backend](request, tmp_path)
    machine: Callable[[], ManagerMachine] = type(
        "Machine", (ManagerMachine,), {"storage": storage, "outbox": tmp_path / "outbox"}
    )
    try:
        run_state_machine_as_test(machine)
    finally:
        storage.close()


class JournalMachine(RuleBasedStateMachine):
    """Optimistic changes: the view is always the confirmed state plus the pending changes."""

    storage: Storage
    outbox: Path

    def __init__(self) -> None:
        super().__init__()
        self.user = f"{uuid.uuid4().hex[:8]}:journal"
        self.faulty = FaultyStorage(self.storage)
        clock = FakeClock()
        config = PersistenceConfig(
            outbox_dir=self.outbox / self.user.split(":")[0],
            retry_attempts=1,
            enable_conflict_resolution=False,
        )
        self.pm = PersistenceManager(
            self.faulty, config=config, timer=clock, sleep=clock.sleep, start_threads=False
        )
        self.pm.save_layout(self.user, board("start"), immediate=True)
        self.confirmed = "start"
        self.pending: list[str] = []
        self.outcomes: dict[str, list[str]] = {}
        self.counter = 0

    @rule(title=titles, immediate=st.booleans())
    def apply(self, title: str, immediate: bool) -> None:
        self.counter += 1
        title = f"{title}#{self.counter}"
        record = self.outcomes.setdefault(title, [])
        view = self.pm.apply(
            self.user,
            lambda layout: layout.update_widget("w1", title=title),
            immediate=immediate,
            on_success=lambda result: record.append("success"),
            on_error=lambda error: record.append("error"),
            on_rollback=lambda: record.append("rollback"),
        )
        assert view.widget("w1").title == title
        if immediate:
            self.confirmed, self.pending = title, []
        else:
            self.pending.append(title)

    @rule()
    def confirm(self) -> None:
        self.pm.flush()
        if self.pending:
            self.confirmed, self.pending = self.pending[-1], []

    @rule()
    def fail(self) -> None:
        self.faulty.fail_next(
            "write",
            error=lambda: ConflictError(
                DocumentKey(self.user), expected_version=1, actual_version=99, message="no"
            ),
        )
        self.pm.flush()
        if not self.pending:
            self.faulty.clear_faults()
        self.pending = []  # every pending change was in the refused write

    @rule()
    def reload(self) -> None:
        assert self.pm.load_layout(self.user) is not None

    @invariant()
    def the_view_is_confirmed_plus_pending(self) -> None:
        loaded = self.pm.load_layout(self.user)
        assert loaded is not None
        expected = self.pending[-1] if self.pending else self.confirmed
        assert loaded.widget("w1").title == expected
        assert len(self.pm.pending(self.user)) == len(self.pending)

    @invariant()
    def every_change_is_settled_once(self) -> None:
        for title, outcome in self.outcomes.items():
            assert outcome in ([], ["success"], ["error", "rollback"]), title
            if title in self.pending:
                assert outcome == [], title

    def teardown(self) -> None:
        self.faulty.clear_faults()
        self.pm.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params(list(BACKENDS)))
def test_optimistic_changes_agree_with_a_model(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    storage = BACKENDS[backend](request, tmp_path)
    machine: Callable[[], JournalMachine] = type(
        "Machine", (JournalMachine,), {"storage": storage, "outbox": tmp_path / "outbox"}
    )
    try:
        run_state_machine_as_test(machine)
    finally:
        storage.close()
