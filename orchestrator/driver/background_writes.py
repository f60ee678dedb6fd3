"""The sweep driver's background writer: storage writes taken out of Ray Tune's event loop.

Why: Tune calls its scheduler, searcher and callbacks on one event loop, and every trial's
report waits while one of them runs. ASHA's prune decision writes the stopped trial's
``pruned`` row (:func:`orchestrator.driver.state.driver_row`: the row, the record, the
checkpoint delete, the compaction of its steps and traces, a dozen requests); on an object
store that held the loop for seconds (Tune: ``scheduler.on_trial_result took 1.724 s ...
may be a performance bottleneck``), and with hundreds of trials every prune stalled them all.

What: :class:`DriverWrites` runs such writes on one worker thread, in the order they were
submitted (FIFO), from a bounded queue. The callback only enqueues; when the queue is full
it blocks until there is room (backpressure: nothing is dropped and memory stays bounded,
at worst the loop waits as it did before). A task that raises does not stop the ones after
it; its error is kept and raised by :meth:`DriverWrites.flush` as :class:`DriverWriteError`,
never silently lost. The driver flushes after ``tuner.fit()`` returns and on its
Ctrl-C / error path, before it reads the store (failed trials, the outcome).

Why the sweep's guarantees still hold (``docs/reliability.md``):

- One task is one whole ``driver_row``, run by one thread, so its steps keep their order
  (row, record, checkpoint delete, compaction), and a kill in the middle of it leaves the
  same states the synchronous write could leave (a row beside a ``running`` record is
  marked finished at the next start; leftover epoch files are compacted then).
- A decision that has not reached storage when the driver is killed leaves the trial as it
  was when it reported: its record ``running`` and its checkpoint in place (a trial reports
  only after its checkpoint and waits in ``report`` until Tune continues or stops it). A
  ``--resume`` continues it under its own ``trial_id``, as if the driver had been killed
  just before ASHA decided: the trial is not lost, and since rows are files keyed by
  ``trial_id`` it can never have two rows.
- A write that fails leaves its trial the same way (no row, or a row the next start
  completes), and the flush reports it; the sweep then ends "stopped ... resume with".
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DriverWriteError", "DriverWrites"]

_Task = tuple[str, Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class DriverWriteError(RuntimeError):
    """Background writes that raised: ``failures`` holds ``(what, exception)`` in order."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        self.failures = list(failures)
        what, exc = self.failures[0]
        more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
        super().__init__(
            f"{len(self.failures)} driver write(s) failed; first: {what}: {type(exc).__name__}: {exc}{more}"
        )
        self.__cause__ = exc


class DriverWrites:
    """One worker thread running submitted writes in FIFO order from a bounded queue.

    Example:
        >>> done = []
        >>> writes = DriverWrites(maxsize=2)
        >>> for i in range(3):
        ...     writes.submit(f"write {i}", done.append, i)
        >>> writes.flush()
        >>> done
        [0, 1, 2]
        >>> writes.submit("broken", int, "x")
        >>> try:
        ...     writes.flush()
        ... except DriverWriteError as e:
        ...     print(e)
        1 driver write(s) failed; first: broken: ValueError: invalid literal for int() with base 10: 'x'
        >>> writes.close()
    """

    def __init__(self, maxsize: int = 256, name: str = "driver-writes") -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be an integer >= 1, got {maxsize!r}")
        self.name = name
        self._queue: queue.Queue[_Task | None] = queue.Queue(maxsize)
        self._cond = threading.Condition()
        self._submitted = 0
        self._done = 0
        self._failures: list[tuple[str, BaseException]] = []
        self._thread: threading.Thread | None = None
        self._closed = False

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles its scheduler (which holds this writer) with the tuner's state: a copy
        # is a fresh, empty writer with the same settings; queued work stays with this one.
        return (DriverWrites, (self._queue.maxsize, self.name))

    @property
    def pending(self) -> int:
        """Tasks submitted and not finished yet (running, queued, or waiting for room)."""
        with self._cond:
            return self._submitted - self._done

    def submit(self, what: str, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Queue ``fn(*args, **kwargs)`` (``what`` names it in errors); blocks while the
        queue is full."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name}: submit after close")
            if self._thread is None:  # started on first use: no thread for sweeps that never prune
                self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
                self._thread.start()
            self._submitted += 1
        self._queue.put((what, fn, args, kwargs))  # outside the lock: the worker needs it to finish

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every task submitted so far has run; raise :class:`DriverWriteError`
        for those that failed since the last flush (then forgotten), ``TimeoutError`` if
        they are not done within ``timeout`` seconds."""
        with self._cond:
            target = self._submitted
            if not self._cond.wait_for(lambda: self._done >= target, timeout):
                raise TimeoutError(
                    f"{self.name}: {target - self._done} write(s) unfinished after {timeout} s"
                )
            failures, self._failures = self._failures, []
        if failures:
            raise DriverWriteError(failures)

    def close(self, timeout: float | None = None) -> None:
        """Flush (raising as :meth:`flush` does), then stop the worker thread. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        try:
            self.flush(timeout)
        finally:
            if self._thread is not None:
                with contextlib.suppress(queue.Full):
                    self._queue.put(None, timeout=timeout)
                self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            what, fn, args, kwargs = task
            try:
                fn(*args, **kwargs)
            except BaseException as exc:  # kept for flush; the thread goes on with the next task
                with self._cond:
                    self._failures.append((what, exc))
            finally:
                with self._cond:
                    self._done += 1
                    self._cond.notify_all()
