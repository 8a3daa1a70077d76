"""Executors whose workers live outside the engine's process: ``mp`` (subprocesses over ZMQ) and
``ray`` (Ray actors). Phase 3 finds them by name through the ``lightvllm.executors`` entry points;
both drive the same ``Worker`` with the same msgpack-encoded step and RPC messages."""
