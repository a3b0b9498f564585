"""Speaker classifiers built from a ``ModelConfig``: encoder, pooling, head and loss picked by name.

This module imports every component module once, so their classes are in the registries before anything
else in the package can be used (``import model.<submodule>`` runs this first). No submodule imports this
package or a module that imports it back: the submodules' imports form a chain
config, base -> registry -> components -> classifier.
"""

from model import encoders, heads, losses, pooling  # noqa: F401  (registers the components)
from model.base import Encoder, Head, Loss, Pooling
from model.classifier import Classifier, build_model, count_parameters, validate
from model.config import ModelConfig, TrainConfig
from model.registry import ENCODERS, HEADS, LOSSES, POOLINGS

__all__ = ["ModelConfig", "TrainConfig", "Classifier", "build_model", "count_parameters", "validate", "Encoder", "Pooling",
           "Head", "Loss", "ENCODERS", "POOLINGS", "HEADS", "LOSSES"]
