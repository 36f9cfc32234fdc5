"""Data specs read from disk and fitted to a model's input, against numpy references."""
import pickle

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from analogize.data import Preprocessing, decode_hints, digits, fit_to_input, load_dataset
from analogize.errors import AnalogizeError


def input_model(shape):
    """The smallest model with a float input of ``shape`` (its output is irrelevant here)."""
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def write_cifar(directory, rng, per_batch=6):
    batches = directory / "cifar-10-batches-py"
    batches.mkdir()
    data = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(batches / name, "wb") as handle:
            pickle.dump({b"data": images, b"labels": labels, b"batch_label": name.encode()}, handle, protocol=2)
        data[name] = (images, labels)
    return data


def test_digits_splits_are_disjoint_stratified_and_fixed():
    train, test = digits("train"), digits("test")
    assert len(train[0]) + len(test[0]) == 1797 and train[0].shape[1:] == (1, 8, 8)
    assert np.bincount(test[1]).min() >= 44 and test[0].max() <= 1.0
    np.testing.assert_array_equal(digits("test")[0], test[0])
    dataset = load_dataset("digits", split="test", limit=10)
    assert len(dataset) == 10 and dataset.y.shape == (10,)


def test_cifar10_batches_are_read_as_nchw_images_with_labels(tmp_path, rng):
    written = write_cifar(tmp_path, rng)
    test = load_dataset(f"cifar10:{tmp_path}")
    images, labels = written["test_batch"]
    np.testing.assert_array_equal(test.x, images.reshape(-1, 3, 32, 32) / np.float32(255))
    np.testing.assert_array_equal(test.y, labels)
    train = load_dataset(f"cifar10:{tmp_path / 'cifar-10-batches-py'}", split="train")
    assert len(train) == 30 and train.class_names[0] == "airplane"


def test_cifar10_loader_refuses_pickles_that_run_code(tmp_path, rng):
    write_cifar(tmp_path, rng)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": Exploit(), b"labels": []}, handle)
    with pytest.raises(AnalogizeError, match="not a CIFAR-10 python batch.*refusing"):
        load_dataset(f"cifar10:{tmp_path}")


def test_image_folder_labels_come_from_sorted_class_folders(tmp_path, rng):
    from PIL import Image

    expected = {}
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for k in range(3):
            pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / name / f"{k}.png")
            expected[(label, k)] = pixels
    (tmp_path / "notes.txt").write_text("not an image")
    dataset = load_dataset(f"imagefolder:{tmp_path}")
    assert dataset.class_names == ("cat", "dog") and dataset.y.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(dataset.x[4], expected[(1, 1)].transpose(2, 0, 1) / np.float32(255))
    gray = load_dataset(f"imagefolder:{tmp_path}", channels=1, image_size=(6, 5))
    assert gray.x.shape == (6, 1, 6, 5)
    reference = np.asarray(Image.fromarray(expected[(0, 0)]).convert("L").resize((5, 6), Image.BILINEAR))
    np.testing.assert_array_equal(gray.x[0, 0], reference / np.float32(255))
    unlabelled = tmp_path / "cat"
    assert load_dataset(f"imagefolder:{unlabelled}").y is None


def test_npz_images_are_fitted_to_the_model_input(tmp_path, rng):
    pixels = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)  # NHWC, uint8
    np.savez(tmp_path / "d.npz", x=pixels, y=np.arange(5))
    dataset = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert dataset.layout == "nhwc"
    x, notes = fit_to_input(dataset, input_model(["n", 3, 8, 8]))
    np.testing.assert_array_equal(x, pixels.transpose(0, 3, 1, 2) / np.float32(255))
    assert notes == ["NHWC -> NCHW"]
    gray, notes = fit_to_input(dataset, input_model(["n", 1, 8, 8]))
    luma = pixels.astype(np.float32) / 255 @ np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(gray[:, 0], luma, atol=1e-6)
    nhwc, _ = fit_to_input(dataset, input_model(["n", 8, 8, 3]),
                           Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)))
    np.testing.assert_allclose(nhwc, (pixels / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0]), atol=1e-6)
    bigger, notes = fit_to_input(dataset, input_model(["n", 3, 16, 16]))
    assert bigger.shape == (5, 3, 16, 16) and "resized 8x8 -> 16x16 (bilinear)" in notes
    assert decode_hints(input_model(["n", 3, 16, 16]), Preprocessing()) == ((16, 16), 3)


def test_flat_data_feeds_flat_models_and_reshapes_into_image_models(tmp_path, rng):
    features = rng.random((4, 64), dtype=np.float32)
    np.savez(tmp_path / "f.npz", x=features)
    dataset = load_dataset(f"npz:{tmp_path / 'f.npz'}")
    assert dataset.y is None
    flat, _ = fit_to_input(dataset, input_model(["n", 64]))
    np.testing.assert_array_equal(flat, features)
    image, _ = fit_to_input(dataset, input_model(["n", 1, 8, 8]))
    np.testing.assert_array_equal(image.reshape(4, 64), features)
    with pytest.raises(AnalogizeError, match="takes 32"):
        fit_to_input(dataset, input_model(["n", 32]))
    with pytest.raises(AnalogizeError, match="cannot be shaped"):
        fit_to_input(dataset, input_model(["n", 3, 8, 8]))


