"""``finetune``: retrain a converted model under the same noise it will meet, and write the tuned ONNX.

The converted graph runs as a torch module (:mod:`analogize.training.onnx_torch`): the weights are its parameters,
and every forward pass draws fresh noise and applies the reference training rules. Accuracy before and after
is measured in ONNX Runtime on the written models (noisy over repeated draws, and noise-free), so the report's
numbers are the tuned file's own. Every epoch is checkpointed; ``resume`` continues from the last one.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..native.fusion import unfuse_model_chains
from ..passes.model import is_converted
from ..convert import ConvertOptions, convert, stored_settings
from ..data import Dataset, InputSpec, Preprocessing, fit_to_input
from ..devices import gpu_index
from ..errors import AnalogizeError
from ..evaluate.results import figure_maker
from ..model_io import copy_model
from ..progress import progress_bar
from ..untrusted import Integer, Number, check, check_regular_file, json_data
from . import REPORT_FORMAT, REPORT_VERSION

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")
CHECKPOINT_NAME = "finetune-checkpoint.pt"


@dataclass(frozen=True)
class FinetuneOptions:
    """Every ``analogize finetune`` training flag, with the same name and default."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    optimizer: str = "adam"
    schedule: str = "cosine"
    seed: int = 0
    patience: int | None = None  # epochs without a better noisy accuracy before stopping early
    repeats: int = 5  # noise draws of the before/after evaluations
    device: str = "cpu"

    def check(self) -> "FinetuneOptions":
        if self.optimizer not in OPTIMIZERS:
            raise AnalogizeError(f"unknown optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise AnalogizeError(f"unknown schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AnalogizeError(f"{name.replace('_', '-')} must be a whole number >= 1, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise AnalogizeError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise AnalogizeError(f"weight-decay must be >= 0, got {self.weight_decay!r}")
        if self.patience is not None and (not isinstance(self.patience, int) or self.patience < 1):
            raise AnalogizeError(f"patience must be a whole number >= 1, got {self.patience!r}")
        gpu = gpu_index(self.device)
        if gpu is not None and not torch.cuda.is_available():
            raise AnalogizeError(f"--device {self.device}: torch {torch.__version__} sees no CUDA GPU (a CPU-only "
                                 f"build, or no GPU or driver here); use a machine with an NVIDIA GPU and a CUDA "
                                 f"build of torch, or --device cpu")
        if gpu is not None and gpu >= torch.cuda.device_count():
            raise AnalogizeError(f"--device {self.device}: torch sees {torch.cuda.device_count()} CUDA GPU(s), "
                                 f"numbered from 0")
        return self


def _labels(dataset: Dataset, classes: int) -> np.ndarray:
    if dataset.y is None:
        raise AnalogizeError(f"{dataset.name} has no labels; fine-tuning needs labelled data")
    if len(dataset.y) and dataset.y.max() >= classes:
        raise AnalogizeError(f"{dataset.name}: labels go up to {dataset.y.max()} but the model has {classes} "
                             f"outputs; check that the data matches the model")
    return dataset.y


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a copy) with its top-level float ``Constant`` nodes of more than one value as initializers: the
    weights of exporters that write them as nodes (paddle2onnx) become trainable parameters, and the tuned
    model stores them where the training found them. Stays on protobuf: it moves messages between two of the
    model's lists and nothing else."""
    lifted = copy_model(model)
    kept = []
    for node in lifted.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None and \
                value.data_type == onnx.TensorProto.FLOAT and len(value.dims) and np.prod(value.dims) > 1:
            value.name = node.output[0]
            lifted.graph.initializer.append(value)
        else:
            kept.append(node)
    del lifted.graph.node[:]
    lifted.graph.node.extend(kept)
    return lifted


def with_weights(model: onnx.ModelProto, weights: dict) -> onnx.ModelProto:
    """``model`` with its float initializers replaced by ``weights`` (initializer name -> array)."""
    tuned = copy_model(model)
    for tensor in tuned.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name].astype(np.float32), tensor.name))
    return tuned


