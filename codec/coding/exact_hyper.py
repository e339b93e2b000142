"""The hyperprior's exact synthesis: z_hat -> (mean code, scale code), the same integers on every machine.

Why: a mean-scale hyperprior (codec/training/models/hyper.py) codes each latent element with a
Gaussian table picked from its predicted scale, around its predicted mean. Sender and receiver
must pick the same table and the same mean for every element, or the range decoder desynchronizes
and the rest of the photo is garbage; a float h_s (another BLAS, thread count or SIMD width)
cannot promise that near a table boundary. So h_s runs as an IntegerNetwork (exact.py): its
transposed convolutions as ``dilate2d`` + ``conv2d``, ReLU as a requant clipped at 0, and its last
convolution requantized straight onto two FIXED grids:

  mu        = mean_code  / 2**mean_frac_bits     (mean_code clipped to +-MEAN_LIMIT * 2**mean_frac_bits)
  log sigma = scale_code / 2**scale_frac_bits    (scale_code clipped to [scale_code_lo, scale_code_hi],
                                                  LOG_SCALE_RANGE on that grid)

The first M output channels are mean codes, the last M scale codes (M = the latent's channels).
Everything downstream (the table index from scale_code, the mean offset from mean_code) is then a
function of integers. z_hat outside the network's declared input range [in_lo, in_hi] is clipped,
on both sides alike, so coding stays consistent; it is logged, since the float h_s it approximates
would not clip (the quantizer declares a range far beyond any z a trained h_a produces).

LOG_SCALE_RANGE and SCALE_MIN are defined here, numpy-only, so the training model (which imports
them) and the runtime share one definition.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError, InputError
from .exact import IntegerNetwork, read_npz, write_npz
from .exact_checkerboard import ExactCheckerboard
from .exact_layers import Dilate2d
from .gaussian import DEFAULT_SCALE_MIN

log = logging.getLogger(__name__)

# Scales below the coder's smallest Gaussian table are not told apart (CompressAI's lower bound, in symbols)
SCALE_MIN = DEFAULT_SCALE_MIN
# log sigma is clamped to this range before exp(): a runaway output cannot make inf or 0 scales
LOG_SCALE_RANGE = (math.log(SCALE_MIN) - 4.0, math.log(4096.0))
MEAN_FRAC_BITS = 8  # mu's grid: 1/256 of a symbol
SCALE_FRAC_BITS = 8  # log sigma's grid: sigma steps of 0.4 %
MEAN_LIMIT = 1 << 15  # |mu| in symbols; the mean code is clipped to +-MEAN_LIMIT * 2**MEAN_FRAC_BITS
MAX_FRAC_BITS = 16
HYPER_VERSION = 1
CONTEXT_HYPER_VERSION = 2  # hyper.npz also holds a checkerboard context (exact_checkerboard.py)
HYPER_FILE = "hyper.npz"


def scale_code_range(scale_frac_bits: int = SCALE_FRAC_BITS) -> tuple[int, int]:
    """LOG_SCALE_RANGE on the scale grid, rounded inwards: every code's log sigma lies inside it."""
    step = 1 << scale_frac_bits
    return math.ceil(LOG_SCALE_RANGE[0] * step), math.floor(LOG_SCALE_RANGE[1] * step)


