"""The API process's socket to the engine core never blocks: with no core connected (gone, or
stuck in its teardown with its sockets closed) a send fails at once, and with a core connected
sends queue however far it is behind (no high-water mark). Real zmq sockets over loopback."""

from __future__ import annotations

import time

import pytest
import zmq

from phase3_scheduling.engine_start import EngineNotConnectedError, make_inbox, send_nowait

ZMQ_DEFAULT_HWM = 1000


@pytest.fixture
def inbox():
    ctx = zmq.Context()
    sock = make_inbox(ctx, "tcp://127.0.0.1:*")
    yield ctx, sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    ctx.destroy(linger=0)


def test_no_core_connected_fails_at_once(inbox):
    _, sock, _ = inbox
    start = time.monotonic()
    with pytest.raises(EngineNotConnectedError, match="not connected"):
        send_nowait(sock, [b"A", b"request"])
    assert time.monotonic() - start < 1.0


def test_a_core_that_disconnects_makes_the_next_send_fail(inbox):
    ctx, sock, addr = inbox
    core = ctx.socket(zmq.PULL)
    core.connect(addr)
    assert sock.poll(5000, zmq.POLLOUT)
    send_nowait(sock, [b"A", b"1"])
    assert core.recv_multipart() == [b"A", b"1"]
    core.close(linger=0)  # the core's teardown closed its socket; its process may live on
    deadline = time.monotonic() + 5
    while True:
        try:
            send_nowait(sock, [b"X", b"abort"])
        except EngineNotConnectedError:
            break
        assert time.monotonic() < deadline, "sends still accepted 5 s after the core went away"
        time.sleep(0.05)


def test_a_slow_core_gets_every_message_beyond_zmqs_default_limit(inbox):
    ctx, sock, addr = inbox
    core = ctx.socket(zmq.PULL)
    core.setsockopt(zmq.RCVHWM, 1)  # the core reads nothing until all are sent
    core.connect(addr)
    assert sock.poll(5000, zmq.POLLOUT)
    count = 3 * ZMQ_DEFAULT_HWM
    for i in range(count):
        send_nowait(sock, [b"A", str(i).encode()])
    got = [core.recv_multipart()[1] for _ in range(count)]
    assert got == [str(i).encode() for i in range(count)]