def _accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray, repeats: int, seed: int) -> dict:
    """Noisy top-1 accuracy (mean and std over ``repeats`` draws) in ONNX Runtime, and the digital one (the
    analog chains taken out, the activations as converted)."""
    from ..data import model_layout
    from ..evaluate.engine import Grid, evaluate

    layout = model_layout(InputSpec.of(model))  # x is already fitted to the model's input
    result = evaluate(model, Dataset("validation", x, y, layout), Grid(repeats=repeats, seed=seed))
    cell = result["cells"][0]
    return {"noisy_mean": cell["accuracy_mean"], "noisy_std": cell["accuracy_std"],
            "digital": result["clean"]["accuracy_mean"], "repeats": repeats}


class _Distributed:
    """Data-parallel training across the processes torchrun starts (WORLD_SIZE > 1), or a single process."""

    def __init__(self, device: str):
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.started_here = False
        if self.size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
            self.started_here = True

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> str:
        """``cuda`` means each process's own GPU (LOCAL_RANK) under torchrun."""
        if device == "cuda" and self.size > 1:
            return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
        return device

    def wrap(self, module, device: str):
        if self.size == 1:
            return module
        if device.startswith("cuda"):
            return torch.nn.parallel.DistributedDataParallel(module, device_ids=[torch.device(device).index or 0])
        return torch.nn.parallel.DistributedDataParallel(module)

    def mean(self, value: float) -> float:
        """The average over the processes, so that every process takes the same decisions."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor.item()) / self.size

    def close(self) -> None:
        if self.started_here:
            torch.distributed.destroy_process_group()


def finetune(model: onnx.ModelProto, train: Dataset, validation: Dataset, options: FinetuneOptions = FinetuneOptions(),
             convert_options: ConvertOptions | None = None, *, preprocessing: Preprocessing = Preprocessing(),
             checkpoint_dir=None, resume: bool = False, progress: bool = False) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune ``model`` (clean: converted with ``convert_options`` first) under noise; return the tuned
    converted model and the report.

    Started by ``torchrun`` (WORLD_SIZE > 1), the processes split each epoch's batches between them and
    average gradients (DistributedDataParallel; gloo on CPU, NCCL on GPUs); ``batch_size`` is per process.
    Only process 0 evaluates in ONNX Runtime and writes checkpoints.
    """
    options.check()
    distributed = _Distributed(options.device)
    options = replace(options, device=distributed.device(options.device))
    try:
        return _finetune(model, train, validation, options, convert_options, preprocessing, checkpoint_dir, resume,
                         progress, distributed)
    finally:
        distributed.close()


