"""Where the captured attack step and its cache were imported from before the attacks moved to
:mod:`fastpgd.attacks`; imports written that way keep working."""

from fastpgd.attacks.graph import (
    GRAPH_CACHE,
    CapturedStep,
    CudaGraph,
    GraphCache,
    check_cuda_graph,
    graph_key,
)

__all__ = [
    "GRAPH_CACHE",
    "CapturedStep",
    "CudaGraph",
    "GraphCache",
    "check_cuda_graph",
    "graph_key",
]
