"""Graph passes: how a model becomes its analog simulation, and how it is taken apart again.

The contract, for every pass in this package:

- A pass is a function ``name(graph: gs.Graph, ...) -> report`` over onnx-graphsurgeon's IR. It edits ``graph``
  in place and returns what it did: a count, or report records (plain dicts) that end up in the command's
  report. It never imports or exports a model, and it raises :class:`analogize.errors.AnalogizeError` for a
  graph it cannot handle.
- A pipeline reads as a list: the model-level steps that need the protobuf model (:mod:`.model`: opset
  moves, function bodies, IR version, settings metadata), then one :func:`.graph.import_model`, the passes in
  order, one :func:`.graph.export_model`, and the model-level steps after it. ``convert`` (:mod:`analogize.convert`),
  ``export`` (:mod:`analogize.export`) and chain fusion (:mod:`analogize.native.fusion`) are such pipelines.
- New tensor names come from :class:`.graph.Names`, so they never shadow a name in a control-flow body.

Modules: :mod:`.graph` (the IR crossing, names, constant analysis), :mod:`.model` (protobuf-level steps),
:mod:`.chains` (analog chains: inserting and removing them), :mod:`.activations` (ReLU swaps),
:mod:`.attributes` (reading and setting analog nodes' attributes: seeds, precision, noise),
:mod:`.deterministic` (the noise-free simulation).
"""
