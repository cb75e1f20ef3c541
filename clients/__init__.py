"""Python client library of the lstm-stream daemon: sync and asyncio, numpy in and out, no numba needed.

    from clients import Client
    with Client("tcp://127.0.0.1:5555") as c:
        y = c.step("pump-7", x)

LocalClient has the same methods over an EngineCore in this process (no daemon, no socket); ClusterClient (and
AsyncClusterClient) the same methods over the shards of a cluster, each request sent to its stream's owner.

The wire format is lstm_stream.protocol (spec: docs/protocol.md); the exception tree is in clients.errors.
"""
from ._api import State
from .aio import AsyncClient, AsyncPipeline
from .client import DEFAULT_ADDRESS, Client, Pipeline
from .local import LocalClient
from .cluster import ClusterClient
from .cluster_aio import AsyncClusterClient
from .errors import (BadReply, BadRequest, Busy, ClientClosed, ClientError, Forbidden, InputError, InternalError, LogFailed,
                     PipelineError, SequenceError, ServerError, StoreFull, Timeout, UnknownModel, UnknownStream,
                     Unsupported, WrongShard)

__all__ = ["AsyncClient", "AsyncPipeline", "BadReply", "BadRequest", "Busy", "Client", "ClientClosed", "ClientError",
           "AsyncClusterClient", "ClusterClient", "WrongShard",
           "DEFAULT_ADDRESS", "Forbidden", "InputError", "InternalError", "LocalClient", "LogFailed", "Pipeline", "PipelineError", "SequenceError", "ServerError", "State",
           "StoreFull", "Timeout", "UnknownModel", "UnknownStream", "Unsupported"]
