"""Three-way merge of JSON documents edited on two devices, with a report of every conflict.

`ConflictResolver.resolve` merges ``local`` and ``remote``, two edits of one ``base``:

- Objects merge key by key, recursively. A key added on one side is kept; removed on one
  side and untouched on the other, it is removed.
- Lists of objects with unique ``"id"`` values merge by identity: items added on either
  side are kept, an item deleted on one side and untouched on the other is deleted, and an
  item's fields merge recursively. Order: see `_merge_order`.
- Any other list is a value: if only one side changed it, that side's list is taken.
- A value changed on both sides to different values is a conflict, resolved by a path
  policy or by ``prefer``. A deletion against a change keeps the change unless a policy
  says otherwise. Every conflict is reported with all three values, so the losing value is
  never dropped.
- Overlapping widgets that neither side had (each moved something into the same cell) are
  repaired by moving the later widget down, and reported.

Conflict paths are JSON Pointers (RFC 6901) in which an item of an id-keyed list is named
by its id rather than its index (``/widgets/w1/title``): indexes differ between the three
versions, ids do not. The rules, with examples, are in ``docs/merging.md``.
"""

from __future__ import annotations

import enum
import itertools
import operator
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypeAlias, cast

import orjson
from pydantic import BaseModel

from dashpersist._sequences import longest_increasing_run
from dashpersist.errors import ConfigurationError, ValidationError, ValidationIssue
from dashpersist.types import JsonObject, JsonValue

__all__ = [
    "MISSING",
    "Conflict",
    "ConflictKind",
    "ConflictResolver",
    "MergePolicy",
    "MergeResult",
    "MergeStrategy",
    "Missing",
    "Prefer",
    "Suggestion",
    "detect_conflict",
    "policies_from_model",
    "suggest_resolution",
]

Prefer: TypeAlias = Literal["local", "remote", "newest"]
"""Which side wins a conflict no policy governs."""

MergeStrategy: TypeAlias = Literal["merge", "local", "remote"]
"""Merge both sides, or take one side whole (still reporting what differed on both)."""

ConflictKind: TypeAlias = Literal["changed_both", "deleted_changed", "order", "overlap"]
"""What collided: a value changed on both sides, a deletion against a change, the order of
an id-keyed list, or widgets the merge made overlap."""

Document: TypeAlias = JsonObject | BaseModel
_Side: TypeAlias = Literal["local", "remote"]
_Segment: TypeAlias = str | int
_Path: TypeAlias = tuple[_Segment, ...]
_Key = typing.TypeVar("_Key", str, _Segment)
_SideItems: TypeAlias = tuple[
    Mapping[_Segment, JsonValue], Mapping[_Segment, JsonValue], Mapping[_Segment, JsonValue]
]
"""The items of an id-keyed list in base, local and remote, by id."""
_get_id = cast(typing.Callable[[JsonValue], _Segment], operator.itemgetter("id"))


class Missing(enum.Enum):
    """The type of `MISSING`."""

    MISSING = "missing"

    def __repr__(self) -> str:
        return "MISSING"


MISSING = Missing.MISSING
"""A value that does not exist in that version: a key not present or an item deleted."""

_Value: TypeAlias = JsonValue | Missing


class MergePolicy(enum.StrEnum):
    """How a path resolves when both sides changed it differently.

    A policy set on a path also governs everything below it (the deepest matching pattern
    wins).
    """

    LAST_WRITER_WINS = "last_writer_wins"
    """The side with the later timestamp wins, as ``prefer="newest"`` does."""
    UNION = "union"
    """For lists: keep the items added on either side, drop those removed on either side;
    no conflict is reported. Other values fall back to ``prefer``."""
    MANUAL = "manual"
    """A person must decide: the ``prefer`` winner is kept provisionally and the conflict is
    flagged ``manual``."""
    PREFER_LOCAL = "prefer_local"
    """The local side wins, deletions included."""
    PREFER_REMOTE = "prefer_remote"
    """The remote side wins, deletions included."""


@dataclass(frozen=True, slots=True)
class Conflict:
    """One path both sides changed differently, and what the merge decided.

    ``base``, ``local`` and ``remote`` hold the three versions' values (`MISSING` where a
    version has none) and ``chosen`` the value the result holds, so the losing value is
    always here. For an ``order`` conflict the values are the lists of ids in order; for an
    ``overlap`` repair they are the widget's ``y`` and ``chosen`` is where it was moved.
    ``manual`` is true when a ``manual`` policy governs the path: ``chosen`` is provisional
    and the host should ask the user.
    """

    path: str
    base: _Value
    local: _Value
    remote: _Value
    chosen: _Value
    reason: str
    kind: ConflictKind = "changed_both"
    manual: bool = False


@dataclass(frozen=True, slots=True)
class MergeResult:
    """The merged document and the conflicts met on the way, in path order."""

    layout: JsonObject
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def has_conflicts(self) -> bool:
        """Whether anything was decided by a rule rather than merged cleanly."""
        return bool(self.conflicts)

    @property
    def has_manual_conflicts(self) -> bool:
        """Whether some conflict waits for a person (a ``manual`` policy governed it)."""
        return any(conflict.manual for conflict in self.conflicts)


