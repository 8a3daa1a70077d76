"""Executors by name (vLLM's ``distributed_executor_backend``): ``uni`` lives here; later phases
add theirs through the ``lightvllm.executors`` entry-point group, so phase 3 never imports them."""

from __future__ import annotations

import logging
from importlib import metadata

logger = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "lightvllm.executors"
_REGISTRY: dict[str, type] = {}


class UnknownExecutorError(ValueError):
    pass


def register_executor(name: str, cls: type) -> None:
    _REGISTRY[name] = cls


def _load_entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            try:
                _REGISTRY[ep.name] = ep.load()
            except ImportError as error:  # an optional extra (e.g. ray) not installed
                logger.debug("executor %r unavailable: %s", ep.name, error)


def get_executor_class(name: str) -> type:
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownExecutorError(
            f"distributed_executor_backend {name!r} is not available (known: {known}); "
            f"'mp', 'ray' and 'grpc' come with phase4_distributed (pip install -e phase4_distributed)")
    return _REGISTRY[name]
