"""Sequence helpers shared by the diff engine and the merge: which items kept their order."""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["longest_increasing_run"]


def longest_increasing_run(values: list[int]) -> set[int]:
    """Return the values of one longest strictly increasing subsequence of *values*.

    Patience sorting: O(n log n), and deterministic. Used to tell which items of a list
    kept their relative order (they stay) from those that moved.
    """
    tails: list[int] = []
    tail_at: list[int] = []
    previous: list[int] = [-1] * len(values)
    for index, value in enumerate(values):
        slot = bisect_left(tails, value)
        if slot:
            previous[index] = tail_at[slot - 1]
        if slot == len(tails):
            tails.append(value)
            tail_at.append(index)
        else:
            tails[slot] = value
            tail_at[slot] = index
    run: set[int] = set()
    index = tail_at[-1] if tail_at else -1
    while index >= 0:
        run.add(values[index])
        index = previous[index]
    return run
