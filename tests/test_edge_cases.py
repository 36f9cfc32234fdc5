"""Issue 17's list of inputs that used to end in a traceback, each run as a user runs it: the command line in a
process of its own, with a timeout and a memory limit (a hang or an unbounded read fails the case instead of
the machine). A refused case must exit 2 with one line on stderr and no traceback, leave no file in the folder
it ran in, and leave its inputs as they were; a case that may also succeed must then exit 0 without a traceback
or a stray Python warning. The default run takes a quick case of most kinds; ``-m slow`` takes the others. Run
as a script (``python tests/test_edge_cases.py [WORD ...]``) it prints the outcome of every case (or of those
whose names hold a WORD) as a table."""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import DEFAULT_MODEL, ROOT

TIMEOUT_S = 300
MEMORY_LIMIT = 8 << 30
TRAINING = ("--data", "digits", "--limit", "20", "--epochs", "1", "--repeats", "1", "--quiet")
EVALUATION = ("--data", "digits", "--limit", "10", "--repeats", "1", "--quiet", "--no-baseline")


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple  # "{input}" names a file of Inputs
    may_succeed: bool = False  # valid input at an edge: success, or a one-line refusal
    quick: bool = False  # in the default test run


# Forged analogize.settings metadata: what the stored record becomes (text, or a function of the real record)
def _set(path: str, value):
    def forge(settings: dict) -> str:
        forged = json.loads(json.dumps(settings))
        *parents, last = path.split(".")
        target = forged
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return json.dumps(forged)
    return forge


SETTINGS = {
    "empty": "", "not-json": "not json", "truncated": lambda s: json.dumps(s)[:60], "null": "null", "array": "[]",
    "number": "7", "empty-object": "{}", "nan": lambda s: json.dumps(s).replace('"std": ', '"std": NaN, "x": ', 1),
    "infinite": lambda s: json.dumps(s).replace('"std": ', '"std": 1e999, "x": ', 1),
    "deep": "[" * 100_000 + "]" * 100_000, "options-string": _set("options", "x"),
    "bits-string": _set("options.bits", "8"), "bits-negative": _set("options.bits", -3),
    "bits-huge": _set("options.bits", 10**30), "unknown-option": _set("options.nosuch", 1),
    "weight-range-bogus": _set("options.weight_range", "bogus"), "precision-zero": _set("precision", 0),
    "std-negative": _set("std", -1), "ranges-object": _set("ranges", {}), "range-string": _set("ranges.0.range", "x"),
    "where-bogus": _set("options.where", ["nowhere"]), "activation-bogus": _set("options.activation", "bogus"),
    "plan-bogus": _set("options.plan", {"x": 1}), "ep-two": _set("options.ep", 2.0),
}
SPECS = {"not-json": "not json", "array": "[]", "empty-object": "{}", "truncated": lambda s: json.dumps(s)[:80],
         "deep": "[" * 100_000 + "]" * 100_000, "settings-string": _set("settings", "x"),
         "format-bogus": _set("export.format", "bogus"), "bits-other": _set("settings.options.bits", 3)}
# Forged shard parts for merge, applied to both parts (else they differ from each other at once) but those of
# ONE_PART
PARTS = {"not-json": "not json", "array": "[]", "cells-string": _set("cells", "x"), "cell-count-huge":
         _set("cell_count", 10**12), "shard-count-huge": _set("shard.count", 2**64),
         "shard-index-negative": _set("shard.index", -1), "accuracy-nan": lambda p: json.dumps(p).replace(
             '"accuracy_mean": ', '"accuracy_mean": NaN, "x": ', 1), "deep": "[" * 100_000 + "]" * 100_000,
         "model-differs": _set("model_sha256", "0" * 64)}
ONE_PART = ("model-differs",)

