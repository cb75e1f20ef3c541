"""`lstm-stream convert` and `lstm-stream inspect`: a model from another framework to an lstm-stream .npz, and
what a model file holds. Nothing heavy is imported until a command runs (onnx, keras or torch only for their
own formats: lstm_stream/convert/files.py).

    lstm-stream convert model.onnx -o pump.npz          # or model.keras, weights.npz, state_dict.pt
    lstm-stream inspect pump.npz                         # sizes, layers, head, dtype, fingerprint; --json
"""
from __future__ import annotations

import json
import os
import sys

EXIT_OK, EXIT_USAGE = 0, 2


def add_convert_arguments(p):
    p.add_argument("source", help="MODEL.onnx, MODEL.keras, ARRAYS.npz (PyTorch-named, see docs/models.md) or "
                                  "STATE_DICT.pt/.pth")
    p.add_argument("-o", "--output", required=True, help="the lstm-stream model file to write (.npz)")
    p.add_argument("--dtype", choices=("float32", "float64"), help="the model's dtype (default: the source's)")
    p.add_argument("--name", help="the model's name (default: the source file's stem)")
    p.add_argument("--head-activation", choices=("none", "sigmoid", "softmax"),
                   help="for arrays and state_dicts: the head's activation (ONNX and Keras models say theirs)")
    p.add_argument("--no-check", action="store_true", help="skip running the source model once to compare")
    p.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")


def run_convert(args) -> int:
    """Import the source, write it with LSTMModel.save, print what was written."""
    from lstm_stream.convert.files import load_any
    from lstm_stream.errors import ModelError
    if not args.output.endswith(".npz"):
        print(f"-o {args.output!r}: expected a file name ending in .npz", file=sys.stderr)
        return EXIT_USAGE
    if os.path.exists(args.output) and not args.force:
        print(f"{args.output} exists; --force overwrites it", file=sys.stderr)
        return EXIT_USAGE
    try:
        model = load_any(args.source, dtype=args.dtype, name=args.name, head_activation=args.head_activation,
                         check=not args.no_check)
    except ModelError as e:
        print(f"cannot convert {args.source}: {e}", file=sys.stderr)
        return EXIT_USAGE
    tmp = args.output + ".tmp"
    try:  # written whole, then renamed: a failed run leaves no half-written model
        model.save(tmp)
        os.replace(tmp, args.output)
    except OSError as e:
        print(f"cannot write {args.output}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {args.output}: {model!r}")
    return EXIT_OK


def add_inspect_arguments(p):
    p.add_argument("model", help="an lstm-stream model (.npz), or any file `convert` reads")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def describe(model) -> dict:
    """Everything `inspect` prints: the config, each tensor's shape, and the per-stream costs."""
    return dict(model.config(), fingerprint=model.fingerprint, state_size=model.state_size,
                state_bytes_per_stream=model.state_bytes, macs_per_step=model.macs_per_step,
                autoregressive=model.autoregressive,
                tensors={k: list(v.shape) for k, v in model.tensors().items()})


def run_inspect(args) -> int:
    from lstm_stream.convert.files import load_any
    from lstm_stream.errors import ModelError
    try:
        model = load_any(args.model)
    except ModelError as e:
        print(f"cannot read {args.model}: {e}", file=sys.stderr)
        return EXIT_USAGE
    d = describe(model)
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    head = "none" if not d["head"] else ("linear" if d["head_activation"] == "none" else d["head_activation"])
    print(f"{args.model}: model {d['name']!r}, fingerprint {d['fingerprint']}, {d['dtype']}")
    print(f"  input {d['input_size']} -> {d['num_layers']} LSTM layer(s) of hidden {d['hidden_size']}"
          + (f", proj {d['proj_size']}" if d["proj_size"] else "") + (", peepholes" if d.get("peepholes") else "")
          + (f", clip {d['clip']:g}" if d.get("clip") is not None else "")
          + f" -> head {head} -> output {d['output_size']}" + (" (autoregressive)" if d["autoregressive"] else ""))
    print(f"  per stream: {d['state_bytes_per_stream']} bytes of state, {d['macs_per_step']} multiply-adds a step")
    for name, shape in d["tensors"].items():
        print(f"  {name:<16} {tuple(shape)}")
    return EXIT_OK