@dataclass(frozen=True, slots=True)
class Suggestion:
    """A strategy to pass to `ConflictResolver.resolve`, and why, in words for the user."""

    strategy: MergeStrategy
    reason: str


class ConflictResolver:
    """Merge two edits of one document three-way, by rules and per-path policies.

    ``prefer`` decides conflicts no policy governs. The default, ``"newest"``, keeps the
    change with the later timestamp; when the times are equal or not given, it keeps the
    value whose canonical JSON sorts higher. Like CouchDB's winning revision, that choice
    does not depend on which device synced first. ``"local"`` and ``"remote"`` always pick
    that side.

    ``policies`` map path patterns to a `MergePolicy`. A pattern is dotted
    (``"theme"``, ``"widgets[*].x"``, ``"filters.*"``) or a JSON Pointer (``"/widgets/*/x"``);
    ``*`` and ``[*]`` match any one key or list item and ``[w1]`` the item with id ``w1``.
    ``repair_overlaps`` turns the widget overlap repair on or off.
    """

    def __init__(
        self,
        *,
        prefer: Prefer = "newest",
        policies: Mapping[str, MergePolicy] | None = None,
        repair_overlaps: bool = True,
    ) -> None:
        if prefer not in ("local", "remote", "newest"):
            raise ConfigurationError(
                f"prefer must be 'local', 'remote' or 'newest', not {prefer!r}"
            )
        self.prefer: Prefer = prefer
        self.repair_overlaps = repair_overlaps
        self._policies = _PolicyTable(policies or {})

    @classmethod
    def for_model(
        cls,
        model: type[BaseModel],
        *,
        prefer: Prefer = "newest",
        policies: Mapping[str, MergePolicy] | None = None,
        repair_overlaps: bool = True,
    ) -> ConflictResolver:
        """Return a resolver using the policies *model* declares (see `policies_from_model`).

        Entries in *policies* override the model's for the same pattern.
        """
        declared = policies_from_model(model)
        declared.update(policies or {})
        return cls(prefer=prefer, policies=declared, repair_overlaps=repair_overlaps)

    def resolve(
        self,
        base: Document,
        local: Document,
        remote: Document,
        strategy: MergeStrategy = "merge",
        *,
        local_time: datetime | None = None,
        remote_time: datetime | None = None,
    ) -> MergeResult:
        """Merge *local* and *remote*, two edits of *base*, and report the conflicts.

        ``strategy="local"`` or ``"remote"`` returns that side whole, still reporting every
        path both sides changed differently. Pydantic models are dumped to JSON first. For
        speed the result is not a deep copy: it shares unchanged values with the inputs
        (which are never changed), so copy it before changing it in place. *local_time* and
        *remote_time* (both naive or both aware) say when each side was edited, for
        ``prefer="newest"`` and ``last_writer_wins``. Raises `ValidationError` if a
        document is not a JSON object.
        """
        if strategy not in ("merge", "local", "remote"):
            raise ConfigurationError(
                f"strategy must be 'merge', 'local' or 'remote', not {strategy!r}"
            )
        base_doc, local_doc, remote_doc = _as_json(base), _as_json(local), _as_json(remote)
        forced: _Side | None = None if strategy == "merge" else strategy
        run = _MergeRun(self.prefer, self._policies, local_time, remote_time, forced)
        merged = run.merge_value((), base_doc, local_doc, remote_doc)
        if forced is not None:
            merged = local_doc if forced == "local" else remote_doc
        layout = dict(cast(JsonObject, merged))
        conflicts = run.conflicts
        if forced is None and self.repair_overlaps:
            conflicts += _repair_overlaps(layout, run.widget_merge)
        conflicts.sort(key=_conflict_order)
        return MergeResult(layout, conflicts)


def detect_conflict(
    base_version: int | None,
    base_checksum: str | None,
    current_version: int | None,
    current_checksum: str | None,
    new_checksum: str,
) -> bool:
    """Return whether writing *new_checksum* over the current document needs a merge.

    A write started from *base_version*; the store now holds *current_version*. The store
    moving on is not enough: if the current content equals the base (nothing to merge) or
    the new content (an identical concurrent change), or the writer changed nothing, there
    is no conflict. ``None`` means "no document".
    """
    if current_version == base_version and current_checksum == base_checksum:
        return False
    return len({base_checksum, current_checksum, new_checksum}) == 3


