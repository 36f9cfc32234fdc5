"""ReLU swaps: the activations that replace a graph's ReLUs, and the pass that swaps them in."""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..ops.spec import ALPHA, DOMAIN, OPS
from .graph import is_default_domain


@dataclass(frozen=True)
class ActivationChoice:
    """How a ReLU is replaced; ``op_type`` None keeps it."""

    op_type: str | None
    domain: str = DOMAIN
    fixed: tuple = ()  # attributes the choice pins, as (name, value) pairs
    settable: tuple[str, ...] = ()  # attributes taken from the user's options


ACTIVATIONS: dict[str, ActivationChoice] = {
    "keep": ActivationChoice(None),
    "gelu": ActivationChoice("ReluGeluInterpolation", fixed=(("factor", 1.0),), settable=("scale",)),
    "silu": ActivationChoice("ReluSiluInterpolation", fixed=(("factor", 1.0),), settable=("scale",)),
    "interp-gelu": ActivationChoice("ReluGeluInterpolation", settable=("factor", "scale", "alpha")),
    "interp-silu": ActivationChoice("ReluSiluInterpolation", settable=("factor", "scale", "alpha")),
    "leaky": ActivationChoice("LeakyRelu", domain="", settable=("alpha",)),
    **{f"smooth-{gate.lower()}": ActivationChoice(f"Smooth{gate}", settable=("temperature",))
       for gate in ("Swish", "Gelu", "Gumbel", "Algebraic", "Guderman", "Mish")},
}


def activation_choice(activation: str) -> ActivationChoice:
    """The swap ``activation`` names, or a one-line refusal of a name that names none."""
    if activation not in ACTIVATIONS:
        raise AnalogizeError(f"unknown activation {activation!r}: choose from {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[activation]


def swap_activations(graph: gs.Graph, activation: str, parameters: dict, exclude=()) -> dict:
    """Replace every ReLU of the top-level graph (not in ``exclude``) by ``activation``."""
    choice = activation_choice(activation)
    if choice.op_type is None:
        return {"swapped": [], "op_types": []}
    attributes = dict(choice.fixed)
    attributes.update({name: parameters[name] for name in choice.settable if parameters.get(name) is not None})
    if choice.domain == DOMAIN:
        attributes = OPS[choice.op_type].resolve(**attributes)
    elif "alpha" in attributes:
        attributes["alpha"] = ALPHA.check(choice.op_type, attributes["alpha"])
    swapped = []
    exclude = set(exclude)
    for node in graph.nodes:
        if node.op != "Relu" or not is_default_domain(node) or node.name in exclude or "Relu" in exclude:
            continue
        node.op, node.domain = choice.op_type, choice.domain
        node.attrs.clear()
        node.attrs.update((k, float(v)) for k, v in sorted(attributes.items()))
        swapped.append(node.name or node.outputs[0].name)
    return {"swapped": swapped, "to": choice.op_type, "attributes": attributes,
            "op_types": [choice.op_type] if swapped and choice.domain == DOMAIN else []}