def _finetune(model, train, validation, options, convert_options, preprocessing, checkpoint_dir, resume, progress,
              distributed: _Distributed):
    from .onnx_torch import to_torch

    if not is_converted(model):
        converted = convert(model, convert_options or ConvertOptions()).model
    else:
        if convert_options is not None:  # the seed is the training's own
            convert_options.refuse_on_converted("finetune", varied=("seed",))
        converted = unfuse_model_chains(model)  # a fast-form file trains, and is written, node by node
    converted = constants_as_initializers(converted)
    outputs = [value.name for value in converted.graph.output]
    if len(outputs) != 1:
        raise AnalogizeError(f"finetune trains a model with one output, the class scores its loss reads; this one "
                             f"has {len(outputs)}{' (' + ', '.join(outputs) + ')' if outputs else ''}: save a "
                             f"model whose graph lists only that output")
    x_train, _ = fit_to_input(train, converted, preprocessing)
    x_valid, _ = fit_to_input(validation, converted, preprocessing)
    torch.manual_seed(options.seed + distributed.rank)  # each process draws its own noise
    module = to_torch(converted).to(options.device)
    with torch.no_grad():
        classes = int(np.prod(module(torch.from_numpy(x_train[:1]).to(options.device)).shape[1:]))
    y_train, y_valid = _labels(train, classes), _labels(validation, classes)

    parameters = list(module.parameters())
    if not parameters:
        raise AnalogizeError("the model has no float weights to train (its weights are computed by other nodes)")
    if options.optimizer == "adam":
        optimizer = torch.optim.Adam(parameters, lr=options.lr, weight_decay=options.weight_decay)
    else:
        optimizer = torch.optim.SGD(parameters, lr=options.lr, momentum=0.9, weight_decay=options.weight_decay)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, options.epochs) if options.schedule == "cosine"
                else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0))
    history, start, best = [], 0, (-1.0, None)
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if checkpoint is not None and not resume:
        _check_checkpoint_directory(checkpoint.parent)
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise AnalogizeError(f"nothing to resume: no checkpoint at {checkpoint or '(no --checkpoint-dir given)'}")
        history, start, best = _resume(checkpoint, module, optimizer, schedule, options,
                                       _model_signature(module, converted))

    before = _accuracy(converted, x_valid, y_valid, options.repeats, options.seed) if distributed.leader else None
    trained = distributed.wrap(module, options.device)
    stale = 0
    bar = progress_bar(options.epochs - start, "finetune", progress and distributed.leader, unit="epoch")
    with bar:
        for epoch in range(start, options.epochs):
            # one generator per epoch: a resumed run shuffles as an uninterrupted one does
            shuffle = torch.Generator().manual_seed(options.seed * 100_003 + epoch)
            order = torch.randperm(len(x_train), generator=shuffle).numpy()
            module.train()
            losses = []
            # each round gives every process its own batch of the shared shuffle
            for round_start in range(0, len(order), options.batch_size * distributed.size):
                first = round_start + distributed.rank * options.batch_size
                batch = order[first:first + options.batch_size]
                if not len(batch):  # a short last round: repeat one, so every process joins the gradient sum
                    batch = order[round_start:round_start + options.batch_size]
                inputs = torch.from_numpy(x_train[batch]).to(options.device)
                targets = torch.from_numpy(y_train[batch]).to(options.device)
                loss = torch.nn.functional.cross_entropy(trained(inputs).reshape(len(batch), -1), targets)
                if not math.isfinite(distributed.mean(loss.item())):
                    kept = (f"the last good weights are in {checkpoint}" if checkpoint is not None and
                            checkpoint.exists() else "no checkpoint was written yet")
                    raise AnalogizeError(f"the loss became {loss.item()} in epoch {epoch + 1}; check the data for "
                                         f"NaN or infinite values, or lower --lr ({kept})")
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            schedule.step()
            accuracy = distributed.mean(_torch_accuracy(module, x_valid, y_valid, options))
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "noisy_accuracy": accuracy,
                            "lr": optimizer.param_groups[0]["lr"]})
            if accuracy > best[0]:
                best, stale = (accuracy, {k: v.clone() for k, v in module.state_dict().items()}), 0
            else:
                stale += 1
            if checkpoint is not None and distributed.leader:
                _save_checkpoint(checkpoint, module, optimizer, schedule, history, epoch + 1, best, options,
                                 _model_signature(module, converted))
            bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", noisy_accuracy=f"{accuracy:.1%}")
            bar.update()
            if options.patience is not None and stale >= options.patience:
                break

    module.load_state_dict(best[1])
    tuned = with_weights(converted, module.state_as_initializers())
    if not distributed.leader:
        return tuned, {"rank": distributed.rank}
    after = _accuracy(tuned, x_valid, y_valid, options.repeats, options.seed)
    report = {"format": REPORT_FORMAT, "version": REPORT_VERSION,
              "accuracy_before": before["noisy_mean"], "accuracy_after": after["noisy_mean"],
              "processes": distributed.size,
              "before": before, "after": after, "history": history, "epochs_run": len(history),
              "stopped_early": len(history) < options.epochs and options.patience is not None,
              "options": asdict(options), "settings": stored_settings(converted),
              "samples": {"train": len(x_train), "validation": len(x_valid)}}
    return tuned, report


# What _save_checkpoint writes, as analogize.untrusted checks a checkpoint read back (the torch states are checked
# against this run's own by _fits)
CHECKPOINT_SCHEMA = {
    "options": {str: (str, Number, bool, None)}, "model": {"weights": {str: [Integer]}, "settings": json_data},
    "module": dict, "optimizer": {"state": {str: {str: torch.Tensor}}, "param_groups": list}, "schedule": dict,
    "history": [{"epoch": Integer, "train_loss": Number, "noisy_accuracy": Number, "lr": Number}], "epoch": Integer,
    "best_accuracy": Number, "best_weights": dict, "rng": torch.Tensor}


