"""The bundle's two ONNX graphs behind small, strict numpy APIs (onnxruntime; never torch).

Inputs are checked here, before onnxruntime sees them, because onnxruntime's own errors name
graph internals rather than what the caller did wrong.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .bundle import DECODER, ENCODER, Bundle
from .errors import BundleError, InputError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def resolve_provider(provider: str) -> str:
    """'auto' -> CUDA when this onnxruntime build has it, else CPU; 'cuda' insists on CUDA."""
    available = ort.get_available_providers()
    if provider == "auto":
        return PROVIDERS["cuda"] if PROVIDERS["cuda"] in available else PROVIDERS["cpu"]
    if provider not in PROVIDERS:
        raise InputError(f"provider {provider!r} is not one of 'auto', 'cpu', 'cuda'")
    name = PROVIDERS[provider]
    if name not in available:
        raise InputError(
            f"provider {provider!r} needs {name}, but this onnxruntime only has {available}; "
            "install onnxruntime-gpu (extra 'gpu') with a matching CUDA, or use provider='cpu'"
        )
    return name


def _session(path: Path, provider: str, threads: int | None) -> tuple[ort.InferenceSession, str]:
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    # onnxruntime's pool threads spin-wait for work by default. A codec holds two sessions (two
    # pools) and runs the entropy coder between graph calls, on cores it shares with a server and
    # other processes, so spinning threads steal the CPU the next step needs: on a busy 2-core
    # host every path ran 1.1-3.8x faster (median ~2x) with spinning off (benchmarks/throughput.py
    # --ort-spinning on|off; BENCHMARKS.md, "Codec throughput"). One session timed alone gains
    # 2-25 % from spinning; a codec never runs alone.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    name = resolve_provider(provider)
    chain = [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=chain)
    except Exception as e:  # onnxruntime raises its own, unrelated exception types
        raise BundleError(f"{path} could not be loaded by onnxruntime ({e}); re-export the bundle") from e
    return session, session.get_providers()[0]


def _as_bundle(bundle: Bundle | str | Path) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)


def _check_finite(a: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(a)
    n = int(bad.sum())
    if n:
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"{what} holds {n} NaN/Inf value(s); the first is at index {first} ({a[first]!r})")


def _check_shape(a: np.ndarray, expected: Sequence[int | None], what: str, hint: str) -> None:
    want = "(N, " + ", ".join("any" if d is None else str(d) for d in expected) + ")"
    if a.ndim != len(expected) + 1:
        extra = " (a single sample needs a batch axis: x[None])" if a.ndim == len(expected) else ""
        raise InputError(f"{what} must have shape {want}, got {a.shape}{extra}{hint}")
    for axis, (got, exp) in enumerate(zip(a.shape[1:], expected, strict=True), start=1):
        if (exp is not None and got != exp) or got < 1:
            raise InputError(f"{what} must have shape {want}, got {a.shape}: axis {axis} is {got}{hint}")
    if a.shape[0] < 1:
        raise InputError(f"{what} is an empty batch {a.shape}; pass at least one sample")


class Encoder:
    """x (model domain float32, (N, *sample_shape)) -> continuous latent y (N, *latent_shape)."""

    def __init__(self, bundle: Bundle | str | Path, provider: str = "auto", threads: int | None = None) -> None:
        self.bundle = _as_bundle(bundle)
        self.manifest = self.bundle.manifest
        self.session, self.provider = _session(self.bundle.file(ENCODER), provider, threads)

    def validate(self, x: np.ndarray) -> None:
        if not isinstance(x, np.ndarray):
            raise InputError(f"encode expects a numpy array, got {type(x).__name__}")
        if x.dtype != np.float32:
            raise InputError(
                f"encode expects float32 samples in the model domain, got {x.dtype}; raw data "
                "(e.g. uint8 pixels) goes through Codec or Normalization.to_model first"
            )
        _check_shape(x, self.manifest.sample_shape, "encoder input", "")
        _check_finite(x, "encoder input")

    def encode(self, x: np.ndarray, *, validate: bool = True) -> np.ndarray:
        """validate=False is for callers that already checked the raw samples this x came from
        (Codec does), so a batch is not scanned twice on the encode path."""
        if validate:
            self.validate(x)
        return self.session.run(["y"], {"x": np.ascontiguousarray(x)})[0]

    def encode_with_side(self, x: np.ndarray, *, validate: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(y, z) of a hyperprior bundle, whose encoder graph also emits the side latent z = h_a(y)."""
        if validate:
            self.validate(x)
        if "z" not in {o.name for o in self.session.get_outputs()}:
            raise BundleError(f"{self.bundle.path}: encoder.onnx has no side latent output z; re-export the bundle")
        y, z = self.session.run(["y", "z"], {"x": np.ascontiguousarray(x)})
        return y, z


class Decoder:
    """Integer-valued latent (N, *latent_shape) -> x_hat (N, *sample_shape), model domain."""

    def __init__(self, bundle: Bundle | str | Path, provider: str = "auto", threads: int | None = None) -> None:
        self.bundle = _as_bundle(bundle)
        self.manifest = self.bundle.manifest
        self.session, self.provider = _session(self.bundle.file(DECODER), provider, threads)

    def default_out_size(self) -> tuple[int, ...] | None:
        spatial = self.manifest.sample_shape[1:]
        if self.manifest.spatial_dims == 0 or any(d is None for d in spatial):
            return None
        return tuple(int(d) for d in spatial)  # type: ignore[arg-type]

    def decode(self, y_hat: np.ndarray, out_size: Sequence[int] | None = None) -> np.ndarray:
        m = self.manifest
        if not isinstance(y_hat, np.ndarray):
            raise InputError(f"decode expects a numpy array, got {type(y_hat).__name__}")
        if y_hat.dtype.kind in "iu":
            y_hat = y_hat.astype(np.float32)
        elif y_hat.dtype != np.float32:
            raise InputError(f"decode expects float32 (or integer) latent symbols, got {y_hat.dtype}")
        _check_shape(y_hat, m.latent_shape, "decoder input", "")
        _check_finite(y_hat, "decoder input")
        feeds = {"y_hat": np.ascontiguousarray(y_hat)}
        if m.spatial_dims:
            size = tuple(out_size) if out_size is not None else self.default_out_size()
            if size is None:
                raise InputError(
                    f"{m.family} decoding needs out_size (the sample's {m.spatial_dims} spatial size(s)); "
                    "this bundle accepts any size so it cannot default one"
                )
            latent_spatial = y_hat.shape[2:]
            expect = tuple(math.ceil(int(n) / m.latent_stride) for n in size)
            if len(size) != m.spatial_dims or expect != tuple(latent_spatial):
                raise InputError(
                    f"out_size {size} does not fit a latent of spatial size {tuple(latent_spatial)} "
                    f"(stride {m.latent_stride}: each latent extent must be ceil(out_size / stride))"
                )
            feeds["out_size"] = np.asarray(size, dtype=np.int64)
        elif out_size is not None and tuple(out_size) != tuple(m.sample_shape[1:]):
            raise InputError(
                f"{m.family} models decode to a fixed shape {m.sample_shape}; out_size {tuple(out_size)} is not it"
            )
        return self.session.run(["x_hat"], feeds)[0]
