"""The worker side of the step protocol: a ``Worker`` per rank owns a ``ModelRunner``, which keeps
its requests in a persistent ``InputBatch`` and turns each step message into one forward pass."""

from .model_runner import ModelRunner
from .worker import Worker

__all__ = ["ModelRunner", "Worker"]
