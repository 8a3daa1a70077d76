"""Ports for a local world (a rendezvous port and one gRPC port per worker) come from one
``free_ports`` call: distinct, and each one free to listen on once the call returns (CI once saw a
worker's gRPC port equal the rendezvous port when they were picked one after another)."""

import socket

from phase4_distributed.executors.processes import free_ports


def test_ports_of_one_call_are_distinct_and_free():
    for _ in range(20):
        ports = free_ports(8)
        assert len(set(ports)) == 8
        listeners = []
        try:
            for port in ports:  # all of them at once, as the workers and the rendezvous do
                sock = socket.socket()
                listeners.append(sock)
                sock.bind(("127.0.0.1", port))
                sock.listen()
        finally:
            for sock in listeners:
                sock.close()
