"""The long fuzz run: the suite's properties with a large budget, until the time is up or one fails.

    python -m tests.fuzz --minutes 30                     # decoder, engine in-process and a live daemon
    python -m tests.fuzz --minutes 5 --targets decoder,engine --seed 7
    python -m tests.fuzz --replay fuzz-failures/engine-1733280000.json

Run from the repository's root. Prints counts per op and outcome as it goes; on a failure it saves the
(shrunk) failing example to --out as JSON (what was sent, hex) and exits 1; --replay runs a saved example again.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: daemons, models, reference

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from . import properties as F  # noqa: E402
from . import strategies as S  # noqa: E402
from .harness import DaemonTarget, Tally, live_args, make_model  # noqa: E402

TARGETS = ("decoder", "engine", "daemon")
PER_ROUND = {"decoder": 500, "memory": 50, "roundtrip": 200, "engine": 60, "keys": 30, "daemon": 30}
BATCH = st.lists(S.message(), min_size=1, max_size=16)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long to run (default 5)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed of the first round (default: random)")
    ap.add_argument("--out", default="fuzz-failures", help="where a failing example is saved (default %(default)s)")
    ap.add_argument("--replay", metavar="FILE", help="run a saved failing example again and exit")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(Path(args.replay))
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {', '.join(sorted(unknown))}; expected some of {', '.join(TARGETS)}")
    return Run(targets, args.minutes, args.seed, Path(args.out)).run()


class Run:
    """Rounds of every target's properties (PER_ROUND examples each) until the deadline or a failure."""

    def __init__(self, targets, minutes, first_seed, out: Path):
        self.targets, self.out = targets, out
        self.tallies = {t: Tally() for t in targets}  # counts per op and outcome, per target
        self.deadline = time.monotonic() + 60 * minutes
        self.first_seed = first_seed if first_seed is not None else int(time.time()) % 2**31
        self.model = make_model()
        self.current = None  # what the property being run was given (the last call is the shrunk failure)
        self.examples = 0

    def run(self) -> int:
        tmp = tempfile.TemporaryDirectory(prefix="lss-fuzz-")
        self.keys = Path(tmp.name) / "keys"  # CURVE keys of the "keys" property (a step key, an admin key)
        daemon = target = None
        try:
            if "daemon" in self.targets:
                daemon, target = self._start_daemon(Path(tmp.name))
            properties = self._properties(target)
            started, rnd = time.monotonic(), 0
            while time.monotonic() < self.deadline:
                for name, prop in properties:
                    if time.monotonic() >= self.deadline:
                        break
                    try:
                        hypothesis_seed(self.first_seed + rnd)(prop)()
                    except Exception as e:  # noqa: BLE001 (a failed property, whatever it raised)
                        return self._failed(name, e)
                rnd += 1
                print(f"[{time.monotonic() - started:7.0f} s] round {rnd} (seed {self.first_seed + rnd - 1}): "
                      f"{self.examples} examples, {self._messages()} messages checked", flush=True)
            if daemon is not None:
                self.current = {"target": "daemon-restart"}
                _restart_check(daemon, target)
                print("the daemon, killed (-9) and restarted, gave back every stream bit for bit")
        except Exception as e:  # noqa: BLE001 (the daemon's start or its restart check)
            return self._failed((self.current or {}).get("target", "setup"), e)
        finally:
            if target is not None:
                target.close()
            if daemon is not None:
                daemon.stop()
            tmp.cleanup()
        print(f"done: {self.examples} examples, {self._messages()} messages, no failure\n{self._report()}")
        return 0

    def _start_daemon(self, tmp: Path):
        from daemons import Daemon, free_tcp_endpoint
        self.model.save(tmp / "model.npz")
        daemon = Daemon(free_tcp_endpoint(), [str(a) for a in live_args(tmp / "model.npz", tmp / "snap")],
                        tmp / "daemon.log").start()
        target = DaemonTarget(daemon.endpoint, self.model)
        target.seed_pool()
        print(f"daemon on {daemon.endpoint} (log {daemon.log_path}: removed at the end)", flush=True)
        return daemon, target

    def _properties(self, target) -> list:
        """(name, hypothesis test) per property of the chosen targets."""
        def prop(name, strategy, body):
            @settings(max_examples=PER_ROUND[name], deadline=None, database=None, derandomize=False,
                      suppress_health_check=list(HealthCheck))
            @given(strategy)
            def run(drawn):
                self.current = {"target": name, "drawn": drawn}
                self.examples += 1
                body(drawn)
            return name, run

        model, tallies = self.model, self.tallies
        out = []
        if "decoder" in self.targets:
            out += [prop("decoder", S.message(), lambda c: F.decode_only(c, tallies["decoder"])),
                    prop("memory", st.one_of(F.adversarial(), S.message().map(lambda c: c.data)), F.decode_memory),
                    prop("roundtrip", S.valid_request(), lambda r: F.round_trip(*r))]
        if "engine" in self.targets:
            out.append(prop("engine", st.tuples(BATCH, st.booleans(), st.integers(0, 2**16)),
                            lambda d: F.engine_in_process(model, d[0], d[1], d[2], tallies["engine"])))
            out.append(prop("keys", st.tuples(BATCH, st.booleans(), st.integers(0, 2**16)),
                            lambda d: F.engine_in_process(model, d[0], d[1], d[2], tallies["engine"],
                                                          keys=self.keys / str(d[2]))))
        if "daemon" in self.targets:
            out.append(prop("daemon", st.tuples(BATCH, st.booleans(), st.integers(0, 2**16)),
                            lambda d: F.live_daemon(target, model, d[0], d[1], d[2], tallies["daemon"])))
        return out

    def _messages(self) -> int:
        """Messages sent and checked (decoded, or sent to the engine or the daemon)."""
        return sum(n for t in self.tallies.values() for k, n in t.items() if not k.startswith("kind:")
                   and (k.startswith("decode") or k.endswith(":decoded"))) + \
            sum(n for t in self.tallies.values() for k, n in t.items() if k.startswith("kind:"))

    def _report(self) -> str:
        return "\n".join(f"{name}:\n{t.report()}" for name, t in self.tallies.items() if t)

    def _failed(self, name, e) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / f"{name}-{int(time.time())}.json"
        record = {"target": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                  **_portable((self.current or {}).get("drawn"))}
        path.write_text(json.dumps(record, indent=1))
        print(f"FAILED ({name}): {type(e).__name__}: {str(e)[:2000]}\nthe example is in {path}; run it again with "
              f"python -m tests.fuzz --replay {path}\n{self._report()}", file=sys.stderr)
        return 1


