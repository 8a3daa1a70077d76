from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RpcBytes(_message.Message):
    __slots__ = ("method", "payload")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    method: str
    payload: bytes
    def __init__(self, method: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class Empty(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("ok", "rank", "world_size", "state")
    OK_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    rank: int
    world_size: int
    state: str
    def __init__(self, ok: _Optional[bool] = ..., rank: _Optional[int] = ..., world_size: _Optional[int] = ..., state: _Optional[str] = ...) -> None: ...
