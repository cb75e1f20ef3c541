"""Smoke test of bench/: the modules import, and the kernel cross-check runs at tiny size and can fail.
No timing is asserted anywhere: the benchmarks measure, they do not judge."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed with the package; it runs from a checkout
    sys.path.insert(0, str(ROOT))

from bench import common, contenders as C  # noqa: E402

pytest.importorskip("torch")
TINY = C.Spec(I=3, H=5, L=2, O=2)


def test_bench_modules_import():
    import importlib
    for name in ("bench.__main__", "bench.kernel", "bench.server", "bench.startup", "bench.memory", "bench.peak",
                 "bench.servers", "bench.ab", "bench.snapshot", "bench.overload", "bench.mqtt",
                 "bench.metrics", "bench.cluster", "bench.wire", "bench.ceiling"):
        assert callable(getattr(importlib.import_module(name), "main", None)), name


def test_kernel_crosscheck_agrees_at_tiny_size():
    assert C.crosscheck(TINY, n=3, steps=3) <= C.TOLERANCE


def test_kernel_crosscheck_catches_a_wrong_contender(monkeypatch):
    run = C.TorchLSTM.run
    monkeypatch.setattr(C.TorchLSTM, "run", lambda self, X: run(self, X) + 1e-3)
    with pytest.raises(AssertionError, match="nn.LSTM"):
        C.crosscheck(TINY, n=3, steps=2)


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "b.md"
    common.write_section("a", "first A", doc)
    common.write_section("b", "first B", doc)
    common.write_section("a", "second A", doc)
    text = doc.read_text()
    assert "second A" in text and "first B" in text and "first A" not in text


def test_blas_contender_agrees_at_tiny_size():
    """The bench-only BLAS path (the 'what invariant 2 costs' section) runs on lstm-stream's cell and head."""
    if not C.available(C.BLAS):
        pytest.skip("threadpoolctl (the bench extra) is not installed")
    assert C.crosscheck(TINY, n=3, steps=3, names=[C.BLAS]) <= C.TOLERANCE


def test_ab_runs_both_versions_of_the_kernel_and_the_daemon(capsys):
    """bench.ab at tiny sizes, the working tree against itself: a table row per figure, ratios printed."""
    from bench import ab
    assert ab.main([".", ".", "--what", "kernel", "--shape", "3,5", "--streams", "50", "--per-call", "20",
                    "--calls", "6", "--rounds", "1"]) == 0
    assert "| ns per stream-step, I=3 H=5, 20 of 50 streams per call" in capsys.readouterr().out
    assert ab.main([".", ".", "--rounds", "1", "--block", "0.05"]) == 0
    out = capsys.readouterr().out
    assert out.count("| samples/s") == 2 and "| p50 µs, 1 in flight" in out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="--what cpu reads /proc (Linux)")
def test_ab_measures_the_daemons_cpu_per_request(capsys):
    """bench.ab --what cpu: the loop's CPU per request of each version, from /proc, for both loads."""
    from bench import ab
    assert ab.main([".", ".", "--what", "cpu", "--rounds", "1", "--block", "0.3"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| daemon main-thread CPU µs per request")]
    assert len(rows) == 2
    for row in rows:
        a, b = (float(v) for v in row.split("|")[2:4])
        assert a > 0 and b > 0


def test_ab_names_a_version_it_cannot_find():
    from bench import ab
    with pytest.raises(SystemExit, match="neither a directory holding a checkout"):
        ab.main(["no-such-revision-xyz", "."])


def _args(argv, monkeypatch, tmp_path):
    import argparse
    monkeypatch.setattr(common, "DOC", tmp_path / "benchmarks.md")
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    common.add_doc_options(ap)
    a = ap.parse_args(argv + ["--results", str(tmp_path / "results")])
    common.resolve_doc(a)
    return a


def test_a_full_run_writes_its_report_to_the_results_folder_not_the_docs(monkeypatch, tmp_path):
    """A benchmark run (full or --quick) writes its report under bench-results/ and leaves the docs alone;
    only --write-docs (or --doc PATH) replaces its section there; --no-doc writes nothing."""
    for argv in ([], ["--quick"]):
        a = _args(argv, monkeypatch, tmp_path)
        assert common.publish("kernel", "figures", a) is False
        assert not (tmp_path / "benchmarks.md").exists()
    reports = sorted((tmp_path / "results").iterdir())
    assert [p.read_text() for p in reports] == ["figures\n", "figures\n"]
    assert {p.name.split("-")[-1] for p in reports} == {"full.md", "quick.md"}
    a = _args(["--write-docs"], monkeypatch, tmp_path)
    assert common.publish("kernel", "new figures", a) is True
    assert "new figures" in (tmp_path / "benchmarks.md").read_text()
    a = _args(["--no-doc"], monkeypatch, tmp_path / "none")
    assert common.publish("kernel", "x", a) is False and not (tmp_path / "none").exists()


def test_snapshot_bench_measures_every_path_at_a_small_size():
    """bench.snapshot's child at 20,000 streams: every row has a stall, a write time and a memory figure."""
    from bench import snapshot
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    out = snapshot.child(20_000)
    for name in ("old", "blocks", "copy", "fork", "fork-worst"):
        assert out[name]["stall"] > 0 and out[name]["total"] >= out[name]["stall"] and "extra" in out[name]
    assert out["fork"]["bytes"] > out["state_bytes"] and "| 20,000 | fork |" in snapshot.report([out])


def test_wire_report_splits_the_ratio_by_the_daemons_kernel_time():
    """bench.wire's report: the goal line against the raw kernel's median, the ratio against its fastest
    round, and the daemon's kernel share and speed (or a line saying they were not read)."""
    from types import SimpleNamespace

    from bench import wire
    model = SimpleNamespace(input_size=8, hidden_size=64, num_layers=1, output_size=4, dtype="float32")
    r = {"median": {"one binary": 5e4, "one lists": 3.6e4, "many binary": 7.5e5, "many lists": 2.6e5,
                    "raw kernel": 1e6},
         "range": {"many binary": (7e5, 8e5), "raw kernel": (9e5, 1.5e6)}, "model": model, "rounds": 12,
         "kernel": (1.32e6, 0.57)}
    text = wire.report(r)
    assert "**not met** (0.75× (rounds 0.70–0.80×))" in text
    assert "against its fastest round the daemon's median is 0.50×" in text
    assert "57% of it in kernel calls, which ran 1,320,000 stream-steps/s, 1.32× the raw kernel alone" in text
    assert "not read" in wire.report({**r, "kernel": None})


def test_wire_in_process_block_serves_the_pool_and_the_report_sets_it_against_the_ceiling():
    """bench.wire's in_process block: the daemon's request path without a socket serves every message of the
    pool (a positive rate, each reply checked); the report sets what it takes a message against what the
    kernel behind the socket (bench.ceiling) leaves it."""
    from types import SimpleNamespace

    from bench import wire
    from bench.loadgen import step_pool
    model = wire.random_model(seed=3)
    block = wire.in_process(model, step_pool(3 * wire.MANY, model.input_size, per_message=wire.MANY), per_turn=2)
    assert block(0.05) > 0 and block(0.05) > 0  # (the second call: the streams exist)
    shape = SimpleNamespace(input_size=8, hidden_size=64, num_layers=1, output_size=4, dtype="float32")
    r = {"median": {"one binary": 5e4, "one lists": 3.6e4, "many binary": 7.5e5, "many lists": 2.6e5,
                    "raw kernel": 1e6, "socket floor": 6.0, "in process": 7.8e5, "kernel behind the socket": 9e5},
         "range": {"many binary": (7e5, 8e5), "raw kernel": (9e5, 1.5e6), "socket floor": (5.5, 7.0),
                   "in process": (7e5, 8.5e5), "kernel behind the socket": (8.8e5, 9.2e5)},
         "model": shape, "rounds": 12, "kernel": (1e6, 0.75)}
    text = wire.report(r)
    assert "900,000 stream-steps/s, 0.90× the raw kernel (rounds 0.88–0.92×)" in text
    assert "0.8× leaves the request path 13.9 µs a message" in text  # 125 - 111.1
    assert "780,000 stream-steps/s, 0.78× the raw kernel (rounds 0.70–0.85×)" in text
    assert "take about 28.2 µs a message there, against the 13.9 µs left them." in text  # 128.2 - 100
    assert "take about 28.2 µs a message there, against" in wire.report({**r, "kernel": None})  # (raw's speed)
    median = {k: v for k, v in r["median"].items() if k != "kernel behind the socket"}
    assert "take about 28.2 µs a message there." in wire.report({**r, "median": median})
    median = {k: v for k, v in median.items() if k != "in process"}
    assert "in_process" not in wire.report({**r, "median": median})


def test_ceiling_server_answers_every_message_of_a_pool(tmp_path):
    """bench.ceiling as bench.wire runs it (a child process on loopback): every message of the load answered
    with a success, turns of more than one message included (the window), until it is stopped."""
    from bench import wire
    from bench.loadgen import LoadGen, step_pool
    import zmq
    model = wire.random_model(seed=4)
    model.save(tmp_path / "m.npz")
    endpoint = f"tcp://127.0.0.1:{common.free_port()}"
    args = [common.python(), "-m", "bench.ceiling", "--bind", endpoint, "--model", str(tmp_path / "m.npz"),
            "--per-message", "7"]
    ctx = zmq.Context()
    with common.subprocess_server(args, log_path=tmp_path / "ceiling.log") as proc:
        gen = LoadGen(endpoint, ctx)
        try:
            gen.wait_ready(120, proc)
            assert gen.throughput(step_pool(70, model.input_size, per_message=7), 4, 0.2) > 0
            assert gen.throughput(step_pool(700, model.input_size, per_message=7), 300, 0.2) > 0
        finally:
            gen.close()
            ctx.term()
    assert proc.returncode is not None