def _portable(drawn) -> dict:
    """A drawn example as JSON: cases as their kind and frames (hex); other values as they are."""
    if isinstance(drawn, S.Case):
        return {"cases": [_case(drawn)]}
    if isinstance(drawn, bytes):
        return {"data": drawn.hex()}
    if isinstance(drawn, tuple) and drawn and isinstance(drawn[0], list):  # (cases, batched, seed)
        return {"cases": [_case(c) for c in drawn[0]], "batched": drawn[1], "seed": drawn[2]}
    return {"drawn": repr(drawn)}


def _case(c: S.Case) -> dict:
    return {"kind": c.kind, "frames": [f.hex() for f in c.frames]}


def replay(path: Path) -> int:
    """Run a saved failing example again (the in-process targets and the decoder; a daemon one in-process too,
    which finds most of what the daemon does)."""
    rec = json.loads(path.read_text())
    cases = [S.Case(c["kind"], tuple(bytes.fromhex(f) for f in c["frames"])) for c in rec.get("cases", [])]
    try:
        if "data" in rec:
            F.decode_memory(bytes.fromhex(rec["data"]))
        elif rec["target"] in ("decoder", "memory") and cases:
            F.decode_only(cases[0])
            F.decode_memory(cases[0].data)
        elif "batched" in rec:
            keys = tempfile.mkdtemp(prefix="lss-fuzz-keys-") if rec["target"] == "keys" else None
            F.engine_in_process(make_model(), cases, rec["batched"], rec["seed"], keys=keys)
        else:
            print(f"nothing to replay in {path} (target {rec['target']}: {rec.get('drawn')})", file=sys.stderr)
            return 2
    except Exception as e:  # noqa: BLE001
        print(f"still fails: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("passes now")
    return 0


def _restart_check(daemon, target) -> None:
    """Kill the daemon (-9), start it again on its log, and compare every stream with the state before."""
    from daemons import Daemon
    from .oracle import Failure
    before = target.dump()
    daemon.stop(signal.SIGKILL)
    again = Daemon(daemon.endpoint, daemon.args, daemon.log_path).start()
    daemon.proc = again.proc  # (stopped with the first one's handle at the end)
    after = target.dump()
    if after != before:
        lost = sorted(map(repr, set(before) ^ set(after)))[:5]
        changed = sorted(repr(k) for k in set(before) & set(after) if before[k] != after[k])[:5]
        raise Failure(f"after a kill -9 and a restart the streams differ: {len(before)} before, {len(after)} after; "
                      f"missing or new {lost}, changed {changed}")


if __name__ == "__main__":
    sys.exit(main())
