"""Shards on Ray: one engine per shard, the shard map in a named detached actor, ownership by rendezvous
hashing of the stream id (docs/cluster.md).

    storage.py    where shards keep snapshots and step logs, and the map its saved copy (Storage.path_for)
    ownership.py  a shard's wrong_shard check (EngineCore.ownership)
    shard.py      ShardEngine: open_state + EngineCore + Server on a thread (Ray-free)
    actors.py     the Ray actors: MapKeeper and ShardActor (imports ray)
    control.py    up / down / status / shard_map: the Python API that `lstm-stream cluster` runs
    cli.py        `lstm-stream cluster up|status|down`

Only actors.py and control.py import ray, and only when a cluster is used; `pip install 'lstm-stream[ray]'`.
The routing client is clients/cluster.py (ClusterClient), which needs no Ray.
"""
