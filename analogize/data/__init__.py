"""Data: datasets read from disk (:mod:`.datasets`) and what a model is fed from them (:mod:`.feeds`)."""
from .datasets import (IMAGE_SUFFIXES, LAYOUTS, SPLIT_SOURCES, SPLITS, Dataset, InputSpec, Preprocessing,
                       class_labels, decode_hints, digits, fit_to_input, input_dims, load_dataset, load_for_model,
                       model_layout, spec_file)
from .feeds import Feeds, dataset_feeds, fixed_batch_size, model_feeds

__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "SPLIT_SOURCES", "SPLITS", "Dataset", "Feeds", "InputSpec", "Preprocessing",
           "class_labels", "dataset_feeds", "decode_hints", "digits", "fit_to_input", "fixed_batch_size",
           "input_dims", "load_dataset", "load_for_model", "model_feeds", "model_layout", "spec_file"]
