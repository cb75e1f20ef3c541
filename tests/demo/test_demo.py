"""`lstm-stream demo` end to end against real daemons on loopback: streaming accuracy equals offline accuracy."""
import io
import re
import sys

import numpy as np
import pytest
from daemons import DaemonFactory, free_tcp_endpoint

import lstm_stream as ls
from clients import Client
from engine.cli import main
from engine.demo import offline_run
from engine.demo_view import LiveView, ReplayRecord
from lstm_stream import defaults

ACCURACY_LINE = re.compile(r"^(streaming|offline) accuracy:\s+(per-step .*? recordings\))", re.M)


@pytest.fixture(scope="module")
def daemons(tmp_path_factory):
    factory = DaemonFactory(tmp_path_factory.mktemp("daemons"))
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def default_daemon(daemons):
    return daemons()  # ipc:// in a fresh directory: no port another process could take


def run_demo(capsys, *args):
    """(exit code, stdout, stderr, {'streaming': text, 'offline': text}) of `lstm-stream demo ARGS`."""
    code = main(["demo", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err, dict(ACCURACY_LINE.findall(out))


def offline_text(n: int) -> str:
    """The offline accuracy of the default model on the first n replay recordings, computed here."""
    return str(defaults.evaluate_offline(replay=defaults.load_replay().subset(n)))


def test_serve_without_model_serves_the_default_model(default_daemon):
    with Client(default_daemon.endpoint) as c:
        info = c.info()
    assert info["fingerprint"] == defaults.load_default_model().fingerprint
    assert info["model"]["name"] == "basicmotions-activity"


def test_demo_with_its_own_daemon_reports_offline_accuracy(capsys):
    code, out, err, acc = run_demo(capsys, "--speed", 0, "--limit", 8)
    assert code == 0, out + err
    assert "daemon ready at tcp://127.0.0.1:" in out
    assert acc["streaming"] == acc["offline"] == offline_text(8)
    assert "match: yes; outputs bit-identical to offline: yes" in out
    assert re.search(r"round-trip latency p50 [0-9.]+ ms  p90 [0-9.]+ ms  p99 [0-9.]+ ms", out)


def test_demo_paced_faster_than_real_time(capsys, default_daemon):
    code, out, err, acc = run_demo(capsys, "--connect", default_daemon.endpoint, "--speed", 25, "--limit", 4)
    assert code == 0, out + err
    assert acc["streaming"] == offline_text(4)
    seconds = float(re.search(r"^400 steps in ([0-9.]+) s", out, re.M).group(1))
    assert seconds >= 99 / (10 * 25) * 0.95  # paced: the last sample is due 99 periods after the first
    assert out.count("steps/s  right now") == 10  # plain progress: one line per tenth


def test_demo_whole_replay_set_equals_documented_accuracy(capsys, default_daemon):
    code, out, err, acc = run_demo(capsys, "--connect", default_daemon.endpoint, "--speed", 0)
    assert code == 0, out + err
    assert acc["streaming"] == acc["offline"] == str(defaults.load_replay().expected)
    assert "(equal; lstm_stream/data/README.md)" in out


def test_demo_plots_and_leaves_the_daemon_clean(capsys, default_daemon, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "stream.png"
    code, out, err, _ = run_demo(capsys, "--connect", default_daemon.endpoint, "--speed", 0, "--limit", 3,
                                 "--plot", png, "--plot-stream", 2)
    assert code == 0, out + err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Client(default_daemon.endpoint) as c:
        assert not [s for s in c.streams() if str(s).startswith("demo-")]


def test_demo_refuses_a_daemon_serving_another_model(capsys, daemons, tmp_path):
    rng = np.random.default_rng(0)
    other = ls.LSTMModel.from_arrays({"weight_ih_l0": rng.normal(size=(8, 6)), "weight_hh_l0": rng.normal(size=(8, 2)),
                                      "bias_ih_l0": np.zeros(8), "bias_hh_l0": np.zeros(8)}, name="other")
    other.save(tmp_path / "other.npz")
    daemon = daemons("--model", tmp_path / "other.npz")
    code, out, err, _ = run_demo(capsys, "--connect", daemon.endpoint, "--limit", 1)
    assert code == 2
    assert "serves model 'other'" in err and "not the default model" in err


def test_demo_reports_a_missing_daemon(capsys):
    code, out, err, _ = run_demo(capsys, "--connect", free_tcp_endpoint(), "--timeout", 0.3)
    assert code == 2
    assert "no lstm-stream daemon answers" in err


@pytest.mark.parametrize("args, message", [
    (["--limit", 0], "--limit must be between 1 and 40"),
    (["--limit", 41], "--limit must be between 1 and 40"),
    (["--speed", -1], "--speed must be a number >= 0"),
    (["--plot", "x.png", "--limit", 2, "--plot-stream", 2], "--plot-stream must be between 0 and 1"),
])
def test_demo_bad_options_are_clear_errors(capsys, args, message):
    code, out, err, _ = run_demo(capsys, *args)
    assert code == 2 and message in err


def test_demo_plot_without_matplotlib_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    code, out, err, _ = run_demo(capsys, "--plot", "x.png", "--limit", 1)
    assert code == 2 and "--plot needs matplotlib: pip install 'lstm-stream[plot]'" in err


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_live_view_draws_a_table_in_place_on_a_terminal():
    record = ReplayRecord(3, 2, 4)
    record.record(0, 0, np.array([0.1, 0.7, 0.1, 0.1], np.float32), 0.001)
    record.record(1, 0, np.array([0.9, 0.0, 0.1, 0.0], np.float32), 0.002)
    term = FakeTerminal()
    view = LiveView(record, [1, 2, 0], ["standing", "walking", "running", "badminton"], title="T", stream=term)
    assert view.tty
    view.color = False
    view.update(force=True)
    first_lines = term.getvalue().count("\n")
    view.update(force=True)
    text = term.getvalue()
    assert text.startswith("\x1b[2KT\n") and first_lines >= 5
    assert f"\x1b[{first_lines}F" in text  # the second draw moved the cursor back over the first one
    assert "00 walking    -> walking     70% ok" in text
    assert "01 running    -> standing    90% --" in text
    assert "02 standing   -> ..." in text
    assert "2/6 steps" in text and "right now 1/2 streams" in text
    np.testing.assert_array_equal(record.predictions(), [[1, -1], [0, -1], [-1, -1]])


def test_offline_run_uses_the_daemons_backend_when_it_can():
    X = defaults.load_replay().X[:2]
    cpu, used_cpu = offline_run(X, "cpu")
    assert used_cpu == "cpu"
    np.testing.assert_array_equal(cpu, defaults.offline_outputs(defaults.load_default_model(), X))
    other, used = offline_run(X, "cuda")  # the CPU when this process has no usable GPU
    assert used in ("cuda", "cpu")
    np.testing.assert_allclose(other, cpu, atol=1e-5)
