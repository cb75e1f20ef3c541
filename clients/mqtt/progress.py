"""--state-file: the bridge's packet-id memory (stepper.py) kept on disk, so that a bridge restarted after a crash
still resends a redelivered message under the number it was stepped with, and the daemon answers it from its
receipt instead of applying it again.

The file is a log of JSON lines, one per change of the memory, written (not fsynced) as the memory changes:
    {"lstm-stream-bridge": 1, "boot": BOOT_ID, "broker": URL, "client_id": ID}   whose memory this is
    ["S", mid, stream, seq]   packet id `mid` carries the message stepped as `stream`'s number `seq`
    ["F", mid]                packet id `mid` carries a new message: its number is forgotten
A record is written before the step it names is sent. The kernel keeps what a process wrote, so a process
crash (kill -9, OOM) loses nothing of it. A crash of the machine can lose the last records, so a file written
under another boot (Linux's boot id) is not trusted: the bridge starts with an empty memory, and a message
stepped just before the crash can be stepped again (at-least-once). Nor is a file of another broker or client
id, or one the broker's session outlived: its packet ids name other messages.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("lstm_stream.bridge")

class StateFileError(Exception):
    """The state file cannot be read or written; the message names it and says what to do."""


COMPACT_MIN = 20_000  # records before the file is rewritten with the live memory only (and 4x that memory)


def boot_id() -> str | None:
    """This boot's id (Linux), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


class Progress:
    """The memory's log: load() once, then stepped() and forgot() as the memory changes (under the caller's
    lock, so that the file's order is the memory's)."""

    def __init__(self, path, *, broker: str, client_id: str):
        self.path = Path(path)
        self.header = {"lstm-stream-bridge": 1, "boot": boot_id(), "broker": broker, "client_id": client_id}
        self._file = None
        self._records = 0

    def load(self) -> dict:
        """The memory the file holds ({mid: (stream, seq)}), or {} if it is absent or not to be trusted (said
        why in the log); the file is then rewritten with that memory and kept open for appending.
        StateFileError if it cannot be read or written."""
        memory = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as e:
            raise StateFileError(f"--state-file {self.path}: {e.strerror}") from None
        if lines:
            memory = self._replay(lines)
        self.rewrite(memory)
        return memory

    def _replay(self, lines) -> dict:
        try:
            header = json.loads(lines[0])
        except ValueError:
            header = None
        if not isinstance(header, dict) or "lstm-stream-bridge" not in header:
            raise StateFileError(f"--state-file {self.path} is not a bridge's state file (its first line is "
                                 f"{lines[0][:60]!r}); move it away or name another file")
        mine = self.header
        if header.get("broker") != mine["broker"] or header.get("client_id") != mine["client_id"]:
            log.warning("--state-file %s belongs to client id %r at %s, not this bridge's: not used", self.path,
                        header.get("client_id"), header.get("broker"))
            return {}
        if header.get("boot") != mine["boot"]:
            log.warning("--state-file %s was written before the machine restarted: its last records may be lost, "
                        "so it is not used (a message stepped just before the crash may be stepped again)",
                        self.path)
            return {}
        memory = {}
        for n, line in enumerate(lines[1:], 2):
            try:
                rec = json.loads(line)
                if rec[0] == "S":
                    memory[int(rec[1])] = (rec[2], int(rec[3]))
                elif rec[0] == "F":
                    memory.pop(int(rec[1]), None)
            except (ValueError, IndexError, TypeError, KeyError):
                if n == len(lines):  # a torn last line: the process died while writing it
                    break
                raise StateFileError(f"--state-file {self.path}, line {n}: unreadable record {line[:60]!r}; "
                                     "move the file away to start without it") from None
        log.info("--state-file %s: %d packet id(s) remembered", self.path, len(memory))
        return memory

    def stepped(self, mid: int, stream, seq: int) -> None:
        self._append(["S", mid, stream, seq])

    def forgot(self, mid: int) -> None:
        self._append(["F", mid])

    def _append(self, rec) -> None:
        try:
            self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self._file.flush()  # into the kernel: a process crash cannot lose it from here
        except OSError as e:
            raise StateFileError(f"--state-file {self.path}: cannot write it ({e.strerror}); stopping, so that "
                                 "no step goes unrecorded") from None
        self._records += 1

    def should_compact(self, live: int) -> bool:
        return self._records > max(COMPACT_MIN, 4 * live)

    def rewrite(self, memory: dict) -> None:
        """Replace the file with the header and `memory` (written aside, then renamed over it)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.header) + "\n")
                f.writelines(json.dumps(["S", mid, stream, seq], separators=(",", ":")) + "\n"
                             for mid, (stream, seq) in memory.items())
            os.replace(tmp, self.path)
            if self._file is not None:
                self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open until close())
        except OSError as e:
            raise StateFileError(f"--state-file {self.path}: cannot write it ({e.strerror})") from None
        self._records = len(memory)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
