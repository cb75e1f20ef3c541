"""lstm-stream: streaming LSTM inference with per-stream state.

Imports are lazy so that `import lstm_stream.protocol` (used by the client) never loads numba.
"""
__version__ = "0.1.0"

_LAZY = {
    "LSTMModel": ".model", "load_model": ".model", "LayerWeights": ".model",
    "Streams": ".streams", "StreamState": ".state",
    "LSTMStreamError": ".errors", "ModelError": ".errors", "InputError": ".errors",
    "UnknownStreamError": ".errors", "StoreFullError": ".errors", "SnapshotError": ".errors",
    "BackendError": ".errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lstm_stream' has no attribute {name!r}")


def __dir__():
    return __all__ + ["__version__"]
