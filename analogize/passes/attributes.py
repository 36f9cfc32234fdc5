"""Passes that read or set the attributes of the analog nodes of a converted graph, those inside control-flow
bodies included. Each edits the graph in place and returns how many nodes it touched; evaluate uses them to vary
one converted graph from cell to cell."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN, OPS
from .graph import bodies

SEED_LIMIT = 2**24  # seeds are float attributes: float32 holds every whole number below this exactly


def analog_nodes(graph: gs.Graph, op_types=None) -> list[gs.Node]:
    """The nodes of the analog domain (all of them, or those of ``op_types``): the top level's in graph order,
    then each body's, in :func:`~analogize.passes.graph.bodies` order."""
    return [node for body in (graph, *bodies(graph)) for node in body.nodes
            if node.domain == DOMAIN and (op_types is None or node.op in op_types)]


def seed_random_ops(graph: gs.Graph, seed) -> int:
    """Seed the random analog nodes in :func:`analog_nodes` order: an int gives the n-th node ``seed + n``, a
    sequence gives one seed per node, ``None`` unseeds them all.

    Each node then draws from its own stream: nodes with equal seeds would draw identical noise.
    """
    random_nodes = [node for node in analog_nodes(graph) if OPS[node.op].random]
    if isinstance(seed, int) and seed + len(random_nodes) > SEED_LIMIT:
        raise AnalogizeError(f"--seed {seed}: the model's {len(random_nodes)} random nodes take seeds {seed} to "
                             f"{seed + len(random_nodes) - 1}, but seeds are stored as float32, which holds whole "
                             f"numbers exactly below {SEED_LIMIT}; choose one below "
                             f"{SEED_LIMIT - len(random_nodes) + 1}")
    if seed is None or isinstance(seed, int):
        seeds = [None if seed is None else seed + n for n in range(len(random_nodes))]
    elif len(seed) != len(random_nodes):
        raise ValueError(f"{len(seed)} seeds for {len(random_nodes)} random nodes")
    else:
        seeds = list(seed)
    for node, node_seed in zip(random_nodes, seeds):
        node.attrs.pop("seed", None)
        if node_seed is not None:
            node.attrs["seed"] = float(node_seed)
    return len(random_nodes)


def set_analog_attributes(graph: gs.Graph, op_types, **values) -> int:
    """Set attribute values (checked against the op set) on every analog node of ``op_types``."""
    nodes = analog_nodes(graph, set(op_types))
    for node in nodes:
        spec = OPS[node.op]
        for name, value in values.items():
            node.attrs[name] = spec.attribute(name).check(node.op, value)
    return len(nodes)


def round_deterministically(graph: gs.Graph) -> int:
    """Turn every StochasticReducePrecision into ReducePrecision at the same precision."""
    nodes = analog_nodes(graph, {"StochasticReducePrecision"})
    for node in nodes:
        precision = node.attrs["precision"]
        node.op = "ReducePrecision"
        node.attrs.clear()
        node.attrs.update(OPS["ReducePrecision"].resolve(precision=precision))
    return len(nodes)