def _resume(checkpoint: Path, module, optimizer, schedule, options: FinetuneOptions, signature: dict):
    """Restore module, optimizer, schedule and random state from ``checkpoint``, read as data and checked to be
    this run's own: the history, the next epoch and the best (accuracy, weights) so far."""
    what, hint = str(checkpoint), "start afresh in a new --checkpoint-dir"
    check_regular_file(checkpoint, "the checkpoint", hint)
    try:  # tensors and plain containers only: a crafted checkpoint must not run code
        state = torch.load(checkpoint, weights_only=True)
    except Exception as error:  # torch raises many types for foreign, truncated or code-carrying files
        raise AnalogizeError(f"{checkpoint} is not a finetune checkpoint analogize can read as data "
                             f"({type(error).__name__}); {hint}") from None
    if not isinstance(state, dict) or not {"options", "model", "module"} <= set(state):
        raise AnalogizeError(f"{checkpoint} is not a finetune checkpoint; {hint}")
    check(state, CHECKPOINT_SCHEMA, what, hint)
    changeable = ("epochs", "patience", "repeats")
    if {k: v for k, v in state["options"].items() if k not in changeable} != \
            {k: v for k, v in asdict(options).items() if k not in changeable}:
        raise AnalogizeError("the checkpoint was made with other training options; resume with the same flags "
                             "(only --epochs, --patience and --repeats may change)")
    if state["model"] != signature:
        raise AnalogizeError("the checkpoint was made for another model or other convert settings; resume with "
                             "the same model and flags, or start afresh in a new --checkpoint-dir")
    if state["epoch"] != len(state["history"]):
        raise AnalogizeError(f"{what}: epoch {state['epoch']} with {len(state['history'])} epochs of history; {hint}")
    weights = module.state_dict()
    for name, saved, own in (("module", state["module"], weights), ("best_weights", state["best_weights"], weights),
                             ("schedule", state["schedule"], schedule.state_dict()),
                             ("optimizer.param_groups", state["optimizer"]["param_groups"],
                              optimizer.state_dict()["param_groups"])):
        if not _fits(saved, own):
            raise AnalogizeError(f"{what}: its {name} does not fit this run (another model, or torch?); {hint}")
    module.load_state_dict(state["module"])
    try:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise AnalogizeError(f"{what}: its optimizer or random state does not fit this run ("
                             f"{str(error).splitlines()[0][:100]}); {hint}") from None
    kept = _state_per_weight(optimizer)
    if not all(torch.is_tensor(weight) and set(entries) == kept and all(
            value.shape == weight.shape or value.dim() == 0 and math.isfinite(value) and value >= 0  # a step count
            for value in entries.values()) for weight, entries in optimizer.state.items()):
        raise AnalogizeError(f"{what}: its optimizer state does not fit this model's weights; {hint}")
    schedule.load_state_dict(state["schedule"])
    return state["history"], state["epoch"], (state["best_accuracy"], state["best_weights"])


def _state_per_weight(optimizer) -> set:
    """The names of what an optimizer of this kind and these settings keeps per weight, from one step on a weight of
    its own."""
    weight = torch.zeros(1, requires_grad=True)
    weight.grad = torch.zeros(1)
    probe = type(optimizer)([weight], **optimizer.defaults)
    probe.step()
    return set(probe.state[weight])


def _fits(saved, own) -> bool:
    """Whether ``saved`` has the structure of ``own``: the same keys, lengths, tensor shapes and kinds of value."""
    if isinstance(own, dict):
        return isinstance(saved, dict) and saved.keys() == own.keys() and all(_fits(saved[k], own[k]) for k in own)
    if isinstance(own, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(own) and all(map(_fits, saved, own))
    if torch.is_tensor(own):
        return torch.is_tensor(saved) and saved.shape == own.shape and saved.dtype == own.dtype
    if isinstance(own, (int, float)) and not isinstance(own, bool):
        return isinstance(saved, (int, float)) and not isinstance(saved, bool) and math.isfinite(saved)
    return type(saved) is type(own)


def _torch_accuracy(module, x, y, options: FinetuneOptions) -> float:
    """Noisy validation accuracy of one draw, in torch (quick; the report's final numbers come from ORT)."""
    module.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, len(x), 256):
            logits = module(torch.from_numpy(x[first:first + 256]).to(options.device))
            correct += int((logits.reshape(len(logits), -1).argmax(1).cpu().numpy() == y[first:first + 256]).sum())
    return correct / len(x)


