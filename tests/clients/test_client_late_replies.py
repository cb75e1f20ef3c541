"""Client.step when a late reply to an earlier request comes back before its own (a daemon that answered a call
after the client gave up on it): the call still gets its own reply, on its short path and its general one. The
daemon here is a real ROUTER socket on loopback that answers every request twice: first as if it were the
previous request (its id less one), then as itself."""
import threading

import msgpack
import numpy as np
import pytest
import zmq

from clients import Client, ServerError
from lstm_stream import protocol as P
from lstm_stream.messages import Reply

O = 3


def _serve(sock, stop, codec):
    """Answer each step with y = its x's first O values plus the request id, twice (stale, then its own);
    a step whose x starts with a negative number gets an error reply as its own."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(50):
            continue
        ident, data = sock.recv_multipart()
        req = msgpack.unpackb(data)
        x = P.to_array(req["x"], "x")
        rid = req["id"]
        y = (x[:O] + rid).astype(np.float32)
        sock.send_multipart([ident, codec.reply(Reply(id=rid - 1, result={"y": y + 1000}))])
        own = codec.error(rid, P.BAD_INPUT, "negative") if x[0] < 0 else codec.reply(Reply(id=rid, result={"y": y}))
        sock.send_multipart([ident, own])


@pytest.fixture
def late_daemon():
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(sock, stop, P.Codec()), daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{port}"
    stop.set()
    t.join(5)
    sock.close(0)
    ctx.term()


def test_a_late_reply_before_its_own_is_skipped(late_daemon):
    rng = np.random.default_rng()
    with Client(late_daemon, timeout=5) as c:
        for k in range(1, 40):  # the first replies teach the reader its template; the later take the short path
            x = np.abs(rng.standard_normal(5)).astype(np.float32)
            seq = k if k % 7 == 0 else None  # (with seq: the general path, _run and _exchange)
            y = c.step("s", x, seq=seq)  # request id k: the client numbers its requests 1, 2, ...
            assert y.dtype == np.float32 and y.shape == (O,) and y.flags.writeable
            assert np.array_equal(y, (x[:O] + k).astype(np.float32))  # its own reply, not the stale one's
        x = np.full(5, -1.0, np.float32)
        with pytest.raises(ServerError, match="negative"):
            c.step("s", x)
