"""Moving streams between shards: what runs on a shard's loop thread while the cluster is rescaled.

A rescale (control.rescale) goes from shard map version v to v+1 in five steps, each one safe to stop after:

1. begin: the keeper saves `next` (v+1) beside the map; every shard refuses requests for its streams whose
   owner changes under it ("moving": `wrong_shard` with version v+1, nothing applied; a restarted shard reads
   `next` from the keeper and keeps refusing them). Steps to the other streams go on as before.
2. export (on each source's loop, once no queued request names a moving stream): every array of the moving
   streams, with their sequence receipts, from Streams.export_slots.
3. import (on each target's loop): the streams created from those arrays, then a snapshot written at once,
   so that the target's restart (snapshot + step log) has them before the map names it their owner.
4. publish: the keeper makes v+1 the map (saved, then pushed to every shard, waited for); clients that send
   to the old owner get `wrong_shard` with v+1, fetch it, and resend to the new owner. A step resent with its
   seq is answered from the moved receipt: applied once.
5. finish (on each source's loop): the moved streams dropped, a snapshot written.

Until publish, aborting (control.abort_move) undoes it: `next` cleared, the targets drop what they imported.
"""
from __future__ import annotations

import numpy as np

from lstm_stream.errors import UnknownStreamError


def export_streams(streams, ids) -> tuple[list, dict]:
    """(the ids that exist, their arrays by name: h, c, steps, last_seen and receipts); cold ones are brought
    back into memory first (their slot is read as any other)."""
    present, slots = [], []
    for i in ids:
        try:
            slots.append(streams._slot(i))  # thaws a cold stream (tiering.py)
        except UnknownStreamError:
            continue
        present.append(i)
    if not present:
        return [], {}
    return present, streams.export_slots(np.array(slots, np.int64))


def import_streams(streams, ids: list, arrays: dict) -> int:
    """Create streams `ids` holding `arrays` (export_streams' form); one already there (left by an aborted
    move) is replaced. StoreFullError before any change if they do not fit."""
    if not ids:
        return 0
    old = [i for i in ids if i in streams]
    streams.check_room(len(ids) - len(old))
    for i in old:
        streams.drop(i)
    slots = streams._store.add_many(ids, 0.0)  # as Streams.import_snapshot does
    streams._generation += 1
    streams.import_slots(slots, arrays)
    return len(ids)


def drop_streams(streams, ids) -> int:
    """Drop those of `ids` that exist (in memory or cold); how many did."""
    n = 0
    for i in ids:
        if i in streams or streams.is_cold(i):
            streams.drop(i)
            n += 1
    return n


def moving_ids(streams, name: str, next_map) -> list:
    """This shard's streams (in memory and cold) whose owner under next_map is another shard."""
    ids = streams.ids()
    cold = streams.cold.ids() if streams.cold is not None else []
    ids = list(dict.fromkeys([*ids, *cold]))
    return [i for i, owner in zip(ids, next_map.owners(ids)) if owner != name]
