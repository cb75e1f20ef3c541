"""The fuzz harness: the model under fuzz, witness streams and their offline twin, and the two targets (the
engine in-process through WireCore, a live daemon over ZeroMQ), each sending fuzzed messages and checking
every reply (oracle.py).

    model = make_model()
    target = WireTarget(model)                 # or DaemonTarget(endpoint, model)
    witnesses = Witnesses(model, tag="ex1")
    target.run(cases, witnesses, tally)        # fuzz and witness steps interleaved; Failure on a broken rule
    target.check_witnesses(witnesses)          # each witness's state bit for bit against the offline twin

A witness stream is stepped with known inputs between (and, in-process, in the same turns as) the fuzzed
messages; the fuzz cannot name one (strategies.clean). Its replies and its final state must equal, bit for bit,
an in-process Streams stepped with the same inputs: whatever the fuzz sent, it changed no other stream.
"""
from __future__ import annotations

import collections
from pathlib import Path

import msgpack
import numpy as np
import zmq

import lstm_stream as ls
from engine.core import EngineConfig, EngineCore
from engine.wire import WireCore
from lstm_stream import protocol as P

from .oracle import Failure, check_reply, lenient, payload_frames
from .strategies import HIDDEN, LAYERS, WIDTH, clean, pool_steps

FUZZ_CONFIG = dict(max_message_bytes=65536, max_request_samples=64, max_request_new_streams=8)
RECV_TIMEOUT_MS = 20_000  # a reply that does not come within this is a failure (the daemon hung or died)


def live_args(model_path, snapshot_dir) -> list:
    """`serve` arguments of the daemon under fuzz: FUZZ_CONFIG's bounds, a snapshot directory (so `snapshot`
    works and the step log is on) and `--fsync always` (every acknowledged change survives a kill -9)."""
    return ["--model", model_path, "--snapshot-dir", snapshot_dir, "--fsync", "always",
            *(a for k, v in FUZZ_CONFIG.items() for a in (f"--{k.replace('_', '-')}", v))]


def make_model():
    """The model under fuzz: I = WIDTH inputs, L = LAYERS layers of HIDDEN, autoregressive (forecast works)."""
    from models import random_model
    return random_model(np.random.default_rng(18), I=WIDTH, H=HIDDEN, L=LAYERS, O=WIDTH, head_activation="none")


class Tally(collections.Counter):
    """Counts per outcome ("step:ok", "step:bad_input", "-:bad_message") and per case kind ("kind:mutated")."""

    def report(self) -> str:
        ops = collections.defaultdict(dict)
        for key, n in self.items():
            op, _, outcome = key.partition(":")
            ops[op][outcome] = n
        return "\n".join(f"  {op:10} " + ", ".join(f"{o} {n}" for o, n in sorted(v.items(), key=lambda t: -t[1]))
                         for op, v in sorted(ops.items()))


