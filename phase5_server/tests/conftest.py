"""Servers shared by the phase-5 tests: real uvicorn on a free localhost port, in a thread.

``smol_server``: the embedded SmolLM2 (fp32) for behaviour the openai client checks against the
offline ``LLM``; ``tiny_server``: a 2-layer random-weight model with SmolLM2's tokenizer for error
paths and fuzzing, where only the HTTP layer matters and speed does.
"""

from __future__ import annotations

import pytest

from phase3_scheduling import EngineArgs
from phase5_server.api_server import ServerConfig
from phase5_server.serving_engine import AdmissionLimits
from phase5_server.testing import serve_in_thread, tiny_engine_args


@pytest.fixture(scope="session")
def smol_server():
    args = EngineArgs(dtype="float32", device="cpu", max_model_len=1024, max_num_seqs=256)
    with serve_in_thread(ServerConfig(args, served_model_name="smollm2")) as handle:
        yield handle


@pytest.fixture(scope="session")
def tiny_server():
    # at most 16 sequences per request: fuzzed n=128 requests are refused, not run for minutes
    config = ServerConfig(tiny_engine_args(), served_model_name="tiny", max_body_bytes=64 * 1024,
                          admission=AdmissionLimits(max_seqs_per_request=16))
    with serve_in_thread(config) as handle:
        yield handle


@pytest.fixture(scope="session")
def offline_llm(smol_server):
    """The offline API on the same weights (its own engine), the reference for greedy outputs."""
    from phase3_scheduling import LLM

    return LLM(None, dtype="float32", device="cpu", max_model_len=1024, kv_cache_gib=0.25)
