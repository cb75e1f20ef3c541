"""Who may connect, and what each client key may do: CURVE keys, roles, per-key stream namespaces.

    access = Access(allow_dir="keys/step", admin_dir="keys/admin", namespaces=True)   # reads both directories
    access.allows(z85_public_key)        # the ZAP handler's question (auth thread): is this key allowed at all?
    access.admit(request, user_id)       # the core's question (loop thread): None, or the refusal's message;
                                         # under namespaces a step key's stream ids are rewritten in place
    access.request_reload()              # signal-safe (SIGHUP); the loop calls access.tick(), which re-reads

A key's role is the directory its public key file is in: `--allow-keys DIR` holds "step" keys, `--admin-keys
DIR` "admin" keys (a key in both is admin). The files are the `NAME.key` files that `lstm-stream keygen` and
zmq.auth.create_certificates write; a `.key_secret` file in them is skipped (and warned about: it holds a
secret). The ZAP handler is pyzmq's ThreadAuthenticator, whose user id for a CURVE peer is its z85 public key;
ZeroMQ hands it to the server as each message's "User-Id" property.

Roles are looked up per request, so a reload takes effect on open connections too: a key removed from both
directories is refused (`forbidden`) on its next request, and cannot connect again.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass

from lstm_stream import protocol as P
from lstm_stream.messages import ListStreams
from lstm_stream.state import INT64_MAX, INT64_MIN, MAX_ID_LENGTH

from .logs import repeating

log = logging.getLogger("lstm_stream.engine")

STEP, ADMIN = "step", "admin"
# What a "step" key may do; an "admin" key may do every op.
STEP_ROLE_OPS = frozenset({"ping", "info", "step", "step_many", "forecast", "get_state"})
KEY_ID_LENGTH = 16            # hex characters of a key id: the first 64 bits of sha256(z85 public key)
PREFIX_LENGTH = KEY_ID_LENGTH + 1  # key id + "/" (str ids) or "#" (int ids)
MAX_OWN_ID_LENGTH = MAX_ID_LENGTH - PREFIX_LENGTH


def key_id(public_z85: str) -> str:
    """The short id of a public key that prefixes its streams under --namespaces (hex, KEY_ID_LENGTH chars)."""
    return hashlib.sha256(public_z85.encode("ascii")).hexdigest()[:KEY_ID_LENGTH]


def load_public_keys(directory: str) -> dict:
    """{z85 public key (str): file path} of every `*.key` file in `directory` (zmq.auth's format); OSError or
    ValueError naming the file when one cannot be read."""
    import zmq.auth
    keys = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith(".key_secret"):
            log.warning("%s holds a secret key: only public keys (NAME.key) belong in an allow-list directory; "
                        "it was skipped", path)
            continue
        if not name.endswith(".key") or not os.path.isfile(path):
            continue
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read the public key file {path}: {e}") from None
        if public is None or len(public) != 40:
            raise ValueError(f"{path} holds no z85 public key (expected a file written by `lstm-stream keygen`)")
        keys[public.decode("ascii")] = path
    return keys


@dataclass(frozen=True)
class Owned:
    """A request tag of a namespaced client: the server's tag, and the prefix its stream ids were given."""

    tag: object
    prefix: str


class OwnStreams(ListStreams):
    """The `streams` request of a namespaced key: only the ids under its prefix, shown without it."""

    __slots__ = ("prefix",)


class Access:
    """Roles of the allow-listed keys (z85 public key -> "step" or "admin"), reloaded on request."""

    def __init__(self, allow_dir: str | None, admin_dir: str | None = None, *, namespaces: bool = False):
        if allow_dir is None and admin_dir is None:
            raise ValueError("CURVE needs --allow-keys DIR or --admin-keys DIR: with neither, no client could connect")
        self.dirs = {STEP: allow_dir, ADMIN: admin_dir}
        self.namespaces = namespaces
        self.roles: dict = {}      # replaced whole on reload (the ZAP thread reads it without a lock)
        self.prefixes: dict = {}   # z85 public key -> its key id (namespaces)
        self._reload = False
        self.load()

    def load(self) -> None:
        """Read both directories; ValueError/OSError (nothing changed) if one cannot be read."""
        roles = {}
        for role in (STEP, ADMIN):  # admin second: a key in both directories is admin
            if self.dirs[role] is not None:
                roles.update(dict.fromkeys(load_public_keys(self.dirs[role]), role))
        ids = {}
        for public in roles:
            kid = key_id(public)
            if kid in ids:  # 64 bits: not by chance; refuse rather than let two keys share streams
                raise ValueError(f"two allowed keys have the same key id {kid}: {ids[kid]} and {public}")
            ids[kid] = public
        self.prefixes = {public: kid for kid, public in ids.items()}
        self.roles = roles
        self._refused = set()
        counts = {role: sum(r == role for r in roles.values()) for role in (STEP, ADMIN)}
        log.info("client keys: %d step (%s), %d admin (%s)%s", counts[STEP], self.dirs[STEP] or "no --allow-keys",
                 counts[ADMIN], self.dirs[ADMIN] or "no --admin-keys", ", namespaces on" if self.namespaces else "",
                 extra={"event": "keys_loaded", "step_keys": counts[STEP], "admin_keys": counts[ADMIN]})

    # ---- reload (SIGHUP) ------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Ask for a reload at the loop's next housekeeping (safe in a signal handler: sets a flag)."""
        self._reload = True

    def tick(self) -> None:
        """On the loop thread: reload if asked; a directory that cannot be read keeps the old keys (logged)."""
        if not self._reload:
            return
        self._reload = False
        try:
            self.load()
        except (OSError, ValueError) as e:
            log.error("reloading the client keys failed, the previous keys stay in force: %s", e,
                      extra={"event": "keys_reload_failed", "error": str(e)})

    # ---- the ZAP handler's question (ThreadAuthenticator's thread) ------------------------------------
    def callback(self, domain: str, client_key: bytes) -> bool:
        """configure_curve_callback's credentials provider: is this z85 public key allowed to connect?"""
        key = client_key.decode("ascii", "replace")
        allowed = key in self.roles
        if not allowed and key not in self._refused:  # a refused client may retry in a loop: logged once per key
            if len(self._refused) < 1000:             # (per reload); many keys: once, then counted (engine/logs.py)
                self._refused.add(key)
            log.warning("refused a CURVE connection from a key that is not allowed: %s", key,
                        extra=repeating("curve_refused", key_z85=key))
        return allowed

    # ---- the core's question (loop thread) ----------------------------------------------------------
    def admit(self, req, user):
        """(request, refusal, key id) for a request from `user` (the peer's z85 public key): refusal is None
        or why the key may not run it; under namespaces a step key's request comes back with its stream ids
        prefixed (the same object; a `streams` request becomes an OwnStreams) and its key id, else key id
        None. ProtocolError (bad_input) for an id that cannot be namespaced."""
        role = self.roles.get(user)
        if role == ADMIN:
            return req, None, None
        op = req.op
        if role is None:
            return req, ("this client's key is not allowed (any more): it is in neither --allow-keys nor "
                         "--admin-keys"), None
        if op not in STEP_ROLE_OPS and not (self.namespaces and op == "streams"):
            return req, f"this client's key may not {op}; admin keys may", None
        if not self.namespaces:
            return req, None, None
        kid = self.prefixes[user]
        try:
            return self._own(req, kid), None, kid
        except P.ProtocolError as e:
            e.request_id = req.id
            raise

    def _own(self, req, kid):
        """req with its stream ids under key id `kid` (ProtocolError bad_input for an id that cannot be)."""
        op = req.op
        if op == "streams":
            own = OwnStreams(req.id, req.lists, req.offset, req.limit)
            own.prefix = kid
            return own
        if op == "step_many":
            req.streams = [_prefixed(kid, s) for s in req.streams]
        elif op == "copy":
            req.src, req.dst = _prefixed(kid, req.src), _prefixed(kid, req.dst)
        elif hasattr(req, "stream"):
            req.stream = _prefixed(kid, req.stream)
        return req

    @staticmethod
    def own_ids(ids, kid) -> list:
        """The ids of `ids` under key id `kid`, as the client named them (a str or an int)."""
        out = []
        for i in ids:
            if type(i) is str and i.startswith(kid) and len(i) > KEY_ID_LENGTH:
                sep, rest = i[KEY_ID_LENGTH], i[PREFIX_LENGTH:]
                if sep == "/":
                    out.append(rest)
                elif sep == "#":
                    out.append(int(rest))
        return out

    @staticmethod
    def own_reply(reply, kid):
        """reply with the client's own ids in its error message."""
        if reply.code is not None and kid in reply.message:  # 'KID/pump-7' -> 'pump-7', 'KID#7' -> 7
            message = re.sub(rf"'{kid}#(-?[0-9]+)'", r"\1", reply.message)
            reply.message = message.replace(kid + "/", "").replace(kid + "#", "")
        return reply


def _prefixed(kid: str, stream):
    """A client's stream id as the daemon holds it under --namespaces: 'KID/id' for a str, 'KID#7' for an int."""
    if type(stream) is str:
        if not 0 < len(stream) <= MAX_OWN_ID_LENGTH:
            raise P.ProtocolError(P.BAD_INPUT, f"stream id must be a non-empty str of at most {MAX_OWN_ID_LENGTH} "
                                               f"characters under --namespaces, got one of length {len(stream)}")
        return f"{kid}/{stream}"
    if type(stream) is int:
        if not INT64_MIN <= stream <= INT64_MAX:
            raise P.ProtocolError(P.BAD_INPUT, f"int stream id {stream} is outside the int64 range")
        return f"{kid}#{stream}"
    raise P.ProtocolError(P.BAD_INPUT, f"stream id must be a str or an int, got {type(stream).__name__}")


def open_keys(serve):
    """(Access, (public, secret) of the daemon) for `serve`'s --curve-secret (a ServeConfig), else (None, None);
    ValueError/OSError saying which file or directory is wrong."""
    if serve.curve_secret is None:
        return None, None
    import zmq
    if not zmq.has("curve"):
        raise ValueError("--curve-secret: this libzmq was built without CURVE support")
    curve = read_secret_key(serve.curve_secret)
    access = Access(serve.allow_keys, serve.admin_keys, namespaces=serve.namespaces == "on")
    log.info("CURVE on: server public key %s", curve[0].decode("ascii"), extra={"event": "curve_on"})
    return access, curve


def start_authenticator(context, access: Access):
    """pyzmq's ThreadAuthenticator (a ZAP handler thread) on `context`, asking `access` about each CURVE key;
    started before the server socket binds. Stop it (.stop()) before terminating the context."""
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(context, log=logging.getLogger("lstm_stream.zap"))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=access)
    return auth


def read_secret_key(path: str) -> tuple:
    """(public, secret) z85 bytes of a `NAME.key_secret` file; ValueError naming it if it holds no secret."""
    import zmq.auth
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the secret key file {path}: {e}") from None
    if secret is None:
        raise ValueError(f"{path} holds no secret key (give the NAME.key_secret file that `lstm-stream keygen` "
                         "wrote)")
    mode = os.stat(path).st_mode & 0o077
    if mode:
        log.warning("%s can be read by other users (mode %o): chmod 600 it", path, os.stat(path).st_mode & 0o777)
    return public, secret