class Witnesses:
    """n witness streams: known inputs (seeded), sent as array maps or lists, some with seq; and their offline
    twin, an in-process Streams stepped with the same inputs in the same chunks."""

    def __init__(self, model, tag, n: int = 3, seed: int = 0):
        self.ids = [f"witness/{tag}/{k}" for k in range(n)]
        self.twin = ls.Streams(model)
        self.rng = np.random.default_rng(seed)
        self.inputs = {sid: [] for sid in self.ids}
        self._sent = 0

    def step_messages(self) -> list:
        """[(request id, encoded step, the twin's outputs)]: one step of each witness."""
        out = []
        for k, sid in enumerate(self.ids):
            T = int(self.rng.integers(1, 4))
            x = self.rng.normal(0, 2, (T, WIDTH)).astype(np.float32)
            self.inputs[sid].append(x)
            wire = x[0] if T == 1 and k % 2 else x  # rank 1 for one sample, sometimes
            y = self.twin.step(sid, wire)
            fields = {"stream": sid, "x": wire.tolist() if self._sent % 3 == 1 else P.array_map(wire)}
            if k == 0:
                fields["seq"] = self.twin.get_state(sid).steps
            self._sent += 1
            rid = f"w{self._sent}"
            out.append((rid, msgpack.packb({"v": 1, "id": rid, "op": "step", **fields}), y))
        return out

    def check_step(self, reply: bytes, y) -> None:
        r = msgpack.unpackb(reply, raw=False)
        if not r.get("ok"):
            raise Failure(f"a witness step was refused: {r!r:.300}")
        got = np.asarray(P.to_array(r["y"]))
        if got.dtype != y.dtype or got.shape != y.shape or got.tobytes() != y.tobytes():
            raise Failure(f"witness step {r['id']}: outputs {got!r} differ from the offline run's {y!r}")

    def state_messages(self) -> list:
        return [(sid, msgpack.packb({"v": 1, "id": f"s{k}", "op": "get_state", "stream": sid}))
                for k, sid in enumerate(self.ids)]

    def check_state(self, sid, reply: bytes) -> None:
        r = msgpack.unpackb(reply, raw=False)
        want = self.twin.get_state(sid)
        if not r.get("ok"):
            raise Failure(f"get_state of witness {sid} failed: {r!r:.300}")
        for name in ("h", "c"):
            got, ref = np.asarray(P.to_array(r[name])), getattr(want, name)
            if got.dtype != ref.dtype or got.tobytes() != ref.tobytes():
                raise Failure(f"witness {sid}: {name} differs from the offline run's, bit for bit:\n{got}\n{ref}")
        if r["steps"] != want.steps:
            raise Failure(f"witness {sid}: steps {r['steps']}, offline {want.steps}")

    def check_reference(self, model, tol: float = 1e-4) -> None:
        """The twin itself against tests/reference.py (the float64 oracle), to float32 rounding."""
        from reference import reference_run
        for sid, xs in self.inputs.items():
            if xs:
                _, h, c = reference_run(model, np.concatenate(xs))
                st = self.twin.get_state(sid)
                np.testing.assert_allclose(st.h, h, rtol=tol, atol=tol)
                np.testing.assert_allclose(st.c, c, rtol=tol, atol=tol)


class Target:
    """What both targets share: the oracle's arguments and the per-case check."""

    def __init__(self, model, max_message_bytes: int, extra_codes=frozenset()):
        self.model, self.extra_codes = model, extra_codes
        self.limits = dict(output_size=model.output_size, state_shape=(model.num_layers, model.hidden_size),
                           max_message_bytes=max_message_bytes)
        self.last_case = None  # the case being checked when a Failure is raised (for the failure file)

    def check(self, case, reply: bytes, tally: Tally) -> str:
        self.last_case = case
        outcome = check_reply(case.frames, reply, extra_codes=self.extra_codes, **self.limits)
        tally[outcome] += 1
        tally[f"kind:{case.kind}"] += 1
        return outcome