def _model_signature(module, converted: onnx.ModelProto) -> dict:
    """What a checkpoint must match to be resumed: the weights' names and shapes and the analog settings."""
    return {"weights": {name: list(value.shape) for name, value in module.state_dict().items()},
            "settings": stored_settings(converted)}


def _check_checkpoint_directory(directory: Path) -> None:
    """Fail before training, not after its first epoch, where the checkpoint directory cannot be made; what this
    makes goes again, so that a run that fails before its first checkpoint leaves no empty directory behind."""
    missing = [folder for folder in (directory, *directory.parents) if not folder.exists()]
    _make_checkpoint_directory(directory)
    for folder in missing:  # the innermost first
        folder.rmdir()


def _make_checkpoint_directory(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AnalogizeError(f"cannot make the checkpoint directory {directory}: {error.strerror or error}") from None


def _save_checkpoint(path: Path, module, optimizer, schedule, history, epoch, best, options, model) -> None:
    from ..model_io import atomic_output

    _make_checkpoint_directory(path.parent)
    with atomic_output(path, keep_on_failure=True) as temporary, open(temporary, "wb") as handle:
        try:
            torch.save({"model": model, "module": module.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "history": history, "epoch": epoch,
                        "best_accuracy": best[0], "best_weights": best[1], "options": asdict(options),
                        "rng": torch.get_rng_state()}, handle)
        except RuntimeError as error:  # torch's zip writer hides a failed write (a full disk) behind its own error
            if isinstance(error.__context__, OSError):
                raise error.__context__ from None
            raise


def split_data(spec: str, limit: int | None = None, validation_spec: str | None = None, seed: int = 0,
               image_size=None, channels=None) -> tuple[Dataset, Dataset]:
    """Training and validation sets: the source's own train/test split (digits, cifar10), ``validation_spec``,
    or else a fixed, seeded fifth of the data held out."""
    from ..data import SPLIT_SOURCES, load_dataset

    hints = {"image_size": image_size, "channels": channels}
    if validation_spec:
        return (load_dataset(spec, limit=limit, **hints), load_dataset(validation_spec, limit=limit, **hints))
    if spec.partition(":")[0] in SPLIT_SOURCES:
        return (load_dataset(spec, split="train", limit=limit, **hints),
                load_dataset(spec, split="test", limit=limit, **hints))
    data = load_dataset(spec, limit=limit, **hints)
    order = np.random.default_rng(seed).permutation(len(data))
    held = max(1, len(data) // 5)
    if len(data) < 2:
        raise AnalogizeError(f"{data.name} has {len(data)} sample(s): too few to hold out validation data")

    def subset(indices, name):
        return Dataset(name, data.x[indices], None if data.y is None else data.y[indices], data.layout,
                       data.class_names, data.notes)

    return subset(order[held:], f"{data.name} (train)"), subset(order[:held], f"{data.name} (validation)")


def finetune_file(source, destination, data: str, options: FinetuneOptions = FinetuneOptions(),
                  convert_options: ConvertOptions | None = None, *, eval_data: str | None = None,
                  limit: int | None = None, checkpoint_dir=None, resume: bool = False, progress: bool = False,
                  plot=None, torch_import=None) -> dict:
    """:func:`finetune` from a model (an ONNX file, or a torch model exported with ``torch_import``) to a tuned
    model file (the CLI's ``analogize finetune``)."""
    from ..data import decode_hints
    from ..model_io import save_model
    from ..torch_import import load_any_model

    options.check()
    model, external, exported = load_any_model(source, torch_import)
    size, channels = decode_hints(model, Preprocessing())
    train, validation = split_data(data, limit, eval_data, options.seed, size, channels)
    tuned, report = finetune(model, train, validation, options, convert_options, checkpoint_dir=checkpoint_dir,
                             resume=resume, progress=progress)
    if "rank" in report:  # a follower process of a torchrun job: process 0 writes
        return report
    save_model(tuned, destination, external_data=external, overwrite_input=source)
    report.update(input=str(source), output=str(destination), data=data, eval_data=eval_data)
    if exported:
        report["exported"] = exported
    if plot:
        plot_curves(report, plot)
    return report


def _activation_text(options: dict) -> str:
    if options["activation"] == "keep":
        return "activations as in the model"
    parameters = [f"{k}={options[k]:g}" for k in ("factor", "alpha", "scale", "temperature")
                  if options.get(k) is not None]
    return f"activation {options['activation']}" + (f" ({', '.join(parameters)})" if parameters else "")


def _settings_text(settings: dict) -> str:
    """The analog settings a converted model records, in the words a figure title has room for."""
    from ..evaluate.results import chain_text

    if not settings:
        return "analog settings not recorded in the model"
    options, precision = settings["options"], settings.get("precision")
    words = [] if precision is None else [f"p = {precision:g}" if options.get("bits") is None
                                          else f"{options['bits']} bits (p = {precision:g})"]
    words.append(f"noise std {settings['std']:.3g}" if settings.get("ep") is None else f"EP {settings['ep']:.3g}")
    return "; ".join(words + [_activation_text(options), chain_text(options)])


@figure_maker
def curves_figure(report: dict):
    """Training loss and noisy validation accuracy per epoch, with the before/after ORT accuracies; the title
    names the model, the data and the settings."""
    from ..evaluate.results import (SERIES_ZORDER, counted, integer_ticks, percent_axis, pyplot, reference_line,
                                    set_title)

    epochs = [h["epoch"] for h in report["history"]]
    figure, (loss_axis, accuracy_axis) = pyplot().subplots(1, 2, figsize=(8.4, 4.0))
    losses = [h["train_loss"] for h in report["history"]]
    loss_axis.plot(epochs, losses, marker="o", zorder=SERIES_ZORDER)
    loss_axis.set(xlabel="epoch", ylabel="training loss (under noise)")
    loss_axis.set_ylim(0, 1.05 * max(losses))  # from a loss's natural base: zoomed, a small change looks large
    accuracy_axis.plot(epochs, [100 * h["noisy_accuracy"] for h in report["history"]], marker="o",
                       zorder=SERIES_ZORDER, label="noisy, one draw (torch)")
    trained_from_scratch = "built" in report  # train's report: "before" is the untrained model
    for key, style in (("before", ":"), ("after", "--")):
        name = "untrained" if key == "before" and trained_from_scratch else key
        reference_line(accuracy_axis, 100 * report[key]["noisy_mean"], linestyle=style,
                       label=f"{name}: {counted(report[key]['repeats'], 'draw')} (ONNX Runtime)")
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy (%)")
    percent_axis(accuracy_axis)
    accuracy_axis.legend(fontsize=8)
    for axis in (loss_axis, accuracy_axis):
        integer_ticks(axis)
        axis.grid(alpha=0.3)
    if trained_from_scratch:
        model, verb = f"{report['built']['model']} (zoo, {report['built']['init']} initialisation)", "trained"
    else:
        model, verb = Path(report["input"]).stem if report.get("input") else "model", "fine-tuned"
    options, samples = report["options"], report["samples"]
    data = f" on {report['data']}" if report.get("data") else ""
    set_title(figure, f"{model} {verb} under noise{data} ({samples['train']} training, {samples['validation']} "
                      f"validation samples)",
              f"{_settings_text(report['settings'])}; {options['optimizer']}, lr {options['lr']:g}, "
              f"batch {options['batch_size']}, {options['schedule']} schedule, seed {options['seed']}")
    figure.tight_layout()
    return figure


def plot_curves(report: dict, path) -> None:
    """Write :func:`curves_figure` to ``path``."""
    from ..evaluate.results import save_figure

    save_figure(curves_figure(report), path)
