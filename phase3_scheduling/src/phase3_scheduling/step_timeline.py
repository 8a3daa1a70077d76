"""How the engine's wall time splits between decode-only steps and steps that carry a prompt.

A decoding request gets one token per step, so while the engine is busy its time per output token
(TPOT) is the mean wall time of the steps it sits in. At a steady request rate those are decode
steps (every running sequence, one token each) and *mixed* steps (the same decodes plus a prompt
or a prompt chunk): a prompt costs every running request one longer step. These counters say,
for any window of a run (read them before and after), how many steps of each kind ran, how long
each took and how much each carried; ``summarize_window`` turns two readings into the
decomposition of a measured TPOT (``phase5_server/benchmarks/run_b4.py`` prints it per rate).

A step's wall time is measured where the engine core collects its result: from when it was
submitted or the previous step's result was collected, whichever came later, to the collection
of its own. With steps in flight back to back (async scheduling) that is the interval between
successive results; after an idle engine it starts at the submission, so idle time is never
counted as a step's.
"""

from __future__ import annotations

import msgspec

from .protocol import SchedulerOutput

KINDS = ("decode", "mixed")


class StepCounters(msgspec.Struct, array_like=True):
    """Cumulative per kind (``KINDS``): steps, wall seconds, sequences (rows that got a token or
    a chunk) and prompt tokens (``num_scheduled_tokens`` above 1) they carried."""

    steps: list[int] = msgspec.field(default_factory=lambda: [0, 0])
    seconds: list[float] = msgspec.field(default_factory=lambda: [0.0, 0.0])
    rows: list[int] = msgspec.field(default_factory=lambda: [0, 0])
    prompt_tokens: list[int] = msgspec.field(default_factory=lambda: [0, 0])

    def copy(self) -> "StepCounters":
        return StepCounters(list(self.steps), list(self.seconds), list(self.rows),
                            list(self.prompt_tokens))


def prompt_tokens(step: SchedulerOutput) -> int:
    """Tokens of the rows that run more than one (a prompt or a chunk of one): all the step's
    tokens but its one-token rows (two C-level passes: this runs once per step)."""
    tokens = step.num_scheduled_tokens
    return sum(tokens) - tokens.count(1)


class StepClock:
    """Adds each collected step to the counters (see the module docstring for what is timed)."""

    def __init__(self) -> None:
        self.counters = StepCounters()
        self._last_done: float | None = None

    def record(self, step: SchedulerOutput, submitted_at: float, done_at: float) -> None:
        start = submitted_at if self._last_done is None else max(submitted_at, self._last_done)
        self._last_done = done_at
        prompt = prompt_tokens(step)
        kind = int(prompt > 0)  # 0: decode (every row one token), 1: mixed
        c = self.counters
        c.steps[kind] += 1
        c.seconds[kind] += max(0.0, done_at - start)
        c.rows[kind] += len(step.req_ids)
        c.prompt_tokens[kind] += prompt


def summarize_window(before: StepCounters, after: StepCounters) -> dict[str, float]:
    """The steps between two readings: per kind the count, mean ms, mean rows and prompt tokens
    per step; the share of busy time in mixed steps; and ``busy_ms_per_step``, the mean step of
    the window: the TPOT a request decoding through the whole window would see."""
    out: dict[str, float] = {}
    total_steps, total_seconds = 0, 0.0
    for i, kind in enumerate(KINDS):
        n = after.steps[i] - before.steps[i]
        seconds = after.seconds[i] - before.seconds[i]
        total_steps += n
        total_seconds += seconds
        out[f"{kind}_steps"] = n
        out[f"{kind}_step_ms"] = 1e3 * seconds / n if n else 0.0
        out[f"{kind}_rows_per_step"] = (after.rows[i] - before.rows[i]) / n if n else 0.0
        if kind == "mixed":
            out["mixed_prompt_tokens_per_step"] = (
                (after.prompt_tokens[i] - before.prompt_tokens[i]) / n if n else 0.0)
    mixed_seconds = after.seconds[1] - before.seconds[1]
    out["mixed_time_share"] = mixed_seconds / total_seconds if total_seconds else 0.0
    out["busy_ms_per_step"] = 1e3 * total_seconds / total_steps if total_steps else 0.0
    out["busy_seconds"] = total_seconds
    return out


def describe_window(window: dict[str, float]) -> str:
    """One line: the steps of each kind, their mean wall time, and the mean step."""
    return (f"engine steps: {window['decode_steps']:.0f} decode of {window['decode_step_ms']:.2f} ms "
            f"({window['decode_rows_per_step']:.1f} rows), {window['mixed_steps']:.0f} mixed of "
            f"{window['mixed_step_ms']:.2f} ms ({window['mixed_prompt_tokens_per_step']:.0f} prompt "
            f"tokens), {100 * window['mixed_time_share']:.0f} % of busy time mixed; mean step "
            f"{window['busy_ms_per_step']:.2f} ms")