def suggest_resolution(
    base: Document,
    local: Document,
    remote: Document,
    *,
    resolver: ConflictResolver | None = None,
) -> Suggestion:
    """Return the strategy that keeps the most of both edits, with a reason a user can read.

    *resolver* (default: a plain `ConflictResolver`) supplies the policies used to find
    conflicts.
    """
    base_doc, local_doc, remote_doc = _as_json(base), _as_json(local), _as_json(remote)
    if _same(local_doc, remote_doc):
        return Suggestion("local", "both devices made the same change")
    if _same(base_doc, remote_doc):
        return Suggestion("local", "the other device changed nothing; your version is current")
    if _same(base_doc, local_doc):
        return Suggestion("remote", "you changed nothing; the other device's version is current")
    theirs = _describe_changes(base_doc, remote_doc)
    yours = _describe_changes(base_doc, local_doc)
    result = (resolver or ConflictResolver()).resolve(base_doc, local_doc, remote_doc)
    repairs = [conflict for conflict in result.conflicts if conflict.kind == "overlap"]
    clashes = [conflict.path for conflict in result.conflicts if conflict.kind != "overlap"]
    summary = f"the other device {theirs}; you {yours}"
    if clashes:
        shown = ", ".join(clashes[:3]) + (
            f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        )
        return Suggestion(
            "merge",
            f"{summary}: both changed {shown}; merging keeps every other change "
            "and records both values of each conflict for review",
        )
    if repairs:
        return Suggestion(
            "merge", f"{summary}: merging is safe; {len(repairs)} overlapping widget(s) move down"
        )
    return Suggestion("merge", f"{summary}: merging is safe")


def policies_from_model(model: type[BaseModel]) -> dict[str, MergePolicy]:
    """Return the merge policies *model* declares, keyed by path pattern.

    A field declares one with ``Annotated``: ``tags: Annotated[list[str], MergePolicy.UNION]``.
    Fields holding a model, or a list of models (``widgets: list[Widget]`` gives
    ``widgets[*].x``), are searched too.
    """
    found: dict[str, MergePolicy] = {}
    _collect_policies(model, "", found, seen=set())
    return found


# --- the merge -------------------------------------------------------------------------


