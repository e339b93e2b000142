"""A stand-in for a codec's decoder graph or exact network that fails the test if it runs: how
tests show that a frame (classical, or an exact level) decodes without that model."""

from __future__ import annotations

import numpy as np


class NoModel:
    def __init__(self, why: str = "this frame must decode without the model") -> None:
        self.why = why

    def decode(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError(f"{self.why}: decoder.onnx ran")

    def predict_frames(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError(f"{self.why}: the exact network ran")
