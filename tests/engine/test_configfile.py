"""engine/configfile.py: `serve --config FILE.toml` and `serve --print-config`, from the same fields as the flags."""
import json
import re
import subprocess
import sys

import pytest

from daemons import ROOT
from engine import config, configfile
from engine.cli import build_parser
from engine.config import SERVE_CONFIGS, EngineConfig, ServeConfig, StreamsConfig
from engine.configfile import ConfigError


def resolve(*argv):
    return configfile.resolve(build_parser().parse_args(["serve", *argv]))


def write(tmp_path, text, name="serve.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# A value other than the default for many options, written as flags: the round trips below go through them.
FLAGS = ["--bind", "ipc:///tmp/lss-a.sock", "--bind", "tcp://127.0.0.1:*", "--snapshot-dir", "state",
         "--snapshot-every", "250ms", "--step-log", "off", "--fsync", "always", "--log-segment", "16MiB",
         "--log-level", "debug", "--log-format", "json", "--backend", "auto", "--threads", "3", "--max-streams",
         "1000", "--idle-ttl", "90s", "--idle-action", "drop", "--max-batch", "100", "--max-turn-samples", "500",
         "--max-pending", "300", "--max-pending-bytes", "1MiB", "--max-peer-pending", "40",
         "--max-request-samples", "2048", "--max-request-new-streams", "64", "--max-message-bytes", "65537",
         "--hwm", "0", "--metrics-every", "1h", "--spin-us", "0.5", "--model", "pump \"v2\".npz"]


def test_print_config_reads_back(tmp_path):
    """--print-config's TOML, given to --config, is the same configuration (and prints the same text)."""
    configs = resolve(*FLAGS)
    assert configs[0].bind == ("ipc:///tmp/lss-a.sock", "tcp://127.0.0.1:*") and configs[2].max_batch == 100
    text = configfile.dumps(configs)
    path = write(tmp_path, text)
    assert resolve("--config", path) == configs
    assert configfile.dumps(resolve("--config", path)) == text


def test_print_config_from_the_command_line(tmp_path):
    """The real command: stdout is TOML that --config reads back to the same output; exit 0."""
    def run(*argv):
        r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", *argv], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout

    first = run("--print-config", *FLAGS)
    assert 'log-format = "json"' in first and "max-batch = 100" in first and 'spin-us = 0.5' in first
    assert run("--print-config", "--config", write(tmp_path, first)) == first


def test_every_option_is_in_the_example():
    """The example lists every option field of engine/config.py, set or not: an option added there is in it."""
    text = configfile.example()
    listed = re.findall(r"^([a-z0-9-]+) = ", text, re.M) + re.findall(r"^# ([a-z0-9-]+) is not set: ", text, re.M)
    assert sorted(listed) == sorted(configfile.option_fields())
    assert len(configfile.option_fields()) == sum(len(config.options(cls)) for cls in SERVE_CONFIGS)


def test_the_example_is_the_defaults(tmp_path):
    assert resolve("--config", write(tmp_path, configfile.example())) == (ServeConfig(), StreamsConfig(),
                                                                           EngineConfig())


def test_docs_example_is_the_generated_one():
    doc = config.DOCS.read_text(encoding="utf-8")
    assert configfile.with_example(doc) == doc, "docs/operations.md's example configuration is stale: run " \
                                                "`python -m engine.config --write-docs`"


def test_docs_service_file_reads(tmp_path):
    """docs/operations.md's hand-written example of a service's file is a valid configuration."""
    doc = config.DOCS.read_text(encoding="utf-8")
    text = re.search(r"A service's file.*?```toml\n(.*?)```", doc, re.S).group(1)
    serve, streams, engine = resolve("--config", write(tmp_path, text))
    assert serve.snapshot_dir == "/var/lib/lstm-stream" and serve.log_format == "json" and streams.idle_ttl == 3600
    assert serve.bind == ("tcp://0.0.0.0:5555", "ipc:///run/lstm-stream/sock") and engine.max_peer_pending == 1000


def test_values_in_their_toml_forms(tmp_path):
    path = write(tmp_path, """
        bind = "ipc:///tmp/lss-one.sock"    # one string: a list of one
        snapshot_dir = "state"              # underscores read too
        snapshot-every = 30                 # a number of seconds
        step-log = false                    # on/off as a boolean
        max-pending-bytes = 1048576         # bytes
        max-message-bytes = "64KiB"
        idle-ttl = 1.5
        spin-us = 100
        threads = "2"                       # the flag's text
    """)
    serve, streams, engine = resolve("--config", path)
    assert serve.bind == ("ipc:///tmp/lss-one.sock",) and serve.snapshot_dir == "state"
    assert serve.snapshot_every == 30 and serve.step_log == "off" and streams.idle_ttl == 1.5
    assert engine.max_pending_bytes == 2**20 and engine.max_message_bytes == 65536
    assert engine.spin == pytest.approx(100e-6) and streams.threads == 2


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, 'max-batch = 10\nbind = ["ipc:///tmp/lss-a.sock", "ipc:///tmp/lss-b.sock"]\n'
                           'hwm = 5\nlog-format = "json"\n')
    serve, _, engine = resolve("--config", path, "--max-batch", "20", "--bind", "tcp://127.0.0.1:7",
                               "--log-format", "text")
    assert engine.max_batch == 20 and engine.read_per_turn == 40  # derived from the effective value
    assert serve.bind == ("tcp://127.0.0.1:7",)  # the flag's list replaces the file's
    assert engine.hwm == 5 and serve.log_format == "text"
    # a flag given with its default value still overrides the file
    assert resolve("--config", path, "--max-batch", "4096")[2].max_batch == 4096