class _MergeRun:
    """The state of one `resolve` call: its options, clock and the conflicts found."""

    def __init__(
        self,
        prefer: Prefer,
        policies: _PolicyTable,
        local_time: datetime | None,
        remote_time: datetime | None,
        forced: _Side | None,
    ) -> None:
        self.prefer = prefer
        self.policies = policies
        self.local_time = local_time
        self.remote_time = remote_time
        self.forced = forced
        self.conflicts: list[Conflict] = []
        self.widget_merge: _WidgetMerge | None = None
        """What the merge of the top-level ``widgets`` lists saw, for the overlap repair."""

    def merge_value(self, path: _Path, base: _Value, local: _Value, remote: _Value) -> _Value:
        if _same(local, remote) or _same(base, remote):
            return local
        if _same(base, local):
            return remote
        if local is MISSING or remote is MISSING:
            return self._deletion_against_change(path, base, local, remote)
        return self._merge_changed_both(path, base, local, remote)

    def _merge_changed_both(
        self, path: _Path, base: _Value, local: JsonValue, remote: JsonValue
    ) -> _Value:
        policy = self.policies.lookup(path)
        if type(local) is dict and type(remote) is dict:
            return self._merge_dicts(path, base if type(base) is dict else {}, local, remote)
        if type(local) is list and type(remote) is list:
            if policy is MergePolicy.UNION and self.forced is None:
                return _union(base, local, remote)
            base_list = base if type(base) is list else []
            base_ids, local_ids, remote_ids = _ids(base_list), _ids(local), _ids(remote)
            if base_ids is not None and local_ids is not None and remote_ids is not None:
                return self._merge_id_lists(
                    path, (base_list, base_ids), (local, local_ids), (remote, remote_ids)
                )
        side, how = self._winner(policy, local, remote)
        chosen = local if side == "local" else remote
        self._report(path, (base, local, remote, chosen), f"changed on both sides; {how}", policy)
        return chosen

    def _deletion_against_change(
        self, path: _Path, base: _Value, local: _Value, remote: _Value
    ) -> _Value:
        policy = self.policies.lookup(path)
        deleter: _Side = "local" if local is MISSING else "remote"
        changer: _Side = "remote" if deleter == "local" else "local"
        if self.forced is not None:
            side, how = self.forced, f"took {self.forced} (strategy {self.forced!r})"
        elif policy in _SIDE_POLICIES:
            side, how = self._winner(policy, local, remote)
        else:
            side, how = changer, "kept the change"
        chosen = local if side == "local" else remote
        reason = f"deleted on the {deleter} side, changed on the {changer} side; {how}"
        self._report(path, (base, local, remote, chosen), reason, policy, kind="deleted_changed")
        return chosen

    def _merge_dicts(
        self, path: _Path, base: JsonObject, local: JsonObject, remote: JsonObject
    ) -> JsonObject:
        merged: JsonObject = {}
        for key in _keys_of(local, remote):
            value = self.merge_value(
                (*path, key),
                base.get(key, MISSING),
                local.get(key, MISSING),
                remote.get(key, MISSING),
            )
            if value is not MISSING:
                merged[key] = value
        return merged

    def _merge_id_lists(
        self,
        path: _Path,
        base: tuple[list[JsonValue], list[_Segment]],
        local: tuple[list[JsonValue], list[_Segment]],
        remote: tuple[list[JsonValue], list[_Segment]],
    ) -> list[JsonValue]:
        base_items = dict(zip(base[1], base[0], strict=True))
        local_items = dict(zip(local[1], local[0], strict=True))
        remote_items = dict(zip(remote[1], remote[0], strict=True))
        merged, same_on_both = _merge_untouched_items(base_items, local_items, remote_items)
        if path == ("widgets",):
            sides = (base_items, local_items, remote_items)
            self.widget_merge = _WidgetMerge(sides, frozenset(same_on_both))
        for item_id in _keys_of(local_items, remote_items):
            if item_id in merged:
                continue
            value = self.merge_value(
                (*path, item_id),
                base_items.get(item_id, MISSING),
                local_items.get(item_id, MISSING),
                remote_items.get(item_id, MISSING),
            )
            if value is not MISSING:
                merged[item_id] = value
        if local[1] == remote[1]:
            return [merged[item_id] for item_id in local[1]]
        order = self._merge_order(path, base[1], local[1], remote[1], merged.keys())
        return [merged[item_id] for item_id in order]

    def _merge_order(
        self,
        path: _Path,
        base_ids: list[_Segment],
        local_ids: list[_Segment],
        remote_ids: list[_Segment],
        surviving: Iterable[_Segment],
    ) -> list[_Segment]:
        """Return the surviving ids in merged order.

        Items neither side moved keep the base order. An item one side added or moved is
        placed by that side: right after the nearest item before it, in that side's list,
        that it also placed or that nobody moved. When both sides place items in the same
        gap, the run whose first id sorts lower comes first. An item both sides added or
        moved is placed by the side that wins the list (``prefer`` or the list's policy);
        if the two sides put it after different items, that is an ``order`` conflict.
        """
        keep = set(surviving)
        local_kept = [item_id for item_id in local_ids if item_id in keep]
        remote_kept = [item_id for item_id in remote_ids if item_id in keep]
        if local_kept == remote_kept:
            return local_kept
        base_position = {item_id: index for index, item_id in enumerate(base_ids)}
        local_placed = _moved(base_position, local_ids) | (set(local_ids) - base_position.keys())
        remote_placed = _moved(base_position, remote_ids) | (set(remote_ids) - base_position.keys())
        owner: dict[_Segment, _Side] = dict.fromkeys(remote_placed & keep, "remote")
        owner.update(dict.fromkeys(local_placed & keep, "local"))
        contested = local_placed & remote_placed & keep
        if not contested:
            return _assemble_order(base_ids, local_kept, remote_kept, owner)
        policy = self.policies.lookup(path)
        winner = self._winner(policy, _as_value(local_ids), _as_value(remote_ids))[0]
        owner.update(dict.fromkeys(contested, winner))
        order = _assemble_order(base_ids, local_kept, remote_kept, owner)
        local_after, remote_after = _predecessors(local_kept), _predecessors(remote_kept)
        if any(local_after[item_id] != remote_after[item_id] for item_id in contested):
            taken = {"local": local_ids, "remote": remote_ids}.get(self.forced or "", order)
            values = (base_ids, local_ids, remote_ids, taken)
            self._report(
                path,
                (*(_as_value(ids) for ids in values),),
                f"items moved to different places on both sides; the {winner} side placed them",
                policy,
                kind="order",
            )
        return order

    def _winner(
        self, policy: MergePolicy | None, local: _Value, remote: _Value
    ) -> tuple[_Side, str]:
        if self.forced is not None:
            return self.forced, f"took {self.forced} (strategy {self.forced!r})"
        if policy is MergePolicy.PREFER_LOCAL:
            return "local", "kept local (policy prefer_local)"
        if policy is MergePolicy.PREFER_REMOTE:
            return "remote", "kept remote (policy prefer_remote)"
        if policy is MergePolicy.LAST_WRITER_WINS or self.prefer == "newest":
            return self._newest(local, remote)
        return self.prefer, f"kept {self.prefer} (prefer={self.prefer!r})"

    def _newest(self, local: _Value, remote: _Value) -> tuple[_Side, str]:
        local_time, remote_time = self.local_time, self.remote_time
        try:
            if local_time is not None and (remote_time is None or local_time > remote_time):
                return "local", "kept the newer local change"
            if remote_time is not None and (local_time is None or remote_time > local_time):
                return "remote", "kept the newer remote change"
        except TypeError as exc:
            raise ConfigurationError(
                "local_time and remote_time must both be naive or both timezone-aware"
            ) from exc
        # Same time, or none given: a rule that doesn't depend on which side is which, so
        # every device picks the same winner (CouchDB compares revision hashes likewise).
        if _sort_bytes(local) >= _sort_bytes(remote):
            return "local", "same time; kept the local value, which sorts higher"
        return "remote", "same time; kept the remote value, which sorts higher"

    def _report(
        self,
        path: _Path,
        values: tuple[_Value, ...],
        reason: str,
        policy: MergePolicy | None,
        *,
        kind: ConflictKind = "changed_both",
    ) -> None:
        """Record a conflict; *values* are base, local, remote and chosen."""
        base, local, remote, chosen = values
        manual = policy is MergePolicy.MANUAL and self.forced is None
        if manual:
            reason += "; needs a decision (policy manual)"
        self.conflicts.append(
            Conflict(_pointer(path), base, local, remote, chosen, reason, kind, manual)
        )