CASES = [
    *(Case(f"settings {variant}: {command}", argv, quick=(variant, command) == ("unknown-option", "export"))
      for variant in SETTINGS for command, argv in (
          ("export", ("export", f"{{settings_{variant}}}", "-o", "e.onnx")),
          ("evaluate", ("evaluate", f"{{settings_{variant}}}", *EVALUATION, "--json", "r.json")),
          ("finetune", ("finetune", f"{{settings_{variant}}}", *TRAINING, "-o", "t.onnx")))),
    Case("settings not UTF-8: evaluate", ("evaluate", "{settings_bytes}", *EVALUATION, "--json", "r.json")),
    *(Case(f"spec {variant}: rebuild", ("rebuild", "{exported}", "--spec", f"{{spec_{variant}}}", "-o", "r.onnx"),
           quick=variant == "bits-other") for variant in SPECS),
    *(Case(f"shard parts {variant}: merge", ("merge", f"{{part_{variant}_0}}", f"{{part_{variant}_1}}", "-o", "m.json",
                                             "--csv", "m.csv"), quick=variant == "shard-count-huge")
      for variant in PARTS),
    Case("shard part twice: merge", ("merge", "{part_real_0}", "{part_real_0}", "-o", "m.json")),
    Case("shard part and a directory: merge", ("merge", "{part_real_0}", "{folder}", "-o", "m.json")),
    *(Case(f"names not UTF-8: {command}", argv, quick=command == "convert") for command, argv in (
        ("convert", ("convert", "{badnames}", "-o", "c.onnx")),
        ("evaluate", ("evaluate", "{badnames}", "--data", "{features}", "--repeats", "1", "--quiet")))),
    *(Case(f"node with no output: {command}", argv, quick=command == "convert") for command, argv in (
        ("convert", ("convert", "{orphan}", "-o", "c.onnx")),
        ("evaluate", ("evaluate", "{orphan}", "--data", "{features}", "--repeats", "1", "--quiet")))),
    Case("--ep 1e-20: convert", ("convert", "{model}", "-o", "c.onnx", "--ep", "1e-20"), may_succeed=True, quick=True),
    Case("--ep 1e-20: evaluate", ("evaluate", "{model}", *EVALUATION, "--ep", "1e-20"), may_succeed=True),
    Case("--ep 1e-20: finetune", ("finetune", "{model}", *TRAINING, "-o", "t.onnx", "--ep", "1e-20"),
         may_succeed=True),
    Case("--ep 0.9999999999999999: convert", ("convert", "{model}", "-o", "c.onnx", "--ep", "0.9999999999999999")),
    Case("--ep 0.9999999999999999: evaluate", ("evaluate", "{model}", *EVALUATION, "--ep", "0.9999999999999999")),
    Case("--ep 0.9999999999999999: finetune", ("finetune", "{model}", *TRAINING, "-o", "t.onnx", "--ep",
                                               "0.9999999999999999")),
    *(Case(f"--seed {seed}: {command}", (*argv, "--seed", seed), quick=command == "zoo export" and seed == "-1")
      for seed in (str(2**63), str(2**64), "-1") for command, argv in (
          ("convert", ("convert", "{model}", "-o", "c.onnx")), ("evaluate", ("evaluate", "{model}", *EVALUATION)),
          ("finetune", ("finetune", "{model}", *TRAINING, "-o", "t.onnx")),
          ("zoo export", ("zoo", "export", "convnet", "-o", "z.onnx", "--option", "width=0.1")),
          ("analyze gradient-error", ("analyze", "gradient-error", "--points", "5", "--repeats", "1",
                                      "--json", "a.json")))),
    Case("--device bogus: evaluate", ("evaluate", "{model}", *EVALUATION, "--device", "bogus"), quick=True),
    Case("--device bogus: finetune", ("finetune", "{model}", *TRAINING, "-o", "t.onnx", "--device", "bogus")),
    Case("--resize 20000x20000: evaluate", ("evaluate", "{model}", *EVALUATION, "--resize", "20000x20000"),
         quick=True),
    Case("--resize 20000x20000: evaluate a model of any image size", ("evaluate", "{anysize}", *EVALUATION,
                                                                      "--resize", "20000x20000")),
    Case("--resize 20000x20000: evaluate imagefolder", ("evaluate", "{model}", "--data", "imagefolder:{images}",
                                                        "--repeats", "1", "--quiet", "--resize", "20000x20000")),
    *(Case(f"npz {kind}: evaluate", ("evaluate", "{model}", "--data", f"npz:{{npz_{kind}}}", "--repeats", "1",
                                     "--quiet"), quick=kind == "rows-1e12")
      for kind in ("garbage", "truncated", "empty", "rows-1e12", "npy")),
    Case("npz rows-1e12: convert --calibrate", ("convert", "{model}", "-o", "c.onnx", "--calibrate",
                                                "npz:{npz_rows-1e12}")),
    *(Case(f"image {kind}: evaluate", ("evaluate", "{model}", "--data", f"imagefolder:{{images_{kind}}}",
                                       "--repeats", "1", "--quiet"), quick=kind == "bomb")
      for kind in ("garbage", "truncated", "bomb")),
    *(Case(f"checkpoint {kind}: finetune --resume", ("finetune", "{converted}", *TRAINING, "-o", "t.onnx",
                                                     "--checkpoint-dir", f"{{checkpoint_{kind}}}", "--resume"))
      for kind in ("garbage", "truncated", "directory")),
    *(Case(f"sweep directory {kind}: sweep", ("sweep", f"{{sweep_{kind}}}", "--activation", "relu", "--seeds", "1",
                                              "--data", "digits", "--limit", "40", "--epochs", "1", "--repeats",
                                              "1", "--quiet"), quick=kind == "marker-garbage")
      for kind in ("marker-garbage", "marker-directory", "cell-garbage")),
    Case("zoo export into a missing folder", ("zoo", "export", "convnet", "-o", "missing/z.onnx")),
    Case("zoo export --option width=abc", ("zoo", "export", "convnet", "-o", "z.onnx", "--option", "width=abc")),
    Case("zoo export --option nosuch=1", ("zoo", "export", "convnet", "-o", "z.onnx", "--option", "nosuch=1")),
    Case("zoo export --image-size 1", ("zoo", "export", "convnet", "-o", "z.onnx", "--image-size", "1")),
    Case("zoo export resnet18 --image-size 1", ("zoo", "export", "resnet18", "-o", "z.onnx", "--option",
                                                "width=0.1", "--image-size", "1"), may_succeed=True),
    Case("zoo export vgg_a, small, default pool", ("zoo", "export", "vgg_a", "-o", "z.onnx", "--option",
                                                   "width=0.0625", "--option", "classifier_width=16"),
         may_succeed=True, quick=True),
    Case("zoo export vgg_a with its defaults", ("zoo", "export", "vgg_a", "-o", "z.onnx"), may_succeed=True),
    *(Case(f"a model {what}: {argv[0]}", argv, quick=True) for what, argv in (
        ("with two outputs", ("finetune", "{graph_two-outputs}", "--data", "{features}", "--epochs", "1",
                              "--repeats", "1", "--quiet", "-o", "t.onnx")),
        ("with no output", ("evaluate", "{graph_no-output}", "--data", "{features}", "--repeats", "1", "--quiet")),
        ("with a sequence input", ("evaluate", "{graph_sequence-input}", "--data", "digits", "--repeats", "1",
                                   "--quiet")),
        ("with an unknown analog op", ("evaluate", "{graph_unknown-op}", "--data", "{features}", "--repeats", "1",
                                       "--quiet")),
        ("that fails to run", ("evaluate", "{graph_run-fails}", "--data", "{features}", "--repeats", "1",
                               "--quiet")))),
    *(Case(f"fused chain with no input: {command}", argv, quick=command == "evaluate") for command, argv in (
        ("evaluate", ("evaluate", "{fast_no-input}", *EVALUATION)),
        ("export", ("export", "{fast_no-input}", "-o", "e.onnx")),
        ("finetune", ("finetune", "{fast_no-input}", *TRAINING, "-o", "t.onnx")))),
    Case("--scale inf: convert", ("convert", "{model}", "-o", "c.onnx", "--scale", "inf"), quick=True),
    Case("--input-std 1e-40: evaluate", ("evaluate", "{model}", *EVALUATION, "--input-std", "1e-40"), quick=True),
    Case("--input-mean 1e39: evaluate", ("evaluate", "{model}", *EVALUATION, "--input-mean", "1e39")),
    Case("labels past int64: evaluate", ("evaluate", "{graph_features}", "--data", "npz:{npz_labels-huge}",
                                         "--repeats", "1", "--quiet"), quick=True),
    Case("npz images 0 pixels high: evaluate", ("evaluate", "{model}", "--data", "npz:{npz_no-height}",
                                                "--repeats", "1", "--quiet"), quick=True),
    Case("zoo export --option width=(1,2)", ("zoo", "export", "convnet", "-o", "z.onnx", "--option", "width=(1,2)"),
         quick=True),
    Case("finetune whose loss diverges, with --checkpoint-dir", ("finetune", "{model}", *TRAINING, "-o", "t.onnx",
                                                                 "--lr", "1e30", "--batch-size", "4",
                                                                 "--checkpoint-dir", "checkpoints/run"), quick=True),
    *(Case(f"named pipe as {what}", argv, quick=what == "the model of evaluate") for what, argv in (
        ("the model of convert", ("convert", "{pipe}", "-o", "c.onnx")),
        ("the model of evaluate", ("evaluate", "{pipe}", *EVALUATION)),
        ("the model of export", ("export", "{pipe}", "-o", "e.onnx")),
        ("the model of finetune", ("finetune", "{pipe}", *TRAINING, "-o", "t.onnx")),
        ("a part of merge", ("merge", "{pipe}", "{part_real_1}", "-o", "m.json")),
        ("a result of report", ("report", "{pipe}", "-o", "r.html")),
        ("the plan of convert", ("convert", "{model}", "--plan", "{pipe}", "-o", "c.onnx")),
        ("the spec of rebuild", ("rebuild", "{exported}", "--spec", "{pipe}", "-o", "r.onnx")),
        ("the data of evaluate", ("evaluate", "{model}", "--data", "npz:{pipe}", "--repeats", "1", "--quiet")))),
    *(Case(f"/dev/zero as {what}", argv, quick=what == "a result of report") for what, argv in (
        ("the model of convert", ("convert", "/dev/zero", "-o", "c.onnx")),
        ("a part of merge", ("merge", "/dev/zero", "{part_real_1}", "-o", "m.json")),
        ("a result of report", ("report", "/dev/zero", "-o", "r.html")),
        ("the plan of convert", ("convert", "{model}", "--plan", "/dev/zero", "-o", "c.onnx")),
        ("the spec of rebuild", ("rebuild", "{exported}", "--spec", "/dev/zero", "-o", "r.onnx")),
        ("the data of evaluate", ("evaluate", "{model}", "--data", "npz:/dev/zero", "--repeats", "1", "--quiet")),
        ("the weights of a torch factory", ("convert", "torch.nn:Identity", "--state-dict", "/dev/zero", "-o",
                                            "c.onnx")))),
]


