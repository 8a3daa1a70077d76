"""``gc.freeze()`` once start-up is over, in the engine-core process, in the API process and in
a GPU engine that runs in the caller's process (``LLM``), and full collections made rare again
afterwards.

Start-up leaves hundreds of thousands of long-lived objects (modules, the model's parameters and
their metadata, the tokenizer, FastAPI's routes). ``gc.freeze()`` moves everything alive then
into a permanent generation that collections skip. But CPython (3.11, 3.12) starts a full
collection when the objects waiting in the oldest generation exceed a quarter of those it held
after the last full collection; once the start-up heap is frozen that quarter is small, so full
collections come *more* often, each walking every object that serving keeps alive (requests,
their token lists, open streams): measured in the API process at 512 streams, 5 full
collections of 64-165 ms in a 15 s run, each a pause of the event loop that every stream sees as
one long inter-token gap. So ``freeze_heap`` also sets the oldest generation's threshold to
``GEN2_EVERY`` (collections of the middle generation per full collection; CPython's default is
10): with 1,000 no full collection ran during the same run, and the inter-token p99 fell by
about half (docs/benchmarks.md, "The API process's choices, measured"). Cyclic garbage that
reaches the oldest generation then waits longer for its collection; everything else is freed by
reference counting as always.

In the caller's process a collection pause stalls the engine loop just the same: with 256
sequences decoding on an H100 a step took 21.0 ms against 19.8 ms with the heap frozen (same
call, thirteenth session), the GPU idle while full collections walked the heap. There the freeze
lasts as long as the engine: ``unfreeze_heap`` at its shutdown gives the frozen objects back to
the collector (an engine's own reference cycles would otherwise outlive it) and the thresholds
their old values.

Switches for the measured baselines: ``LIGHTVLLM_GC_FREEZE=0`` (neither), and
``LIGHTVLLM_GC_GEN2_EVERY=N`` (freeze, with N instead of 1,000; 10 = CPython's own).
"""

from __future__ import annotations

import gc
import logging
import os

logger = logging.getLogger(__name__)
ENV = "LIGHTVLLM_GC_FREEZE"
ENV_GEN2 = "LIGHTVLLM_GC_GEN2_EVERY"
GEN2_EVERY = 1000


def gc_freeze_enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def gen2_every() -> int:
    return int(os.environ.get(ENV_GEN2, GEN2_EVERY))


def freeze_heap() -> bool:
    """Collect once, freeze every surviving object, and space full collections out; False
    (nothing done) when disabled."""
    if not gc_freeze_enabled():
        logger.info("%s=0: the start-up heap stays in the collector's generations", ENV)
        return False
    gc.collect()
    gc.freeze()
    gen0, gen1, _ = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2_every())
    logger.debug("gc.freeze(): %d objects out of the collector's way; full collection every %d "
                 "middle-generation collections", gc.get_freeze_count(), gen2_every())
    return True


def unfreeze_heap(threshold: tuple[int, int, int]) -> None:
    """Undo ``freeze_heap`` in a process that outlives the engine: every frozen object back in
    the oldest generation, the collection thresholds as they were (``gc.get_threshold()`` taken
    before the freeze)."""
    gc.unfreeze()
    gc.set_threshold(*threshold)


def freeze_heap_for_engine(device: str) -> tuple[int, int, int] | None:
    """An engine in the caller's process: on a GPU (the host must keep pace with the device)
    freeze the heap and return the thresholds ``unfreeze_heap`` restores at shutdown; on the CPU
    (the model's compute hides any pause), or when disabled, do nothing and return None."""
    threshold = gc.get_threshold()
    if device != "cuda" or not freeze_heap():
        return None
    return threshold
