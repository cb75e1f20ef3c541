"""The ZeroMQ shell in-process (a thread): envelopes, frame errors, dropped replies, clean stop."""
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq
from daemons import short_ipc_dir
from models import random_model

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.server import Server

TIMEOUT_MS = 5000


@pytest.fixture(scope="module")
def model():
    return random_model(np.random.default_rng(6), I=3, H=8, L=1, O=3, head_activation="none")


@pytest.fixture
def serve(model):
    """serve(bind=None, **config) -> (server, endpoint), run in a thread; stopped and joined at teardown."""
    started, ipc = [], short_ipc_dir()

    def start(bind=None, **config):
        core = EngineCore(ls.Streams(model), EngineConfig(**config))
        server = Server(core, bind or f"ipc://{ipc}/s{len(started)}.sock")
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        return server, server.endpoints[0]

    yield start
    for server, thread in started:
        server.stop()
        thread.join(10)
        assert not thread.is_alive()


def socket(kind, endpoint, **opts):
    s = zmq.Context.instance().socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    for k, v in opts.items():
        s.setsockopt(getattr(zmq, k), v)
    s.connect(endpoint)
    return s


def ask(sock, msg, *frames):
    sock.send_multipart([*frames, msgpack.packb(msg)])
    return msgpack.unpackb(sock.recv_multipart()[-1])


def test_req_socket_and_tcp_wildcard_bind(serve):
    server, endpoint = serve("tcp://127.0.0.1:*")
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
    with socket(zmq.REQ, endpoint) as req:
        reply = ask(req, {"v": 1, "id": "r1", "op": "step", "stream": "a", "x": [1, 2, 3], "lists": True})
    assert reply["id"] == "r1" and reply["ok"] and len(reply["y"]) == 3


def test_dealer_with_delimiter_and_wrong_frame_counts(serve):
    server, endpoint = serve()
    with socket(zmq.DEALER, endpoint) as d:
        d.send_multipart([b"", msgpack.packb({"v": 1, "id": 1, "op": "ping"})])
        frames = d.recv_multipart()
        assert frames[0] == b"" and msgpack.unpackb(frames[1])["ok"]
        d.send_multipart([b"one", b"two"])
        r = msgpack.unpackb(d.recv_multipart()[-1])
        assert r["error"]["code"] == "bad_message" and "frames" in r["error"]["message"]
        assert ask(d, {"v": 1, "id": 2, "op": "ping"})["ok"]


def test_replies_to_a_client_that_does_not_read_are_counted_as_dropped(serve):
    server, endpoint = serve(hwm=2)
    with socket(zmq.DEALER, endpoint, RCVHWM=1, RCVBUF=4096) as d:
        d.send(msgpack.packb({"v": 1, "id": 0, "op": "step", "stream": "a", "x": [1, 2, 3]}))
        d.recv()
        for k in range(40):  # each reply ~240 KB: the socket buffers fill long before 40
            d.send(msgpack.packb({"v": 1, "id": k, "op": "forecast", "stream": "a", "horizon": 20_000}))
        deadline = time.monotonic() + 20
        while server.core.metrics["replies_dropped"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.core.metrics["replies_dropped"] > 0
    with socket(zmq.DEALER, endpoint) as d:  # everyone else is still served
        assert ask(d, {"v": 1, "id": 1, "op": "ping"})["ok"]


def test_stop_answers_what_was_queued_then_returns(model, tmp_path):
    core = EngineCore(ls.Streams(model), EngineConfig(max_batch=1))
    server = Server(core, f"ipc://{short_ipc_dir()}/s.sock")
    with socket(zmq.DEALER, server.endpoints[0]) as d:
        for k in range(5):
            d.send(msgpack.packb({"v": 1, "id": k, "op": "step", "stream": "a", "x": [1, 2, 3]}))
        time.sleep(0.2)
        thread = threading.Thread(target=server.run, daemon=True)
        server._drain()  # read all five before the loop starts: the loop must answer them despite stop()
        server.stop()
        thread.start()
        thread.join(10)
        assert not thread.is_alive()
        ids = [msgpack.unpackb(d.recv())["id"] for _ in range(5)]
    assert ids == list(range(5)) and core.streams.stream_info("a")["steps"] == 5