@dataclass(frozen=True, eq=False)
class ExactHyperSynthesis:
    """h_s as an exact integer network: ``(z_hat, size) -> (mean_code, scale_code)``; with a checkerboard
    context (optional), the non-anchor elements' codes are then refined from the decoded anchors."""

    network: IntegerNetwork
    mean_frac_bits: int = MEAN_FRAC_BITS
    scale_frac_bits: int = SCALE_FRAC_BITS
    scale_code_lo: int = scale_code_range()[0]
    scale_code_hi: int = scale_code_range()[1]
    context: ExactCheckerboard | None = None

    def __post_init__(self) -> None:
        net = self.network
        for k in ("mean_frac_bits", "scale_frac_bits", "scale_code_lo", "scale_code_hi"):
            object.__setattr__(self, k, int(getattr(self, k)))
        if net.layout != "channels_first_2d":
            raise BundleError(f"an exact hyper-synthesis is a channels_first_2d network, not {net.layout}")
        channels = net.out_shape[0]
        if channels is None or channels % 2 or channels < 2:
            raise BundleError(f"an exact hyper-synthesis outputs 2M channels (means, then scales), got {channels}")
        if not (0 <= self.mean_frac_bits <= MAX_FRAC_BITS and 0 <= self.scale_frac_bits <= MAX_FRAC_BITS):
            raise BundleError(f"exact hyper-synthesis grids take 0..{MAX_FRAC_BITS} fractional bits, got "
                              f"{self.mean_frac_bits} and {self.scale_frac_bits}")
        if not net.out_lo <= self.scale_code_lo < self.scale_code_hi <= net.out_hi:
            raise BundleError(f"exact hyper-synthesis scale codes [{self.scale_code_lo}, {self.scale_code_hi}] must "
                              f"lie inside its output range [{net.out_lo}, {net.out_hi}]")
        if self.context is not None and self.context.channels != self.latent_channels:
            raise BundleError(f"the checkerboard context has {self.context.channels} channels, h_s "
                              f"{self.latent_channels}")

    @property
    def stride(self) -> int:
        """Output pixels per z_hat pixel on each axis (the product of the dilations: 4 for hyper2d)."""
        return math.prod(layer.stride for layer in self.network.layers if isinstance(layer, Dilate2d))

    @property
    def latent_channels(self) -> int:
        """M: the latent's channels (each output is (B, M, h, w))."""
        return int(self.network.out_shape[0] or 0) // 2

    @property
    def hyper_channels(self) -> int:
        """N: z_hat's channels."""
        return self.network.n_in

    def __call__(self, z_hat: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """z_hat (B, N, hz, wz), integer-valued -> (mean_code, scale_code), int64, each (B, M, h, w)
        with (h, w) = size (at most stride * (hz, wz)); mu = mean_code / 2**mean_frac_bits and
        log sigma = scale_code / 2**scale_frac_bits."""
        z = np.asarray(z_hat)
        if len(size) != 2 or min(size) < 1:
            raise InputError(f"the latent size is (h, w) with both >= 1, got {size}")
        net = self.network
        if z.ndim == 4 and z.size:
            outside = int(np.count_nonzero((z < net.in_lo) | (z > net.in_hi)))
            if outside:
                log.warning("exact hyper-synthesis: %d z_hat values outside [%d, %d] clipped", outside, net.in_lo,
                            net.in_hi)
        out = net.predict_maps(z, (int(size[0]), int(size[1])))
        m = self.latent_channels
        scale = np.clip(out[:, m:], self.scale_code_lo, self.scale_code_hi)
        return np.ascontiguousarray(out[:, :m]), np.ascontiguousarray(scale)

    def refine(self, anchors: np.ndarray, mean_code: np.ndarray, scale_code: np.ndarray,
               level: int) -> tuple[np.ndarray, np.ndarray]:
        """The checkerboard step: h_s's codes with the non-anchor elements' replaced by the context's
        prediction from the anchors' y_hat codes (exact_checkerboard.anchor_codes). Needs a context."""
        if self.context is None:
            raise InputError("this hyper-synthesis has no checkerboard context")
        d = self.context.deltas(anchors, mean_code, scale_code, level)
        m = self.latent_channels
        limit = MEAN_LIMIT << self.mean_frac_bits
        mean = np.clip(np.asarray(mean_code, dtype=np.int64) + d[:, :m], -limit, limit)
        scale = np.clip(np.asarray(scale_code, dtype=np.int64) + d[:, m:], self.scale_code_lo, self.scale_code_hi)
        return mean, scale

    def means(self, mean_code: np.ndarray) -> np.ndarray:
        """mu in symbols (float64, exact: a code over a power of two)."""
        return np.asarray(mean_code, dtype=np.float64) / (1 << self.mean_frac_bits)

    def log_scales(self, scale_code: np.ndarray) -> np.ndarray:
        """log sigma (float64, exact: a code over a power of two)."""
        return np.asarray(scale_code, dtype=np.float64) / (1 << self.scale_frac_bits)

    # ---- storage: exact.npz's format plus a "hyper" block in the spec (codec/FORMAT.md)

    def to_bytes(self) -> bytes:
        spec, arrays = self.network.to_spec()
        spec["hyper"] = {"version": HYPER_VERSION, "mean_frac_bits": self.mean_frac_bits,
                         "scale_frac_bits": self.scale_frac_bits,
                         "scale_code_lo": self.scale_code_lo, "scale_code_hi": self.scale_code_hi}
        if self.context is not None:
            context, more = self.context.to_spec()
            spec["hyper"].update(version=CONTEXT_HYPER_VERSION, context=context)
            arrays = {**arrays, **more}
        return write_npz(spec, arrays)

    @classmethod
    def from_bytes(cls, data: bytes, where: str = HYPER_FILE) -> ExactHyperSynthesis:
        try:
            spec, arrays = read_npz(data)
            hyper = spec.get("hyper")
            if not isinstance(hyper, dict):
                raise BundleError(f"{where}: an exact network without a hyper block is not a hyper-synthesis")
            if hyper.get("version") not in (HYPER_VERSION, CONTEXT_HYPER_VERSION):
                raise BundleError(f"{where}: exact hyper-synthesis version {hyper.get('version')!r} is not supported "
                                  f"(this latentwire reads {HYPER_VERSION} and {CONTEXT_HYPER_VERSION}); upgrade "
                                  "latentwire")
            if (hyper["version"] == CONTEXT_HYPER_VERSION) != isinstance(hyper.get("context"), dict):
                raise BundleError(f"{where}: hyper-synthesis version {hyper['version']} and its checkerboard "
                                  "context block disagree (version 2 has one, version 1 none)")
            fields = ("mean_frac_bits", "scale_frac_bits", "scale_code_lo", "scale_code_hi")
            if any(not isinstance(hyper.get(k), int) or isinstance(hyper.get(k), bool) for k in fields):
                raise BundleError(f"{where}: the hyper block needs integer {', '.join(fields)}")
            context = (ExactCheckerboard.from_spec(hyper["context"], arrays, where)
                       if isinstance(hyper.get("context"), dict) else None)
            return cls(IntegerNetwork.from_spec(spec, arrays, where), hyper["mean_frac_bits"], hyper["scale_frac_bits"],
                       hyper["scale_code_lo"], hyper["scale_code_hi"], context)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise BundleError(f"{where} is not a readable exact hyper-synthesis ({exc!r}); re-run its "
                              "quantization") from exc

    @classmethod
    def load(cls, path: str | Path) -> ExactHyperSynthesis:
        return cls.from_bytes(Path(path).read_bytes(), str(path))
