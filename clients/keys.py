"""CURVE keys for a client of a daemon started with --curve-secret (docs/operations.md, "Keys and roles").

    Client(address, server_key="keys/server.key", client_keys="keys/pump-gw.key_secret")
    Client(address, server_key=b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", client_keys=(public_z85, secret_z85))

server_key: the daemon's public key, as a `NAME.key` file (or its `NAME.key_secret`: only the public half is
read) or the 40-character z85 text. client_keys: this client's key pair, as the `NAME.key_secret` file that
`lstm-stream keygen` writes (it holds both halves) or a (public, secret) pair of z85 keys. Both or neither.
"""
from __future__ import annotations

import os

import zmq

Z85_KEY_LENGTH = 40


def _z85(value, what: str) -> bytes:
    key = value.encode("ascii") if isinstance(value, str) else bytes(value)
    if len(key) != Z85_KEY_LENGTH:
        raise ValueError(f"{what} must be a z85 key of {Z85_KEY_LENGTH} characters or a key file, got "
                         f"{len(key)} characters")
    return key


def _load(path, what: str):
    import zmq.auth
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {what} from {path}: {e}") from None


def _is_path(value) -> bool:
    return isinstance(value, os.PathLike) or (isinstance(value, str) and len(value) != Z85_KEY_LENGTH) or (
        isinstance(value, str) and os.path.isfile(value))


def curve_keys(server_key, client_keys):
    """(server public, client public, client secret) as z85 bytes, or None when both are None; ValueError
    saying what is wrong otherwise."""
    if server_key is None and client_keys is None:
        return None
    if server_key is None or client_keys is None:
        raise ValueError("CURVE needs both server_key (the daemon's public key) and client_keys (this client's "
                         "key pair: a NAME.key_secret file or a (public, secret) pair)")
    if not zmq.has("curve"):
        raise ValueError("this libzmq was built without CURVE support")
    if _is_path(server_key):
        server = _load(server_key, "the server's public key")[0]
    else:
        server = _z85(server_key, "server_key")
    if isinstance(client_keys, (tuple, list)):
        public, secret = client_keys
        public, secret = _z85(public, "client_keys[0] (public)"), _z85(secret, "client_keys[1] (secret)")
    else:
        public, secret = _load(client_keys, "the client's key pair")
        if secret is None:
            raise ValueError(f"{client_keys} holds no secret key; give the NAME.key_secret file that "
                             "`lstm-stream keygen` wrote")
    return server, public, secret


def apply(sock, keys) -> None:
    """Make `sock` a CURVE client with keys from curve_keys() (before connect); nothing when keys is None."""
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys
