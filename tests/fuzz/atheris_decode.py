"""Optional: coverage-guided fuzzing of the decoder and the engine's wire face with Atheris (libFuzzer).

    pip install 'lstm-stream[fuzz]'         # atheris (Linux, CPython 3.11+ wheels)
    python -m tests.fuzz.atheris_decode -max_total_time=600 -rss_limit_mb=4096 [CORPUS_DIR]

Each input is one request payload: decoded as the daemon decodes it (oracle.check_decode), then sent through
an in-process engine (WireCore, one turn) and its reply checked (oracle.check_reply). The Python code of
lstm_stream/ (but its compiled kernels) and engine/ is instrumented (branch coverage guides the mutations); msgpack's C unpacker is not
(its wheel is not built with libFuzzer's instrumentation; msgpack-python is fuzzed in OSS-Fuzz). The corpus
starts from the golden vectors. Not part of the test suite: see docs/operations.md, "Fuzzing".
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: models

import atheris  # noqa: E402

# lstm_stream/ and engine/ are instrumented, but not the modules with compiled code: Numba cannot compile
# bytecode that Atheris has instrumented (its calls to atheris._trace_branch), so they are imported as they are.
ROOT = Path(__file__).resolve().parents[2]
JITTED = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "lstm_stream").rglob("*.py")
                if "@njit" in p.read_text() or "cuda.jit" in p.read_text())
with atheris.instrument_imports(include=["lstm_stream", "engine"], exclude=JITTED):
    from lstm_stream import protocol as P
    from .harness import FUZZ_CONFIG, WireTarget, make_model
    from .oracle import check_decode, check_reply
    from .strategies import golden_requests, pool_steps

MODEL = make_model()
TARGET = WireTarget(MODEL, max_streams=64)
TARGET.exchange([(m,) for m in pool_steps()])
CODEC = P.Codec(max_message_bytes=FUZZ_CONFIG["max_message_bytes"])
LIMITS = dict(output_size=MODEL.output_size, state_shape=(MODEL.num_layers, MODEL.hidden_size),
              max_message_bytes=FUZZ_CONFIG["max_message_bytes"])


def test_one_input(data: bytes) -> None:
    """One payload: decode it, then serve it; a Failure (or any other exception) is a finding."""
    global TARGET
    check_decode(CODEC, data)
    if b"witness" not in data:
        reply, = TARGET.exchange([(data,)])
        check_reply((data,), reply, **LIMITS)
    if len(TARGET.wire.streams) > 48:  # keep the store from filling up (store_full for everything after)
        TARGET = WireTarget(MODEL, max_streams=64)
        TARGET.exchange([(m,) for m in pool_steps()])


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus directory: one seeded from the vectors
        corpus = Path(tempfile.mkdtemp(prefix="lss-atheris-"))
        for k, data in enumerate(golden_requests()):
            (corpus / f"golden-{k}").write_bytes(data)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