class WireTarget(Target):
    """The engine in-process (EngineCore behind WireCore, a fresh one per target): requests queued with tags,
    served in turns of mixed requests like the daemon's, every reply matched to its request by tag."""

    def __init__(self, model, *, max_streams: int = 64, keys=None, **config):
        config = {**FUZZ_CONFIG, **config}
        access = None
        if keys is not None:  # CURVE roles with namespaces: the fuzz as a step key, the rest as an admin key
            access, self.fuzz_user, self.admin_user = _access(keys)
        super().__init__(model, config["max_message_bytes"], frozenset({P.FORBIDDEN}) if keys else frozenset())
        self.wire = WireCore(EngineCore(ls.Streams(model, max_streams=max_streams), EngineConfig(**config),
                                        access=access))
        if keys is None:
            self.fuzz_user = self.admin_user = None

    def exchange(self, items, users=None) -> list:
        """Submit every (frames) payload in one go, then serve turns until none is queued; replies in order.
        `users`: the CURVE user id each comes from (default: the admin key's, when there are keys)."""
        wire, replies = self.wire, {}
        users = users or [self.admin_user] * len(items)
        for k, (frames, user) in enumerate(zip(items, users, strict=True)):
            frames = payload_frames(frames)
            if len(frames) != 1:  # what server.py answers to another frame count
                replies[k] = wire.reject(P.BAD_MESSAGE, f"expected one payload frame, got {len(frames)}")
                continue
            reply = wire.submit((b"fuzz", k), frames[0], user)
            if reply is not None:
                replies[k] = reply
        while wire.pending:
            for tag, reply in wire.step():
                replies[tag[1]] = reply
        return [replies[k] for k in range(len(items))]

    def store(self) -> dict:
        """Every stream's state, {id: (h bytes, c bytes, steps)}: what an error reply must leave unchanged."""
        streams = self.wire.streams
        out = {}
        for sid in streams.ids():
            st = streams.get_state(sid)
            out[sid] = (st.h.tobytes(), st.c.tobytes(), st.steps)
        return out

    def run(self, cases, witnesses: Witnesses, tally: Tally, *, batched: bool) -> None:
        """Batched: every case and one step of each witness in one turn. Else one case at a time, and every
        error reply must leave every stream as it was (docs/protocol.md: an error reply means nothing changed)."""
        cases = [c for c in cases if clean(b"".join(c.frames))]
        if batched:
            steps = witnesses.step_messages()  # (with keys: the fuzz as its key, the witnesses as the admin)
            replies = self.exchange([c.frames for c in cases] + [(m,) for _, m, _ in steps],
                                    [self.fuzz_user] * len(cases) + [self.admin_user] * len(steps))
            for case, reply in zip(cases, replies):
                self.check(case, reply, tally)
            for (_, _, y), reply in zip(steps, replies[len(cases):]):
                witnesses.check_step(reply, y)
            return
        for case in cases:
            before = self.store()
            reply, = self.exchange([case.frames], [self.fuzz_user])
            if not self.check(case, reply, tally).endswith(":ok") and self.store() != before:
                raise Failure(f"an error reply, yet the streams changed: {lenient(case.data)!r:.300}")
        for _, m, y in witnesses.step_messages():
            witnesses.check_step(self.exchange([(m,)])[0], y)

    def check_witnesses(self, witnesses: Witnesses) -> None:
        for sid, m in witnesses.state_messages():
            witnesses.check_state(sid, self.exchange([(m,)])[0])