@pytest.mark.parametrize("spec, message", [
    ("mnist", "unknown data spec"), ("npz:", "unknown data spec"), ("npz:/no/such.npz", "does not exist"),
    ("cifar10:{tmp}", "has no test_batch"), ("imagefolder:{tmp}", "holds no images"),
    ("npz:{tmp}/other.npz", "expected 'x'"), ("npz:{tmp}/text.npz", "not a readable .npz"),
    ("npz:{tmp}/ragged.npz", "'y' has shape"), ("npz:{tmp}/negative.npz", ">= 0"),
    ("npz:{tmp}/fraction.npz", "whole class indices"),
])
def test_bad_data_gets_a_clear_error(tmp_path, spec, message):
    np.savez(tmp_path / "other.npz", images=np.zeros((2, 4)))
    (tmp_path / "text.npz").write_text("hello")
    np.savez(tmp_path / "ragged.npz", x=np.zeros((3, 4)), y=np.zeros(2))
    np.savez(tmp_path / "negative.npz", x=np.zeros((2, 4)), y=np.array([0, -1]))
    np.savez(tmp_path / "fraction.npz", x=np.zeros((2, 4)), y=np.array([0.5, 1.0]))
    with pytest.raises(AnalogizeError, match=message):
        load_dataset(spec.format(tmp=tmp_path))


def test_bad_preprocessing_gets_a_clear_error(tmp_path):
    dataset = load_dataset("digits", limit=3)
    with pytest.raises(AnalogizeError, match="model takes 2"):
        fit_to_input(dataset, input_model(["n", 2, 8, 8]))
    with pytest.raises(AnalogizeError, match="give 1 or one per channel"):
        fit_to_input(dataset, input_model(["n", 1, 8, 8]), Preprocessing(mean=(0.1, 0.2)))
    with pytest.raises(AnalogizeError, match="std must be > 0"):
        fit_to_input(dataset, input_model(["n", 1, 8, 8]), Preprocessing(std=(0.0,)))
    with pytest.raises(AnalogizeError, match="rank 3"):
        fit_to_input(dataset, input_model(["n", 8, 8]))
    with pytest.raises(AnalogizeError, match="--limit"):
        load_dataset("digits", limit=0)
    with pytest.raises(AnalogizeError, match="unknown split"):
        load_dataset("digits", split="valid")
    integer_input = onnx.helper.make_model(onnx.helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g", [helper.make_tensor_value_info("x", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [1])]))
    with pytest.raises(AnalogizeError, match="not float32"):
        fit_to_input(dataset, integer_input)


def test_malformed_sources_get_one_line_errors(tmp_path, rng):
    np.savez(tmp_path / "five.npz", x=np.zeros((2, 1, 1, 8, 8)))
    with pytest.raises(AnalogizeError, match="expected"):
        load_dataset(f"npz:{tmp_path / 'five.npz'}")
    write_cifar(tmp_path, rng)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 300), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(AnalogizeError, match="not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{tmp_path}")
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, handle)
    with pytest.raises(AnalogizeError, match="2 images but 1 labels"):
        load_dataset(f"cifar10:{tmp_path}")
    with pytest.raises(AnalogizeError, match="no train/test split"):
        load_dataset(f"npz:{tmp_path / 'five.npz'}", split="train")


def test_limit_spreads_over_the_dataset_and_integer_inputs_are_noted(tmp_path):
    np.savez(tmp_path / "sorted.npz", x=np.arange(100 * 4, dtype=np.int64).reshape(100, 4),
             y=np.repeat(np.arange(10), 10))
    dataset = load_dataset(f"npz:{tmp_path / 'sorted.npz'}", limit=10)
    assert sorted(dataset.y.tolist()) == list(range(10))
    x, notes = fit_to_input(dataset, input_model(["n", 4]))
    assert "int64 inputs used as they are" in notes[0] and x.max() > 1
    with pytest.raises(AnalogizeError, match="image models only"):
        fit_to_input(dataset, input_model(["n", 4]), Preprocessing(size=(2, 2)))


@pytest.mark.parametrize("spec", ["imagefolder:~no-such-user-here/images", "npz:~no-such-user-here/x.npz",
                                  "cifar10:~no-such-user-here"])
def test_a_home_directory_that_does_not_exist_is_one_line(spec):
    """``~user`` of no such user: pathlib raises a bare RuntimeError, which reached the command line as a traceback
    (from the check that outputs stay out of the data's folder, before any data was read)."""
    from analogize.data.datasets import spec_file

    for read in (spec_file, load_dataset):
        with pytest.raises(AnalogizeError, match="names no home directory"):
            read(spec)
