"""Benchmark: AutosaveQueue.put() overhead and how many writes a burst of edits costs.

Issue #5's budgets: ``put()`` (the queued half of ``save_layout(immediate=False)``) costs
<= 50 us per call, and 1,000 edits in a one-second burst produce exactly one storage
write, plus one per elapsed max-wait when the burst lasts longer. Bursts run on a fake
clock, with `run_due` called after every edit as the worker would, so they take no
real time and the counts are exact.
"""

from __future__ import annotations

from bench._timing import format_table, layout_document, median_seconds
from dashpersist.autosave import AutosaveQueue

PUT_BUDGET_US = 50.0
DELAY = 2.0
MAX_WAIT = 10.0
EDITS = 1_000


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def measure_put(*, with_worker: bool) -> dict[str, object]:
    """Return the median cost of one put() (a 50-widget layout, 100 keys in turn)."""
    queue: AutosaveQueue[str, object, None] = AutosaveQueue(
        lambda key, value: None, delay=DELAY, max_wait=MAX_WAIT, start_worker=with_worker
    )
    layout = layout_document(50, 1)
    keys = [f"user{index}" for index in range(100)]
    counter = iter(range(10**9))

    def put() -> None:
        queue.put(keys[next(counter) % 100], layout)

    seconds = median_seconds({"put": put}, batches=9, per_batch=2_000)["put"]
    queue.flush()
    queue.close()
    micros = seconds * 1e6
    return {
        "case": f"put() {'with' if with_worker else 'without'} the worker thread",
        "us per put": micros,
        "budget us": PUT_BUDGET_US,
        "within budget": micros <= PUT_BUDGET_US,
    }


def measure_burst(duration: float) -> dict[str, object]:
    """Return the writes 1,000 edits spread evenly over *duration* seconds produce."""
    clock = _FakeClock()
    writes: list[int] = []
    queue: AutosaveQueue[str, int, None] = AutosaveQueue(
        lambda key, value: writes.append(value),
        delay=DELAY,
        max_wait=MAX_WAIT,
        clock=clock,
        start_worker=False,
    )
    step = duration / EDITS
    for index in range(EDITS):
        clock.now = index * step
        queue.put("alice", index)
        queue.run_due()
    clock.now = (EDITS - 1) * step + DELAY
    queue.run_due()
    expected = 1 + int(((EDITS - 1) * step) // MAX_WAIT)
    return {
        "case": f"{EDITS} edits in {duration:g} s (fake clock)",
        "writes": len(writes),
        "expected writes": expected,
        "last value written": writes[-1] == EDITS - 1,
        "write reduction": f"{EDITS / len(writes):.0f}x",
        "within budget": len(writes) == expected and writes[-1] == EDITS - 1,
    }


def run() -> list[dict[str, object]]:
    """Return one row per measurement."""
    return [
        measure_put(with_worker=False),
        measure_put(with_worker=True),
        measure_burst(1.0),
        measure_burst(25.0),
        measure_burst(60.0),
    ]


def main() -> None:
    columns = [
        "case",
        "us per put",
        "budget us",
        "writes",
        "expected writes",
        "last value written",
        "write reduction",
        "within budget",
    ]
    print(format_table(run(), columns))


if __name__ == "__main__":
    main()