class Inputs:
    """The files the cases read, each made in ``folder`` on first use."""

    def __init__(self, folder: Path):
        self.folder, self.made = folder, {}

    def __getitem__(self, name: str) -> str:
        if name not in self.made:
            kind, _, variant = name.partition("_")
            self.made[name] = str(getattr(self, "make_" + kind.replace("-", "_"))(variant))
        return self.made[name]

    def path(self, name: str) -> Path:
        return self.folder / name

    def make_folder(self, _):
        return self.folder

    def make_model(self, _):
        return shutil.copy(DEFAULT_MODEL, self.path("model.onnx"))

    def make_converted(self, _):
        from analogize.convert import convert

        onnx.save(convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=1).model, self.path("converted.onnx"))
        return self.path("converted.onnx")

    def make_settings(self, variant):
        from analogize.convert import stored_settings
        from analogize.passes.model import METADATA_KEY

        model = onnx.load(self["converted"])
        entry = next(entry for entry in model.metadata_props if entry.key == METADATA_KEY)
        placeholder = "S" * 40
        if variant == "bytes":
            entry.value = placeholder
            data = model.SerializeToString().replace(placeholder.encode(), b"\xff" * len(placeholder))
        else:
            forgery = SETTINGS[variant]
            entry.value = forgery(stored_settings(model)) if callable(forgery) else forgery
            data = model.SerializeToString()
        path = self.path(f"settings-{variant}.onnx")
        path.write_bytes(data)
        return path

    def make_exported(self, _):
        from analogize.export import export

        exported, spec = export(onnx.load(self["converted"]), "qdq")
        onnx.save(exported, self.path("exported.onnx"))
        self.path("exported.spec.json").write_text(json.dumps(spec))
        return self.path("exported.onnx")

    def make_spec(self, variant):
        spec = json.loads(Path(self["exported"]).with_name("exported.spec.json").read_text())
        forgery = SPECS[variant]
        path = self.path(f"spec-{variant}.json")
        path.write_text(forgery(spec) if callable(forgery) else forgery)
        return path

    def make_part(self, variant_and_index):
        variant, _, index = variant_and_index.rpartition("_")
        if variant == "real":
            from analogize.cli import main

            path = self.path(f"part-real-{index}.json")
            assert main(["evaluate", str(DEFAULT_MODEL), "--data", "digits", "--limit", "20", "--repeats", "1",
                         "--bits", "4", "--ep", "0.1,0.3", "--quiet", "--shard", f"{index}/2", "--json",
                         str(path)]) == 0
            return path
        if variant in ONE_PART and index == "0":
            return self[f"part_real_{index}"]
        part = json.loads(Path(self[f"part_real_{index}"]).read_text())
        forgery = PARTS[variant]
        path = self.path(f"part-{variant}-{index}.json")
        path.write_text(forgery(part) if callable(forgery) else forgery)
        return path

    def make_badnames(self, _):
        """A model whose node name and tensor name are not UTF-8 (protobuf hands such strings over as bytes)."""
        model = _features_model(node_name="N" * 8, hidden="h" * 8)
        data = model.SerializeToString().replace(b"N" * 8, b"\xff\xfeNNNNNN").replace(b"h" * 8, b"\xc3(hhhhhh")
        self.path("not-utf8.onnx").write_bytes(data)
        return self.path("not-utf8.onnx")

    def make_orphan(self, _):
        model = _features_model()
        model.graph.node.append(helper.make_node("Relu", ["y"], [], name="orphan"))
        self.path("no-output.onnx").write_bytes(model.SerializeToString())
        return self.path("no-output.onnx")

    def make_anysize(self, _):
        """A model that takes images of any height and width (global pooling, then a layer to 10 classes)."""
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["y"])]
        graph = helper.make_graph(nodes, "anysize",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, "h", "w"])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                                  [numpy_helper.from_array(np.ones((1, 10), np.float32), "w")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), self.path("anysize.onnx"))
        return self.path("anysize.onnx")

    def make_features(self, _):
        rng = np.random.default_rng(0)
        np.savez(self.path("features.npz"), x=rng.standard_normal((10, 4)).astype(np.float32), y=np.arange(10) % 3)
        return "npz:" + str(self.path("features.npz"))

    def make_npz(self, kind):
        path = self.path(f"{kind}.npz")
        if kind == "garbage":
            path.write_bytes(os.urandom(2000))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "npy":
            np.save(self.path("bare.npy"), np.zeros((4, 1, 8, 8), np.float32))
            os.replace(self.path("bare.npy"), path)
        elif kind == "labels-huge":  # past int64: casting them to class indices overflowed, with numpy's warning
            np.savez(path, x=np.zeros((10, 4), np.float32), y=np.full(10, 1e300))
        elif kind == "no-height":
            np.savez(path, x=np.zeros((10, 1, 0, 8), np.float32), y=np.zeros(10, np.int64))
        elif kind == "truncated":
            np.savez(path, x=np.zeros((30, 1, 8, 8), np.float32), y=np.zeros(30, np.int64))
            path.write_bytes(path.read_bytes()[:1000])
        else:  # x's header claims 10^12 samples; it holds the data of 30
            with zipfile.ZipFile(path, "w") as archive:
                with archive.open("x.npy", "w") as member:
                    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                                  "shape": (10**12, 1, 8, 8)})
                    member.write(np.zeros((30, 1, 8, 8), np.float32).tobytes())
        return path

    def make_images(self, kind):
        from PIL import Image

        folder = self.path(f"images-{kind or 'real'}")
        for label in ("a", "b"):
            (folder / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 if label == "a" else 200, np.uint8)).save(folder / label / "1.png")
        damaged = folder / "b" / "2.png"
        if kind == "garbage":
            damaged.write_bytes(os.urandom(500))
        elif kind == "truncated":
            damaged.write_bytes((folder / "a" / "1.png").read_bytes()[:40])
        elif kind == "bomb":
            damaged.write_bytes(_png_bomb(14_000, 14_000))  # past twice PIL's limit: refused, not warned about
        return folder

    def make_checkpoint(self, kind):
        from analogize.cli import main

        folder = self.path(f"checkpoint-{kind}")
        folder.mkdir()
        checkpoint = folder / "finetune-checkpoint.pt"
        if kind == "garbage":
            checkpoint.write_bytes(os.urandom(3000))
        elif kind == "directory":
            checkpoint.mkdir()
        else:
            assert main(["finetune", self["converted"], *TRAINING, "-o", str(folder / "t.onnx"), "--checkpoint-dir",
                         str(folder)]) == 0
            (folder / "t.onnx").unlink()
            checkpoint.write_bytes(checkpoint.read_bytes()[:checkpoint.stat().st_size // 2])
        return folder

    def make_sweep(self, kind):
        from analogize.training.sweep import SETTINGS_FILE

        folder = self.path(f"sweep-{kind}")
        (folder / "cells").mkdir(parents=True)
        if kind == "marker-garbage":
            (folder / SETTINGS_FILE).write_text("{not json")
        elif kind == "marker-directory":
            (folder / SETTINGS_FILE).mkdir()
        else:
            from analogize.cli import main

            assert main(["sweep", str(folder), "--activation", "relu", "--seeds", "1", "--data", "digits", "--limit",
                         "40", "--epochs", "1", "--repeats", "1", "--quiet"]) == 0
            for cell in (folder / "cells").iterdir():
                cell.write_text("{not json")
        return folder

    def make_graph(self, variant):
        """A tiny model of each kind the cases name: the features model, or one of its variants."""
        model = _features_model()
        if variant == "two-outputs":
            model.graph.node.append(helper.make_node("Sigmoid", ["hidden"], ["z"]))
            model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 3]))
        elif variant == "no-output":
            del model.graph.output[:]
        elif variant == "sequence-input":
            model.graph.node.insert(0, helper.make_node("SequenceAt", ["s", "first"], ["x"]))
            model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), "first"))
            del model.graph.input[:]
            model.graph.input.append(helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None))
        elif variant == "unknown-op":
            model.graph.node[1].op_type, model.graph.node[1].domain = "NoSuchOp", "ai.analogize"
            model.opset_import.append(helper.make_opsetid("ai.analogize", 1))
        elif variant == "run-fails":  # a reshape to 7 values, which no batch of 4 features gives
            model.graph.node.insert(0, helper.make_node("Reshape", ["x", "seven"], ["reshaped"]))
            model.graph.node.append(helper.make_node("ReduceSum", ["reshaped"], ["total"]))
            model.graph.node[2].output[0] = "relu"
            model.graph.node.append(helper.make_node("Add", ["relu", "total"], ["y"]))
            model.graph.initializer.append(numpy_helper.from_array(np.array([7], np.int64), "seven"))
        path = self.path(f"graph-{variant}.onnx")
        path.write_bytes(model.SerializeToString())
        return path

    def make_fast(self, variant):
        """The converted model's fast form; ``no-input``: its first fused chain given no input."""
        from analogize.cli import main

        path = self.path("fast.onnx")
        if not path.exists():
            assert main(["fast", self["converted"], "-o", str(path)]) == 0
        if variant != "no-input":
            return path
        model = onnx.load(path)
        del next(node for node in model.graph.node if node.op_type == "FusedChain").input[:]
        onnx.save(model, self.path("fast-no-input.onnx"))
        return self.path("fast-no-input.onnx")

    def make_pipe(self, _):
        os.mkfifo(self.path("pipe"))
        return self.path("pipe")


