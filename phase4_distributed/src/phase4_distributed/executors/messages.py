"""The frames between an executor and its worker processes, all plain bytes.

Engine -> workers (one broadcast): ``[kind, seq, payload]`` with kind ``S`` (a step:
``protocol.encode(SchedulerOutput)``) or ``R`` (an ``RpcRequest``). Workers -> engine:
``[kind, seq, rank, payload]`` with kind ``O`` (the output rank's ``ModelRunnerOutput``), ``E``
(a step failed on that rank: an ``RpcReply`` with the error) or ``A`` (an ``RpcReply``).
``seq`` numbers the engine's messages so a late reply to an abandoned call is recognised.
"""

from __future__ import annotations

STEP, RPC = b"S", b"R"
OUTPUT, STEP_ERROR, RPC_REPLY = b"O", b"E", b"A"


def pack_int(value: int) -> bytes:
    return value.to_bytes(8, "little")


def unpack_int(data: bytes) -> int:
    return int.from_bytes(data, "little")