_SIDE_POLICIES = (MergePolicy.PREFER_LOCAL, MergePolicy.PREFER_REMOTE, MergePolicy.LAST_WRITER_WINS)


def _same(a: _Value, b: _Value) -> bool:
    # Python's == says 1 == 1.0 == True; JSON (and a checksum) tells them apart.
    if a is b:
        return True
    if a != b:
        return False
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict or kind is list:
        try:
            return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
                b, option=orjson.OPT_SORT_KEYS
            )
        except orjson.JSONEncodeError:  # an integer beyond 64 bits: compare in Python
            return _same_types(a, b)
    # 0.0 and -0.0 are equal numbers but different JSON.
    return kind is not float or a != 0.0 or str(a) == str(b)


def _same_types(a: _Value, b: _Value) -> bool:
    # Only called on values already equal under ==, so keys and lengths match.
    kind = type(a)
    if kind is not type(b):
        return False
    pairs: Iterable[tuple[_Value, _Value]]
    if kind is dict:
        pairs = ((value, cast(JsonObject, b)[key]) for key, value in cast(JsonObject, a).items())
    elif kind is list:
        pairs = zip(cast(list[JsonValue], a), cast(list[JsonValue], b), strict=True)
    else:
        return kind is not float or a != 0.0 or str(a) == str(b)
    return all(_same_types(left, right) for left, right in pairs)


def _merge_untouched_items(
    base_items: Mapping[_Segment, JsonValue],
    local_items: Mapping[_Segment, JsonValue],
    remote_items: Mapping[_Segment, JsonValue],
) -> tuple[dict[_Segment, JsonValue], list[_Segment]]:
    """Return the merged value of each item that at most one side changed, found in bulk,
    and the ids of those both sides hold the same.

    The same as `_MergeRun.merge_value` on each item, without a Python call per item: most
    items of a big list are untouched, and are compared in C. Items both sides changed,
    added or deleted are left to the caller.
    """
    shared = [item_id for item_id in local_items if item_id in remote_items]
    same_on_both = _same_items(shared, local_items, remote_items)
    merged = {item_id: local_items[item_id] for item_id in same_on_both}
    rest = [item_id for item_id in shared if item_id not in merged and item_id in base_items]
    for item_id in _same_items(rest, base_items, local_items):
        merged[item_id] = remote_items[item_id]
    rest = [item_id for item_id in rest if item_id not in merged]
    for item_id in _same_items(rest, base_items, remote_items):
        merged[item_id] = local_items[item_id]
    return merged, same_on_both


def _same_items(
    ids: list[_Segment], left: Mapping[_Segment, JsonValue], right: Mapping[_Segment, JsonValue]
) -> list[_Segment]:
    """Return the ids whose items are the same JSON in *left* and *right*."""
    if not ids:
        return []
    left_items = [left[item_id] for item_id in ids]
    right_items = [right[item_id] for item_id in ids]
    equal = list(map(operator.eq, left_items, right_items))
    candidates = list(itertools.compress(ids, equal))
    left_equal = list(itertools.compress(left_items, equal))
    right_equal = list(itertools.compress(right_items, equal))
    # == calls 1, 1.0 and True equal; one orjson call per side confirms the JSON types of
    # all candidates at once. If that fails (a type differs, or keys are in another
    # order), each candidate is checked on its own.
    try:
        if orjson.dumps(left_equal) == orjson.dumps(right_equal):
            return candidates
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: _same copes
        pass
    return [
        item_id
        for item_id, a, b in zip(candidates, left_equal, right_equal, strict=True)
        if _same(a, b)
    ]


def _keys_of(local: Mapping[_Key, object], remote: Mapping[_Key, object]) -> list[_Key]:
    # Local's keys, then remote's new ones; a key deleted on both sides needs no visit.
    return list(local) + [key for key in remote if key not in local]


def _ids(value: _Value) -> list[_Segment] | None:
    """Return the ids of a list of objects with unique str or int ``"id"``s, else ``None``."""
    if type(value) is not list:
        return None
    # map() and set() run in C: this is on the path of every merge of a big layout.
    try:
        ids: list[_Segment] = list(map(_get_id, value))
    except (KeyError, TypeError):  # an item that is no object, or has no id
        return None
    if not set(map(type, ids)) <= {str, int} or len(set(ids)) != len(ids):
        return None
    return ids


def _moved(base_position: Mapping[_Segment, int], ids: list[_Segment]) -> set[_Segment]:
    """Return the ids of *ids* that left the base order: those outside a longest run in it."""
    common = [item_id for item_id in ids if item_id in base_position]
    positions = [base_position[item_id] for item_id in common]
    if all(left < right for left, right in itertools.pairwise(positions)):
        return set()
    unmoved_positions = longest_increasing_run(positions)
    unmoved = {
        item_id for item_id, p in zip(common, positions, strict=True) if p in unmoved_positions
    }
    return set(common) - unmoved


