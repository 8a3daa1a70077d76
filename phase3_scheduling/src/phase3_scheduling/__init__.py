"""LightvLLM phase 3: requests and sampling, the continuous-batching scheduler, the model runner,
executors, ``LLMEngine``, the offline ``LLM`` API and ``AsyncLLMEngine`` for streaming."""

from .async_engine import AsyncLLMEngine, EngineDeadError, EngineStepError
from .config import EngineArgs, SchedulerConfig
from .engine_core import EngineCore
from .executor import Executor, UniProcExecutor
from .llm import LLM
from .llm_engine import LLMEngine
from .outputs import CompletionOutput, Logprob, RequestOutput
from .request import Request, RequestStatus
from .sampling_params import SamplingParams, SamplingParamsError
from .scheduler import Scheduler, SchedulerOutput
from .validation import (PromptTooLongError, RequestLimits, RequestTooLargeError,
                         RequestValidationError, validate_request)

__all__ = [
    "AsyncLLMEngine", "EngineDeadError", "EngineStepError", "EngineCore", "RequestTooLargeError",
    "EngineArgs", "SchedulerConfig", "Executor",
    "UniProcExecutor", "LLM", "LLMEngine", "PromptTooLongError", "CompletionOutput", "Logprob",
    "RequestOutput", "Request", "RequestStatus", "SamplingParams", "SamplingParamsError",
    "Scheduler", "SchedulerOutput", "RequestLimits",
    "RequestValidationError", "validate_request",
]
