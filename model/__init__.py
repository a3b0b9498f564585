"""Speaker classifiers built from a ``ModelConfig``: encoder, pooling, head and loss picked by name."""

from model.config import ModelConfig
from model.classifier import Classifier, build_model, count_parameters

__all__ = ["ModelConfig", "Classifier", "build_model", "count_parameters"]