def _features_model(node_name: str = "layer", hidden: str = "hidden") -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w"], [hidden], name=node_name),
             helper.make_node("Relu", [hidden], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "features", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
                              [numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _png_bomb(width: int, height: int) -> bytes:
    """A grayscale PNG of ``width`` x ``height`` zeros, under a megabyte compressed."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = zlib.compress(bytes((width + 1) * height), 1)  # each row: its filter byte, then its pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _contents(folder: Path) -> dict:
    """Every file under ``folder`` and its hash (pipes and folders by kind)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        found[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest() \
            if path.is_file() else "folder" if path.is_dir() else "other"
    return found


_PYTHON_WARNING = re.compile(r"\b\w*Warning: ")


def run_case(case: Case, inputs: Inputs, folder: Path) -> tuple[str | None, int | None, str]:
    """Run ``case`` in the empty ``folder``: (what is wrong or None, exit code, stderr)."""
    argv = [str(arg).format_map(inputs) for arg in case.argv]
    before = _contents(inputs.folder)
    folder.mkdir()
    try:
        finished = subprocess.run([sys.executable, "-m", "analogize", *argv], cwd=folder, capture_output=True,
                                  text=True, timeout=TIMEOUT_S, preexec_fn=_limited,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:
        return f"no answer in {TIMEOUT_S} s", None, ""
    code, err = finished.returncode, finished.stderr
    left, changed = sorted(os.listdir(folder)), _contents(inputs.folder) != before
    if "Traceback" in err:
        wrong = "a traceback"
    elif changed:
        wrong = "its inputs changed"
    elif code == 0 and case.may_succeed:
        wrong = "a Python warning" if _PYTHON_WARNING.search(err) else None
    elif code != 2:
        wrong = f"exit {code}"
    elif len(err.strip().splitlines()) != 1:
        wrong = f"{len(err.strip().splitlines())} lines on stderr"
    else:
        wrong = f"left {', '.join(left)}" if left else None
    return wrong, code, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return Inputs(tmp_path_factory.mktemp("inputs"))


def _cases(quick: bool):
    return [pytest.param(case, id=case.name) for case in CASES if case.quick == quick]


@pytest.mark.parametrize("case", _cases(quick=True))
def test_an_edge_gets_one_line_or_success(case, inputs, tmp_path):
    wrong, code, err = run_case(case, inputs, tmp_path / "run")
    assert wrong is None, f"{wrong}: exit {code}: {err.strip()[-600:]}"


@pytest.mark.slow
@pytest.mark.parametrize("case", _cases(quick=False))
def test_every_edge_gets_one_line_or_success(case, inputs, tmp_path):
    wrong, code, err = run_case(case, inputs, tmp_path / "run")
    assert wrong is None, f"{wrong}: exit {code}: {err.strip()[-600:]}"


def test_an_input_that_ends_early_is_no_interrupt(monkeypatch, capsys):
    """click takes an EOFError for the Abort of a Ctrl-C: a truncated input was 'interrupted', exit 130."""
    from analogize.cli import main
    from analogize.evaluate import engine

    def truncated(*args, **kwargs):
        raise EOFError("Ran out of input")

    monkeypatch.setattr(engine, "evaluate_file", truncated)
    assert main(["evaluate", str(DEFAULT_MODEL), "--data", "digits", "--quiet"]) == 2
    assert capsys.readouterr().err == "analogize: error: an input ended early (Ran out of input); a file it read " \
                                      "is truncated: write it again\n"


def test_torch_out_of_memory_is_one_line(monkeypatch, capsys):
    """torch's CPU allocator fails with a RuntimeError, not numpy's MemoryError."""
    import torch

    from analogize.cli import main
    from analogize.evaluate import engine

    monkeypatch.setattr(engine, "evaluate_file", lambda *args, **kwargs: torch.empty(2**50, dtype=torch.uint8))
    assert main(["evaluate", str(DEFAULT_MODEL), "--data", "digits", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("analogize: error: out of memory (") and "can't allocate memory" in err
    assert err.count("\n") == 1


def test_other_runtime_errors_stay_bugs(monkeypatch):
    from analogize.cli import main
    from analogize.evaluate import engine

    def broken(*args, **kwargs):
        raise RuntimeError("an internal bug")

    monkeypatch.setattr(engine, "evaluate_file", broken)
    with pytest.raises(RuntimeError, match="an internal bug"):
        main(["evaluate", str(DEFAULT_MODEL), "--data", "digits", "--quiet"])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [("ops", "--json"), ("evaluate", "{model}", "--data", "digits", "--limit", "10",
                                                       "--repeats", "1", "--quiet", "--json", "-", "--csv", "r.csv")])
def test_standard_output_on_a_full_disk_is_one_line(argv, tmp_path):
    """Writing the result to a full disk: one line, exit 2, and none of the command's files."""
    argv = [arg.replace("{model}", str(DEFAULT_MODEL)) for arg in argv]
    with open("/dev/full", "w") as full:
        finished = subprocess.run([sys.executable, "-m", "analogize", *argv], cwd=tmp_path, stdout=full,
                                  stderr=subprocess.PIPE, text=True, timeout=TIMEOUT_S,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 2
    assert finished.stderr == "analogize: error: cannot write to standard output (No space left on device); send " \
                              "it to a file on a disk with room, or to a reader that takes all of it\n"
    assert not list(tmp_path.iterdir())


def test_an_output_name_that_fits_is_written(tmp_path):
    """250 bytes fit a file name; the staging directory's, with this host and process added, did not."""
    from analogize.cli import main

    output = tmp_path / ("a" * 245 + ".onnx")
    assert main(["convert", str(DEFAULT_MODEL), "-o", str(output)]) == 0
    assert [path.name for path in tmp_path.iterdir()] == [output.name]
    onnx.checker.check_model(str(output))


def test_an_interrupt_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while evaluating: 'interrupted', exit 130, and no output file."""
    import fcntl
    import pty
    import termios

    leader, follower = pty.openpty()  # stderr at a terminal: the progress bar shows when the evaluation runs
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a bar 0 columns wide is none
    process = subprocess.Popen([sys.executable, "-m", "analogize", "evaluate", str(DEFAULT_MODEL), "--data", "digits",
                                "--repeats", "100", "--json", "r.json"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=follower, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(follower)
    shown = os.read(leader, 1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed with the process
            break
        shown += chunk
    os.close(leader)
    lines = shown.decode(errors="replace").replace("\r", "\n").split("\n")
    assert "Traceback" not in shown.decode(errors="replace")
    assert [line.strip() for line in lines if line.strip()][-1] == "analogize: interrupted"
    assert not list(tmp_path.iterdir())


if __name__ == "__main__":
    import tempfile

    chosen = [case for case in CASES if not sys.argv[1:] or any(word in case.name for word in sys.argv[1:])]
    with tempfile.TemporaryDirectory() as scratch:
        made = Inputs(Path(scratch) / "inputs")
        made.folder.mkdir()
        for number, case in enumerate(chosen):
            wrong, code, err = run_case(case, made, Path(scratch) / f"run-{number}")
            lines = err.strip().splitlines()
            shown = "traceback: " + lines[-1] if "Traceback" in err else " | ".join(lines)
            print(f"{'ok  ' if wrong is None else 'FAIL'}\t{case.name}\t{code}\t{wrong or ''}\t{shown[:200]}",
                  flush=True)
