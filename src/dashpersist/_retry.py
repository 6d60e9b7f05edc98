"""Bounded retries of transient storage errors (tenacity), and nothing else."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from dashpersist.config import PersistenceConfig
from dashpersist.errors import StorageUnavailableError

__all__ = ["call_with_retries"]

T = TypeVar("T")


def call_with_retries(
    operation: Callable[[], T], config: PersistenceConfig, *, sleep: Callable[[float], None]
) -> T:
    """Run *operation*, retrying `StorageUnavailableError` with capped, jittered backoff.

    tenacity's default is to retry forever without waiting; here attempts are capped
    (``retry_attempts``, the first included) and the wait before attempt n+1 is drawn
    uniformly from ``[0, min(retry_max_delay, retry_initial_delay * 2**(n-1))]`` (full
    jitter), so many clients of one failed server do not retry in step. Every other
    error is raised at once.
    """
    # The first attempt runs bare: setting tenacity up costs ~20 us, paid only on failure.
    try:
        return operation()
    except StorageUnavailableError:
        if config.retry_attempts == 1:
            raise
    sleep(random.uniform(0, min(config.retry_max_delay, config.retry_initial_delay)))  # noqa: S311
    retrying = Retrying(
        stop=stop_after_attempt(config.retry_attempts - 1),
        # Attempt n of this loop is attempt n+1 overall: the schedule goes on from there.
        wait=wait_random_exponential(
            multiplier=config.retry_initial_delay * 2, max=config.retry_max_delay
        ),
        retry=retry_if_exception_type(StorageUnavailableError),
        sleep=sleep,
        reraise=True,
    )
    return retrying(operation)
