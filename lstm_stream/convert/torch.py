"""Import PyTorch nn.LSTM / nn.LSTMCell (+ nn.Linear head) weights as PyTorch-named numpy arrays."""
from __future__ import annotations

from ..errors import ModelError


def tensors_from_torch(lstm, head=None) -> dict:
    """Return {weight_ih_l0: ..., head.weight: ...} from an nn.LSTM or nn.LSTMCell and an optional nn.Linear."""
    import torch  # noqa: F401  (only when converting)
    from torch import nn

    def arr(t):
        return t.detach().cpu().numpy().copy()

    out = {}
    if isinstance(lstm, nn.LSTMCell):
        if not lstm.bias:
            raise ModelError("nn.LSTMCell with bias=False is not supported; expected bias=True")
        out.update(weight_ih_l0=arr(lstm.weight_ih), weight_hh_l0=arr(lstm.weight_hh),
                   bias_ih_l0=arr(lstm.bias_ih), bias_hh_l0=arr(lstm.bias_hh))
    elif isinstance(lstm, nn.LSTM):
        if lstm.bidirectional:
            raise ModelError("bidirectional nn.LSTM cannot run as a stream (it needs the future); "
                             "expected bidirectional=False")
        params = dict(lstm.named_parameters())
        for l in range(lstm.num_layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr"):
                key = f"{name}_l{l}"
                if key in params:
                    out[key] = arr(params[key])
                elif name.startswith("bias"):
                    H = lstm.hidden_size
                    out[key] = arr(params[f"weight_ih_l{l}"].new_zeros(4 * H))  # bias=False == zero bias
    else:
        raise ModelError(f"expected torch.nn.LSTM or torch.nn.LSTMCell, got {type(lstm).__name__}")
    if head is not None:
        if not isinstance(head, nn.Linear):
            raise ModelError(f"head must be a torch.nn.Linear, got {type(head).__name__}")
        out["head.weight"] = arr(head.weight)
        out["head.bias"] = arr(head.bias) if head.bias is not None else arr(head.weight.new_zeros(head.out_features))
    return out