@pytest.mark.parametrize("text, words", [
    ('snapshot-dri = "state"\n', ["unknown key 'snapshot-dri'", "did you mean 'snapshot-dir'?"]),
    ("max_bath = 3\n", ["unknown key 'max_bath'", "did you mean 'max-batch'?"]),
    ("read-per-turn = 3\n", ["unknown key 'read-per-turn'"]),  # a field that is not an option
    ("zzz = 1\n", ["unknown key 'zzz'", "--print-config"]),
    ('max-batch = "many"\n', ["max-batch", "expected a whole number", "max-batch = 4096"]),
    ("max-batch = 5.5\n", ["max-batch = 5.5", "expected a whole number"]),
    ("bind = 5\n", ["bind = 5", "expected a list of one or more strings", 'bind = ["tcp://127.0.0.1:5555"]']),
    ("bind = []\n", ["bind = <a TOML array>", "expected a list of one or more strings"]),
    ('bind = ["tcp://x"]\n', ["bind[0]", "needs a host and a port"]),
    ("step-log = 1\n", ["step-log = 1", 'expected "on" or "off"']),
    ('fsync = "sometimes"\n', ["fsync", '"always" or "everysec" or "no"']),
    ('snapshot-every = "soon"\n', ["snapshot-every", "'soon' is not a positive duration"]),
    ("snapshot-every = true\n", ["snapshot-every = true", "expected a duration"]),
    ('max-message-bytes = "lots"\n', ["max-message-bytes", "is not a positive size"]),
    ('model = 3\n', ["model = 3", "each a path"]),
    ("[hwm]\nx = 1\n", ["hwm = <a TOML table>", "expected a whole number"]),
    ('max-batch = 1\nmax_batch = 2\n', ["'max-batch' and 'max_batch' are the same option"]),
    ('snapshot-every = "1s\n', ["is not valid TOML", "line 1"]),
])
def test_bad_files_name_the_key_and_the_expected_form(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        resolve("--config", path)
    for w in [path, *words]:
        assert w in str(e.value)


def test_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file .*nope.toml"):
        resolve("--config", str(tmp_path / "nope.toml"))


def test_a_bad_file_refuses_to_start(tmp_path):
    """The real command: exit 2, one error line naming the key, nothing on stdout."""
    path = write(tmp_path, 'max-batch = 10\nsnapshot-dri = "state"\n')
    r = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--config", path, "--log-format", "json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    line = json.loads(r.stderr.strip())
    assert line["event"] == "start_failed" and line["level"] == "error"
    assert "unknown key 'snapshot-dri'; did you mean 'snapshot-dir'?" in line["message"]


def test_toml_is_read_only_with_a_config_file():
    code = "import sys, engine.cli; sys.exit(bool({'tomllib', 'tomli'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_a_daemon_runs_from_a_file(daemon, tmp_path):
    """A real daemon takes its options from the file: the ones `info` shows, and the log format."""
    from clients import Client
    path = write(tmp_path, f'snapshot-dir = "{tmp_path / "state"}"\nmax-batch = 77\nlog-format = "json"\n'
                           'bind = ["tcp://127.0.0.1:1"]      # the test\'s --bind overrides it\n')
    d = daemon("--config", path)
    with Client(d.endpoint, timeout=10) as c:
        info = c.info()
        c.step("a", [0.0] * info["model"]["input_size"])
    assert d.stop() == 0
    lines = [json.loads(line) for line in d.log().splitlines()]
    assert any(x["event"] == "snapshot" and x["path"] == str(tmp_path / "state" / "streams.lstmsnap")
               for x in lines)
    serving = [x for x in lines if x["event"] == "serving"]
    assert serving[0]["max_batch"] == 77 and serving[0]["endpoints"] == [d.endpoint]
