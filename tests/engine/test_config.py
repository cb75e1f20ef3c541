"""engine/config.py: the one definition of `serve`'s options, and what is generated from it."""
import dataclasses

import pytest

from engine import config
from engine.cli import build_parser
from engine.config import SERVE_CONFIGS, EngineConfig, ServeConfig, StreamsConfig, from_args


def serve(*argv):
    args = build_parser().parse_args(["serve", *argv])
    return [from_args(cls, args) for cls in SERVE_CONFIGS]


def test_docs_table_is_the_generated_one():
    doc = config.DOCS.read_text(encoding="utf-8")
    assert config.with_table(doc) == doc, "docs/operations.md's option table is stale: run " \
                                          "`python -m engine.config --write-docs`"


def test_no_options_give_every_default():
    assert serve() == [ServeConfig(), StreamsConfig(), EngineConfig()]


def test_options_reach_their_fields():
    s, st, e = serve("--bind", "ipc:///tmp/a", "--bind", "tcp://*:7", "--threads", "1", "--max-batch", "10",
                     "--spin-us", "50", "--max-message-bytes", "64KiB", "--metrics-every", "5m")
    assert s.bind == ("ipc:///tmp/a", "tcp://*:7") and st.threads == 1
    assert (e.max_batch, e.read_per_turn) == (10, 20)  # read_per_turn: 2 x max_batch, as before
    assert e.spin == pytest.approx(50e-6) and e.max_message_bytes == 65536 and e.metrics_every == 300
    assert serve("--spin-us", "-3")[2].spin == 0  # a negative spin is off, as before


def test_every_option_shows_its_default_in_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for cls in SERVE_CONFIGS:
        for f in config.options(cls):
            assert config.flag(f) in text
            assert f"(default: {config.plain(config.default_text(f))})" in text, f.name


def test_defaults_read_back():
    """A default shown as text (help, docs, a future --print-config) parses back to the same value."""
    for cls in SERVE_CONFIGS:
        for f in config.options(cls):
            m = f.metadata
            if m["shown"] is None:
                values = f.default if m["repeat"] else (f.default,)
                assert tuple(m["unit"].parse(m["unit"].show(v)) for v in values) == tuple(values), f.name


def test_names_are_unique_and_documented():
    names = [f.name for cls in SERVE_CONFIGS for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))  # each field is its own argparse dest
    assert all(f.metadata["help"] for cls in SERVE_CONFIGS for f in dataclasses.fields(cls))


def test_engine_config_is_still_importable_from_core():
    from engine.core import EngineConfig as FromCore
    assert FromCore is EngineConfig


def test_snapshot_every_needs_a_dir():
    with pytest.raises(ValueError, match="--snapshot-every needs --snapshot-dir"):
        ServeConfig(snapshot_every=1.0)