class DaemonTarget(Target):
    """A live daemon: fuzzed messages on one DEALER connection (one at a time, or a burst of them in flight),
    witness steps on another, sent just before each fuzzed message so that both land in the same turns."""

    def __init__(self, endpoint: str, model, max_message_bytes: int = FUZZ_CONFIG["max_message_bytes"]):
        super().__init__(model, max_message_bytes)
        ctx = zmq.Context.instance()
        self.fuzz, self.witness = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
        for s in (self.fuzz, self.witness):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
            s.connect(endpoint)

    def seed_pool(self) -> None:
        """Create the pool's streams (strategies.POOL), so that the fuzz's ops meet streams that exist."""
        for m in pool_steps():
            r = msgpack.unpackb(self.call(m), raw=False)
            if not r.get("ok"):
                raise RuntimeError(f"could not create the pool's streams: {r!r}")

    def close(self) -> None:
        self.fuzz.close(0)
        self.witness.close(0)

    def _recv(self, sock, what) -> bytes:
        try:
            return sock.recv_multipart()[-1]  # (after the empty delimiter, if the request had one)
        except zmq.Again:
            raise Failure(f"no reply within {RECV_TIMEOUT_MS} ms to {what}: the daemon hung or died") from None

    def call(self, data: bytes) -> bytes:
        """One request on the witness connection, its reply."""
        self.witness.send(data)
        return self._recv(self.witness, "a witness request")

    def run(self, cases, witnesses: Witnesses, tally: Tally, *, batched: bool) -> None:
        """One case at a time (each reply checked against its request), or all in flight at once (each reply
        checked against the requests of its id); witness steps go out alongside, their replies checked last."""
        cases = [c for c in cases if clean(b"".join(c.frames))]
        pending = []
        for k, case in enumerate(cases):
            if k % 4 == 0:
                pending += witnesses.step_messages()
                for _, m, _ in pending[-len(witnesses.ids):]:
                    self.witness.send(m)
            self.fuzz.send_multipart(case.frames)
            if not batched:
                self.check(case, self._recv(self.fuzz, f"{case.frames!r:.200}"), tally)
        if batched:
            self._check_burst(cases, [self._recv(self.fuzz, "a burst") for _ in cases], tally)
        for _, _, y in pending:
            witnesses.check_step(self._recv(self.witness, "a witness step"), y)

    def _check_burst(self, cases, replies, tally) -> None:
        """Replies of a burst come in any order (§7): each request must get one reply that passes the oracle
        against it (a matching of requests to replies, found by augmenting paths; the bursts are small)."""
        fits = []  # fits[r]: {case index: outcome} of the cases reply r passes against
        for reply in replies:
            ok = {}
            for k, case in enumerate(cases):
                try:
                    ok[k] = check_reply(case.frames, reply, extra_codes=self.extra_codes, **self.limits)
                except Failure:
                    pass
            fits.append(ok)
        owner = {}  # case index -> reply index

        def place(r, seen) -> bool:
            for k in fits[r]:
                if k not in seen:
                    seen.add(k)
                    if k not in owner or place(owner[k], seen):
                        owner[k] = r
                        return True
            return False
        for r in range(len(replies)):
            if not place(r, set()):
                self.last_case = cases[0] if len(cases) == 1 else None
                detail = "; ".join(_why(c, replies[r], self) for c in cases[:3])
                raise Failure(f"reply {replies[r][:200]!r} of a burst of {len(cases)} fits none of its requests "
                              f"left: {detail}")
        for k, r in owner.items():
            tally[fits[r][k]] += 1
            tally[f"kind:{cases[k].kind}"] += 1

    def check_witnesses(self, witnesses: Witnesses) -> None:
        for sid, m in witnesses.state_messages():
            witnesses.check_state(sid, self.call(m))

    def alive(self) -> None:
        r = msgpack.unpackb(self.call(msgpack.packb({"v": 1, "id": "alive", "op": "ping"})), raw=False)
        if not r.get("ok"):
            raise Failure(f"ping failed after the fuzz: {r!r}")

    def dump(self) -> dict:
        """Every stream's state, {id: (h bytes, c bytes, steps)}, read over the wire."""
        r = msgpack.unpackb(self.call(msgpack.packb({"v": 1, "id": "ls", "op": "streams"})), raw=False)
        out = {}
        for sid in r["streams"]:
            s = msgpack.unpackb(self.call(msgpack.packb({"v": 1, "id": "g", "op": "get_state", "stream": sid})),
                                raw=False)
            out[sid] = (s["h"]["data"], s["c"]["data"], s["steps"])
        return out


def _why(case, reply, target) -> str:
    try:
        check_reply(case.frames, reply, extra_codes=target.extra_codes, **target.limits)
        return "fits"
    except Failure as e:
        return str(e)


def _access(directory):
    """(Access with namespaces, the step key's user id, the admin key's): two key pairs made in `directory`."""
    import zmq.auth

    from engine.access import Access
    directory = Path(directory)
    users = []
    for role in ("step", "admin"):
        (directory / role).mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(directory / role), role)
        Path(secret).unlink()  # (only public keys belong in an allow-list directory)
        users.append(zmq.auth.load_certificate(public)[0].decode("ascii"))
    access = Access(str(directory / "step"), str(directory / "admin"), namespaces=True)
    return access, users[0], users[1]