def _assemble_order(
    base_ids: list[_Segment],
    local_kept: list[_Segment],
    remote_kept: list[_Segment],
    owner: Mapping[_Segment, _Side],
) -> list[_Segment]:
    """Return the items nobody moved in base order, each followed by the runs placed after it."""
    runs: dict[_Side, dict[_Segment | None, list[_Segment]]] = {"local": {}, "remote": {}}
    for side, ids in (("local", local_kept), ("remote", remote_kept)):
        gap: _Segment | None = None
        for item_id in ids:
            placed_by = owner.get(item_id)
            if placed_by is None:
                gap = item_id
            elif placed_by == side:
                runs[side].setdefault(gap, []).append(item_id)
    kept = set(local_kept) | set(remote_kept)
    stable = [item_id for item_id in base_ids if item_id in kept and item_id not in owner]
    order: list[_Segment] = []
    for gap in [None, *stable]:
        if gap is not None:
            order.append(gap)
        first, second = runs["local"].get(gap, []), runs["remote"].get(gap, [])
        if first and second and _id_sort_key(second[0]) < _id_sort_key(first[0]):
            first, second = second, first
        order += first + second
    return order


def _as_value(ids: list[_Segment]) -> JsonValue:
    return cast(JsonValue, list(ids))


def _predecessors(ids: list[_Segment]) -> dict[_Segment, _Segment | None]:
    return dict(zip(ids, [None, *ids[:-1]], strict=True))


def _id_sort_key(item_id: _Segment) -> tuple[bool, str | int]:
    return (type(item_id) is str, item_id)


def _union(base: _Value, local: list[JsonValue], remote: list[JsonValue]) -> list[JsonValue]:
    """Return local's items not removed by remote, then remote's additions (no duplicates)."""
    base_keys = {_sort_bytes(item) for item in base} if type(base) is list else set()
    local_keys = {_sort_bytes(item) for item in local}
    remote_keys = {_sort_bytes(item) for item in remote}
    merged: list[JsonValue] = []
    seen: set[bytes] = set()
    for item, key, other_keys in [
        *((item, _sort_bytes(item), remote_keys) for item in local),
        *((item, _sort_bytes(item), local_keys) for item in remote),
    ]:
        removed_by_other = key in base_keys and key not in other_keys
        if key not in seen and not removed_by_other:
            seen.add(key)
            merged.append(item)
    return merged


def _sort_bytes(value: _Value) -> bytes:
    if value is MISSING:
        return b""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _pointer(path: _Path) -> str:
    return "".join("/" + str(segment).replace("~", "~0").replace("/", "~1") for segment in path)


def _conflict_order(conflict: Conflict) -> tuple[str, str]:
    return (conflict.path, conflict.kind)


def _as_json(document: Document) -> JsonObject:
    if isinstance(document, BaseModel):
        return cast(JsonObject, document.model_dump(mode="json"))
    if type(document) is not dict:
        raise ValidationError(
            [
                ValidationIssue(
                    "$",
                    "json_object",
                    f"a document must be a JSON object, not {type(document).__name__}",
                )
            ]
        )
    return document


# --- policies ----------------------------------------------------------------------------

_PATTERN_PART = re.compile(r"^([^\[\]]*)((?:\[[^\[\]]*\])*)$")


class _PolicyTable:
    """Path patterns compiled for lookup: exact paths in a dict, wildcard ones in a list."""

    def __init__(self, policies: Mapping[str, MergePolicy]) -> None:
        self._exact: dict[tuple[str, ...], MergePolicy] = {}
        self._wildcard: list[tuple[tuple[str, ...], MergePolicy]] = []
        for pattern in sorted(policies):
            try:
                policy = MergePolicy(policies[pattern])
            except ValueError as exc:
                raise ConfigurationError(
                    f"unknown merge policy for {pattern!r}; expected one of "
                    f"{', '.join(item.value for item in MergePolicy)}"
                ) from exc
            segments = _parse_pattern(pattern)
            if "*" in segments:
                self._wildcard.append((segments, policy))
            else:
                self._exact[segments] = policy
        # Among patterns of one length, fewer wildcards is more specific.
        self._wildcard.sort(key=lambda entry: (entry[0].count("*"), entry[0]))

    def lookup(self, path: _Path) -> MergePolicy | None:
        """Return the policy of the deepest pattern matching *path* or one of its ancestors."""
        if not self._exact and not self._wildcard:
            return None
        names = tuple(str(segment) for segment in path)
        for length in range(len(names), 0, -1):
            prefix = names[:length]
            if prefix in self._exact:
                return self._exact[prefix]
            for segments, policy in self._wildcard:
                if len(segments) == length and all(
                    want in ("*", have) for want, have in zip(segments, prefix, strict=True)
                ):
                    return policy
        return None


