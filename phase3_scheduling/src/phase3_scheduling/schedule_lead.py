"""When to schedule the next step under async scheduling with ``schedule_lead_ms``.

With async scheduling the engine schedules step N+1 as soon as it has launched step N, so a
request that arrives while N runs can only join N+2. With a lead the engine process waits for
requests while N runs and schedules N+1 only when N is about to end: ``schedule_lead_ms`` before
it, plus the host's own time to schedule and queue a step. That needs two figures, each measured
where it can be measured without bias:

* ``decode_s``, how long a decode step runs on the device. A step's end is seen only when the
  engine waits for it while it still runs (the collection blocked): then it ended at that
  collection. When the collection found it already done, the engine woke too late (the device
  may have idled) and all that is known is that the step ended before the engine looked, an
  upper bound that lowers the estimate at once. (The first version timed each step from one
  collection to the next: with the lead on that interval includes the engine's own wait, the
  estimate fed on itself and the steps of an H100 at 16 req/s grew from 7.0 to 10.4 ms.)
* ``host_s``, the host's time from waking to having the next step queued on the device
  (schedule, prepare the inputs, launch).

Steps that carry a prompt are never waited on (their length varies with the prompt) and do not
feed ``decode_s``.
"""

from __future__ import annotations

EMA_WEIGHT = 0.25  # of the newest sample in each moving average
SEEN_RUNNING_S = 50e-6  # a collection that blocked longer than this saw the step still running


class LeadTimer:
    def __init__(self, lead_s: float):
        self.lead_s = lead_s
        self.decode_s: float | None = None  # device time of a decode step; None before the first
        self.host_s = 0.0  # host time from waking to the next step being queued

    @property
    def on(self) -> bool:
        """Whether there is a lead to time (the engine feeds the timer only then)."""
        return self.lead_s > 0

    def delay(self, now: float, head_started_at: float, head_is_decode: bool) -> float:
        """Seconds from ``now`` until the next step should be scheduled, while the step in flight
        (a decode step if ``head_is_decode``) runs since ``head_started_at``; 0: at once."""
        if not self.on or self.decode_s is None or not head_is_decode:
            return 0.0
        due = head_started_at + self.decode_s - self.lead_s - self.host_s
        return max(0.0, due - now)

    def queued(self, host_seconds: float) -> None:
        """The host took ``host_seconds`` to schedule and queue a step behind one in flight."""
        self.host_s += EMA_WEIGHT * (host_seconds - self.host_s)

    def collected(self, started_at: float, waited_from: float, done_at: float,
                  is_decode: bool) -> None:
        """A step that ran since ``started_at`` was waited for from ``waited_from`` and was done
        at ``done_at``."""
        if not is_decode:
            return
        if done_at - waited_from > SEEN_RUNNING_S:  # still running when looked at: ended now
            seconds = done_at - started_at
            self.decode_s = seconds if self.decode_s is None else (
                self.decode_s + EMA_WEIGHT * (seconds - self.decode_s))
        elif self.decode_s is not None:  # already done: it took at most until the engine looked
            self.decode_s = min(self.decode_s, waited_from - started_at)
