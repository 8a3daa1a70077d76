"""``gc.freeze()`` once start-up is over, in the engine-core process and in the API process.

Start-up leaves millions of long-lived objects (modules, the model's parameters and their
metadata, the tokenizer, compiled graphs' bookkeeping). CPython's cyclic collector would walk all
of them at every full collection, and the steady state (one output message per step, thousands
of small objects a second) triggers collections often; each is a pause of the thread that runs
the step loop or the event loop. ``gc.freeze()`` moves everything alive now into a permanent
generation that collections skip. ``LIGHTVLLM_GC_FREEZE=0`` turns it off: the measured baseline
(docs/benchmarks.md, "uvloop and gc.freeze, measured").
"""

from __future__ import annotations

import gc
import logging
import os

logger = logging.getLogger(__name__)
ENV = "LIGHTVLLM_GC_FREEZE"


def gc_freeze_enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def freeze_heap() -> bool:
    """Collect once, then freeze every surviving object; False (nothing done) when disabled."""
    if not gc_freeze_enabled():
        logger.info("%s=0: the start-up heap stays in the collector's generations", ENV)
        return False
    gc.collect()
    gc.freeze()
    logger.debug("gc.freeze(): %d objects out of the collector's way", gc.get_freeze_count())
    return True