def _parse_pattern(pattern: str) -> tuple[str, ...]:
    if pattern.startswith("/"):
        return tuple(part.replace("~1", "/").replace("~0", "~") for part in pattern[1:].split("/"))
    segments: list[str] = []
    for part in pattern.split("."):
        match = _PATTERN_PART.match(part)
        if match is None or not (match.group(1) or match.group(2)):
            raise ConfigurationError(f"bad merge policy pattern {pattern!r}")
        if match.group(1):
            segments.append(match.group(1))
        segments += re.findall(r"\[([^\[\]]*)\]", match.group(2))
    return tuple(segments)


def _collect_policies(
    model: type[BaseModel], prefix: str, found: dict[str, MergePolicy], *, seen: set[type]
) -> None:
    if model in seen:
        return
    seen = seen | {model}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        for item in info.metadata:
            if isinstance(item, MergePolicy):
                found[path] = item
        for nested, suffix in _nested_models(info.annotation):
            _collect_policies(nested, f"{path}{suffix}.", found, seen=seen)


def _nested_models(annotation: object) -> list[tuple[type[BaseModel], str]]:
    """Return the models *annotation* holds directly (suffix ``""``) or as list items (``[*]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, "")]
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [found for argument in arguments for found in _nested_models(argument)]
    if origin in (list, tuple) and arguments:
        return [
            (nested, "[*]")
            for argument in arguments
            if argument is not Ellipsis
            for nested, suffix in _nested_models(argument)
            if not suffix
        ]
    return []


# --- domain repair: widgets that the merge made overlap ----------------------------------

_Rect: TypeAlias = tuple[int, int, int, int]
_get_geometry = cast(
    typing.Callable[[JsonValue], tuple[JsonValue, ...]], operator.itemgetter("x", "y", "w", "h")
)


def _geometry(widgets: list[JsonValue]) -> list[_Rect | None]:
    """Return each widget's ``(x, y, w, h)``, or ``None`` where they are not all integers."""
    try:
        found = list(map(_get_geometry, widgets))
    except (KeyError, TypeError):
        pass  # some widget lacks a field or is no object: sort them out one by one below
    else:
        if set(map(type, itertools.chain.from_iterable(found))) <= {int}:
            return cast(list[_Rect | None], found)
    return [_one_geometry(widget) for widget in widgets]


def _one_geometry(widget: JsonValue) -> _Rect | None:
    if type(widget) is not dict:
        return None
    rect = (widget.get("x"), widget.get("y"), widget.get("w"), widget.get("h"))
    x, y, w, h = rect
    if type(x) is int and type(y) is int and type(w) is int and type(h) is int:
        return cast(_Rect, rect)
    return None


def _overlap(a: _Rect | None, b: _Rect | None) -> bool:
    if a is None or b is None:
        return False
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah


@dataclass(frozen=True, slots=True)
class _WidgetMerge:
    """The three versions of the ``widgets`` list, and the widgets both sides hold the same."""

    sides: _SideItems
    same_on_both: frozenset[_Segment]


class _Grid:
    """Rectangles of the merged widgets and of their versions on each side, found lazily."""

    def __init__(self, widgets: Mapping[_Segment, JsonValue], sides: _SideItems) -> None:
        self.widgets = widgets
        self.sides = sides
        self._memo: dict[tuple[int, _Segment], _Rect | None] = {}

    def rect(self, side: int, widget_id: _Segment) -> _Rect | None:
        """Return the rectangle of *widget_id* in base (0), local (1), remote (2) or the
        merge (3); ``None`` if it has none there."""
        key = (side, widget_id)
        if key not in self._memo:
            items = self.widgets if side == 3 else self.sides[side]
            self._memo[key] = _one_geometry(items.get(widget_id))
        return self._memo[key]

    def tolerated(self, a: _Segment, b: _Segment) -> bool:
        """Whether *a* and *b* overlapped on one side already: placed so, not by the merge."""
        return _overlap(self.rect(1, a), self.rect(1, b)) or _overlap(
            self.rect(2, a), self.rect(2, b)
        )

    def has_new_overlap(self, changed: Iterable[_Segment]) -> bool:
        """Return whether two merged widgets overlap that overlapped on neither side.

        *changed* holds every widget the two sides don't hold the same; the others sit
        where both sides have them.
        """
        # Such a pair has a widget placed unlike local (moved_from_local) and one placed
        # unlike remote. If one widget is both, it may meet any other; if not, the pair is
        # one of each kind. Neither kind is common, so this costs little.
        local_items, remote_items = self.sides[1], self.sides[2]
        moved_from_local: list[tuple[_Segment, _Rect]] = []
        moved_from_remote: list[tuple[_Segment, _Rect]] = []
        for widget_id in changed:
            merged = _one_geometry(self.widgets[widget_id])
            if merged is None:
                continue
            if merged != _one_geometry(local_items.get(widget_id)):
                moved_from_local.append((widget_id, merged))
            if merged != _one_geometry(remote_items.get(widget_id)):
                moved_from_remote.append((widget_id, merged))
        moved_from_both = {wid for wid, _ in moved_from_local} & {
            wid for wid, _ in moved_from_remote
        }
        pairs: Iterable[tuple[tuple[_Segment, _Rect], tuple[_Segment, _Rect]]]
        if moved_from_both:
            everything = [(wid, rect) for wid in self.widgets if (rect := self.rect(3, wid))]
            pairs = itertools.chain(
                itertools.product(
                    [e for e in moved_from_local if e[0] in moved_from_both], everything
                ),
                itertools.product(moved_from_local, moved_from_remote),
            )
        else:
            pairs = itertools.product(moved_from_local, moved_from_remote)
        for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in pairs:
            if (
                ax < bx + bw
                and bx < ax + aw
                and ay < by + bh
                and by < ay + ah
                and a != b
                and not self.tolerated(a, b)
            ):
                return True
        return False


