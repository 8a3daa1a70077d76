"""gRPC workers (the ``grpc`` extra): ``worker.proto``, its generated stubs, the worker service
(``server``) that ``lightvllm worker`` runs, and the health probe ``lightvllm worker-health``."""

CALL_INIT, CALL_STEP, CALL_RPC, REPLY_ERROR = "init", "execute_model", "collective_rpc", "error"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # a step of many sequences with logprobs exceeds gRPC's 4 MB
CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   # A driver started before its workers retries every <= 1 s, not gRPC's 120 s.
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