def _repair_overlaps(layout: JsonObject, widget_merge: _WidgetMerge | None) -> list[Conflict]:
    """Move down each widget the merge made overlap an earlier one; return the repairs.

    *widget_merge* describes the merge of the two ``widgets`` lists (``None``: the list is
    one side's own and needs nothing). Only overlaps that neither side had are repaired: a
    pair overlapping in the local or the remote document was placed so on purpose (or
    before this merge) and stays. *layout* gets a new ``widgets`` list with new objects for
    the moved widgets; objects it shares with the inputs are not changed.
    """
    widgets = layout.get("widgets")
    ids = _ids(widgets)
    if widget_merge is None or ids is None or len(ids) < 2:
        return []
    repaired = list(cast(list[JsonValue], widgets))
    grid = _Grid(dict(zip(ids, repaired, strict=True)), widget_merge.sides)
    if not grid.has_new_overlap(itertools.filterfalse(widget_merge.same_on_both.__contains__, ids)):
        return []
    placed: list[tuple[_Segment, _Rect]] = []
    repairs: list[Conflict] = []
    for index, (widget_id, start) in enumerate(zip(ids, _geometry(repaired), strict=True)):
        if start is None:
            continue
        rect = start
        while blockers := [
            other_rect
            for other, other_rect in placed
            if _overlap(rect, other_rect) and not grid.tolerated(widget_id, other)
        ]:
            rect = (rect[0], max(y + h for _, y, _, h in blockers), rect[2], rect[3])
        placed.append((widget_id, rect))
        if rect != start:
            repaired[index] = {**cast(JsonObject, repaired[index]), "y": rect[1]}
            repairs.append(
                Conflict(
                    _pointer(("widgets", widget_id, "y")),
                    _y_of(grid.rect(0, widget_id)),
                    _y_of(grid.rect(1, widget_id)),
                    _y_of(grid.rect(2, widget_id)),
                    rect[1],
                    "overlap repaired",
                    "overlap",
                )
            )
    layout["widgets"] = repaired
    return repairs


def _y_of(rect: _Rect | None) -> _Value:
    return MISSING if rect is None else rect[1]


# --- words for suggest_resolution --------------------------------------------------------

_WIDGET_FIELD_WORDS = {
    "x": "moved widgets",
    "y": "moved widgets",
    "w": "resized widgets",
    "h": "resized widgets",
    "title": "renamed widgets",
    "settings": "changed widget settings",
    "type": "changed widget types",
}


def _describe_changes(base: JsonObject, edited: JsonObject) -> str:
    """Return what *edited* changed against *base*, as a verb phrase ("moved widgets")."""
    phrases: list[str] = []

    def add(phrase: str) -> None:
        if phrase not in phrases:
            phrases.append(phrase)

    for key in _keys_of(edited, base):
        before, after = base.get(key, MISSING), edited.get(key, MISSING)
        if _same(before, after):
            continue
        before_ids, after_ids = _ids(before), _ids(after)
        if before_ids is None or after_ids is None:
            add(f"changed the {key}" if after is not MISSING else f"removed the {key}")
            continue
        before_items = dict(zip(before_ids, cast(list[JsonObject], before), strict=True))
        after_items = dict(zip(after_ids, cast(list[JsonObject], after), strict=True))
        noun = "widgets" if key == "widgets" else f"items of {key}"
        if after_items.keys() - before_items.keys():
            add(f"added {noun}")
        if before_items.keys() - after_items.keys():
            add(f"removed {noun}")
        for item_id, item in after_items.items():
            old = before_items.get(item_id)
            if old is None or _same(old, item):
                continue
            for name in _keys_of(item, old):
                if not _same(old.get(name, MISSING), item.get(name, MISSING)):
                    word = _WIDGET_FIELD_WORDS.get(name, "edited widgets")
                    add(word if key == "widgets" else f"edited {noun}")
        kept = [item_id for item_id in before_ids if item_id in after_items]
        if [item_id for item_id in after_ids if item_id in before_items] != kept:
            add(f"reordered {noun}")
    if not phrases:
        return "changed nothing"
    if len(phrases) == 1:
        return f"only {phrases[0]}"
    return ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
