"""The transform residual: what the latent misses, coded as DCT or wavelet coefficients per channel.

The max-error layer (residual.py) bounds every sample, so it pays for every sample; most uses of
an ECG or sensor codec ask for a bounded error ENERGY instead (PRD, PRDN, PSNR). Here the sender
takes r = x - x_hat (raw units, x_hat the decoder's float output), transforms each channel with
an orthonormal DCT-II (energy compaction: a QRS complex or a slow drift is a handful of
coefficients), quantizes with a uniform step, and codes the integers; the receiver adds the
inverse transform to its own x_hat. Orthonormal: the error energy is the quantization error's,
so the step sets the fidelity directly, and a per-frame step meets a per-frame target.

Coding, all integer and vectorised (three coder calls per packet):
1. each frame's step index into the `steps` ladder (one table);
2. per (frame, channel, band) the band's class k = bit length of its largest |q| (0: the band is
   all zero and costs nothing more), with one table per band: the forward-adaptive side
   information a hyperprior would send, in ~1 bit per band;
3. every coefficient of a band of class k >= 1 with the table of class k (values up to
   +-(2^k - 1); larger ones, only when k is capped, through the table's escape).
Tables are calibration counts (pooled over a range of steps, so they hold at any step of the
ladder) plus one observation of every symbol.

Two bases, chosen at calibration (entropy.json "kind"): "dct-bands", the orthonormal DCT-II with
equal-width bands; "cdf97-bands", the CDF 9/7 wavelet (PyWavelets' bior4.4, periodic extension,
so L samples give L coefficients) with bands = its subbands, the wider ones cut into pieces of
about L / 16. Why both: on the ECG bundle's validation records the wavelet codes the same residual
14.8 % smaller over PRDN 1.4-4.2 % (benchmarks/ecg_basis.py; a QRS complex is a few localized
coefficients at every scale); the DCT works at any length. Contexts are the decoded classes, integers only:
decoding is exact on every machine; only the final float addition depends on the decoder graph,
as for the latent-only levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from ..errors import BitstreamError, BundleError, InputError
from .coder import StreamDecoder, StreamEncoder
from .tables import DEFAULT_PRECISION, TableSet, table_from_counts

KIND = "dct-bands"
KIND_WAVELET = "cdf97-bands"
BASES = {"dct": KIND, "cdf97": KIND_WAVELET}  # calibrate's --transform-basis -> entropy.json kind
WAVELET = "bior4.4"  # CDF 9/7, the JPEG 2000 lossy filter
WAVELET_MODE = "periodization"  # L samples -> L coefficients when every level halves an even length
MAX_CLASS = 12  # classes 1..12: |q| < 4096; larger values (only at steps far below the residual) escape
DEFAULT_BANDS = 16
# a geometric ladder of quantizer steps, raw units: 2^(i/4) from 0.5 to 512 (41 steps)
DEFAULT_STEPS = tuple(float(2.0 ** (i / 4.0)) for i in range(-4, 37))


def band_edges(length: int, bands: int) -> np.ndarray:
    """Coefficient index where each band starts, plus the end: bands of (nearly) equal width."""
    b = max(1, min(int(bands), int(length)))
    return np.rint(np.linspace(0, length, b + 1)).astype(np.int64)


def forward(residual: np.ndarray) -> np.ndarray:
    """(N, C, L) raw-unit residuals -> orthonormal DCT-II coefficients along L (float64), through
    one FFT of the even-odd reordered signal (Makhoul 1980): O(L log L), 30x a matrix product at
    L = 1024, equal to it within 1e-12."""
    x = np.asarray(residual, dtype=np.float64)
    n = x.shape[-1]
    v = np.concatenate([x[..., ::2], x[..., 1::2][..., ::-1]], axis=-1)
    out = np.real(np.fft.fft(v, axis=-1) * np.exp(-1j * np.pi * np.arange(n) / (2 * n))) * np.sqrt(2.0 / n)
    out[..., 0] /= np.sqrt(2.0)
    return out


def inverse(coefficients: np.ndarray) -> np.ndarray:
    """The inverse of ``forward`` (orthonormal DCT-III), same method."""
    c = np.array(coefficients, dtype=np.float64)
    n = c.shape[-1]
    c[..., 0] *= np.sqrt(2.0)
    c *= np.sqrt(n / 2.0)
    mirrored = np.concatenate([np.zeros(c.shape[:-1] + (1,)), c[..., :0:-1]], axis=-1)  # X_{n-k}, X_n = 0
    v = np.real(np.fft.ifft(np.exp(1j * np.pi * np.arange(n) / (2 * n)) * (c - 1j * mirrored), axis=-1))
    x = np.empty_like(v)
    half = (n + 1) // 2
    x[..., ::2] = v[..., :half]
    x[..., 1::2] = v[..., half:][..., ::-1]
    return x


def _pywt():
    try:
        import pywt
    except ImportError as e:  # a runtime dependency; only the wavelet basis needs it
        raise InputError("the cdf97 transform basis needs PyWavelets: pip install PyWavelets") from e
    return pywt


def wavelet_levels(length: int) -> int:
    """Decomposition depth: as deep as the filter allows, but only while every level halves an even
    length (so periodic extension keeps exactly L coefficients)."""
    pywt = _pywt()
    deepest = pywt.dwt_max_level(int(length), pywt.Wavelet(WAVELET).dec_len)
    k = 0
    while k < deepest and int(length) % (2 ** (k + 1)) == 0:
        k += 1
    if k == 0:
        raise InputError(f"the cdf97 basis needs a window length divisible by 2 (and >= 20); got {length}")
    return k


def wavelet_sizes(length: int) -> list[int]:
    """Coefficients per subband, coarsest first (approximation, then details coarse to fine)."""
    k = wavelet_levels(length)
    return [length >> k] + [length >> (k - i) for i in range(k)]


def wavelet_forward(residual: np.ndarray) -> np.ndarray:
    """(N, C, L) -> (N, C, L) CDF 9/7 coefficients along L, subbands concatenated coarsest first."""
    x = np.asarray(residual, dtype=np.float64)
    pywt = _pywt()
    parts = pywt.wavedec(x, WAVELET, mode=WAVELET_MODE, level=wavelet_levels(x.shape[-1]), axis=-1)
    return np.concatenate(parts, axis=-1)


def wavelet_inverse(coefficients: np.ndarray) -> np.ndarray:
    c = np.asarray(coefficients, dtype=np.float64)
    sizes = wavelet_sizes(c.shape[-1])
    parts = np.split(c, np.cumsum(sizes)[:-1], axis=-1)
    return _pywt().waverec(parts, WAVELET, mode=WAVELET_MODE, axis=-1)


def wavelet_band_edges(length: int) -> np.ndarray:
    """Each subband one band, those wider than length / DEFAULT_BANDS cut into equal pieces of about
    that (a rule of the length alone, so a reader derives the same bands: 18 at L = 1024)."""
    width = max(1, int(length) // DEFAULT_BANDS)
    edges = [0]
    for size in wavelet_sizes(length):
        pieces = max(1, size // width)
        edges += (edges[-1] + np.rint(np.linspace(0, size, pieces + 1)[1:])).astype(np.int64).tolist()
    return np.asarray(edges, dtype=np.int64)


def _wavelet_edges(length: int, bands: int) -> np.ndarray:
    return wavelet_band_edges(length)  # the wavelet's bands follow from the length alone


# basis -> (forward, inverse, band edges (length, bands)): the one place a basis is dispatched
_BASIS_FUNCTIONS = {"dct": (forward, inverse, band_edges),
                    "cdf97": (wavelet_forward, wavelet_inverse, _wavelet_edges)}


def classes(q: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(N, C, B) class of each band: bit length of its largest |q|, capped at MAX_CLASS."""
    peak = np.maximum.reduceat(np.abs(q), edges[:-1], axis=-1)
    k = np.zeros(peak.shape, dtype=np.int64)
    nz = peak > 0
    k[nz] = np.floor(np.log2(peak[nz])).astype(np.int64) + 1
    return np.minimum(k, MAX_CLASS)


@dataclass(frozen=True)
class TransformResidual:
    """The tables and ladder of one bundle's transform residual (entropy.json "transform")."""

    bands: int
    steps: tuple[float, ...]
    step_tables: TableSet  # one table over step indices
    class_tables: TableSet  # one per band: classes 0..MAX_CLASS
    coef_tables: TableSet  # one per class 1..MAX_CLASS
    basis: str = "dct"  # "dct" | "cdf97" (BASES)

    def __post_init__(self) -> None:
        if self.basis not in BASES:
            raise BundleError(
                f"transform residual: unknown basis {self.basis!r} (this latentwire knows {sorted(BASES)})"
            )
        steps = tuple(float(s) for s in self.steps)
        if not steps or any(not s > 0 for s in steps) or any(b <= a for a, b in pairwise(steps)):
            raise BundleError(f"transform residual: steps must rise from > 0, got {steps[:4]}...")
        object.__setattr__(self, "steps", steps)
        if len(self.step_tables) != 1 or len(self.class_tables) != self.bands or len(self.coef_tables) != MAX_CLASS:
            raise BundleError("transform residual: table counts do not match bands and classes; re-run calibration")

    # ------------------------------------------------------------------ the basis
    def forward(self, residual: np.ndarray) -> np.ndarray:
        """(N, C, L) raw-unit residuals -> coefficients (N, C, L) in this residual's basis."""
        return _BASIS_FUNCTIONS[self.basis][0](residual)

    def reconstruct(self, raw_float: np.ndarray, q: np.ndarray, step_idx: np.ndarray, raw_min: float,
                    raw_max: float, integer: bool) -> np.ndarray:
        """The receiver's samples: decoder output + the inverse transform of the dequantized q,
        clipped (and rounded for integer data)."""
        back = _BASIS_FUNCTIONS[self.basis][1](self.dequantize(q, step_idx))
        out = np.clip(np.asarray(raw_float, dtype=np.float64) + back, raw_min, raw_max)
        return np.rint(out) if integer else out

    def edges(self, length: int) -> np.ndarray:
        """Where each band starts, plus the end (``self.bands`` bands at the calibrated length)."""
        edges = _BASIS_FUNCTIONS[self.basis][2](length, self.bands)
        if len(edges) - 1 != self.bands:
            raise InputError(f"this transform residual has {self.bands} bands, a length of {length} gives "
                             f"{len(edges) - 1}: code windows of the calibrated length")
        return edges

    def step_index(self, step: float) -> int:
        """The ladder index of a step (levels name their step; it must be on the ladder)."""
        for i, s in enumerate(self.steps):
            if abs(s - step) <= 1e-9 * s:
                return i
        raise InputError(
            f"transform step {step} is not on this bundle's ladder ({self.steps[0]:g}..{self.steps[-1]:g})"
        )

    # ------------------------------------------------------------------ coding
    def quantize(self, coefficients: np.ndarray, step_idx: np.ndarray) -> np.ndarray:
        step = np.asarray(self.steps)[np.asarray(step_idx, dtype=np.int64)]
        return np.rint(coefficients / step.reshape((-1,) + (1,) * (coefficients.ndim - 1))).astype(np.int64)

    def dequantize(self, q: np.ndarray, step_idx: np.ndarray) -> np.ndarray:
        step = np.asarray(self.steps)[np.asarray(step_idx, dtype=np.int64)]
        return q * step.reshape((-1,) + (1,) * (q.ndim - 1))

    def write(self, enc: StreamEncoder, q: np.ndarray, step_idx: np.ndarray) -> None:
        """q: int (N, C, L) quantized coefficients; step_idx: (N,) ladder index per frame."""
        n, c, length = q.shape
        edges = self.edges(length)
        idx = np.asarray(step_idx, dtype=np.int64)
        if idx.shape != (n,) or (n and (idx.min() < 0 or idx.max() >= len(self.steps))):
            raise InputError(f"step indices must be {n} values in 0..{len(self.steps) - 1}")
        enc.encode_grouped([(0, idx.astype(np.int32))], self.step_tables)
        k = classes(q, edges)  # (N, C, B)
        nb = k.shape[-1]
        enc.encode(k.ravel(), np.broadcast_to(np.arange(nb), k.shape).ravel(), self.class_tables)
        per_coef = np.repeat(k, np.diff(edges), axis=-1)  # (N, C, L): each coefficient's class
        live = per_coef > 0
        enc.encode(q[live].astype(np.int32), (per_coef[live] - 1).astype(np.int32), self.coef_tables)

    def read(self, dec: StreamDecoder, n: int, channels: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(q (N, C, L) int64, step indices (N,)) as written by ``write``."""
        edges = self.edges(length)
        idx = dec.decode_grouped([(0, n)], self.step_tables).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self.steps)):
            raise BitstreamError("transform residual names a step that is not on the ladder: corrupt payload")
        nb = len(edges) - 1
        ids = np.broadcast_to(np.arange(nb), (n, channels, nb)).ravel()
        k = dec.decode(ids, self.class_tables).astype(np.int64).reshape(n, channels, nb)
        if k.size and (k.min() < 0 or k.max() > MAX_CLASS):
            raise BitstreamError("transform residual names a band class that does not exist: corrupt payload")
        per_coef = np.repeat(k, np.diff(edges), axis=-1)
        live = per_coef > 0
        q = np.zeros((n, channels, length), dtype=np.int64)
        q[live] = dec.decode((per_coef[live] - 1).astype(np.int32), self.coef_tables)
        return q, idx

    # ------------------------------------------------------------------ fitting and storage
    @classmethod
    def fit(cls, samples: Sequence[tuple[np.ndarray, float]], *, bands: int = DEFAULT_BANDS,
            steps: Sequence[float] = DEFAULT_STEPS, precision: int = DEFAULT_PRECISION,
            basis: str = "dct") -> TransformResidual:
        """Tables from calibration residuals: (residuals (N, C, L) raw units, the step a level codes
        them at) pairs, pooled; every symbol also gets one observation, so nothing is uncodable.
        bands: the DCT's band count; the wavelet's bands follow from the length (wavelet_band_edges)."""
        if basis not in BASES:
            raise InputError(f"transform basis must be one of {sorted(BASES)}, got {basis!r}")
        fwd, _, cut = _BASIS_FUNCTIONS[basis]
        class_counts: np.ndarray | None = None
        coef_counts: list[np.ndarray] = []
        step_counts = np.ones(len(steps), dtype=np.int64)
        nb = 0
        for residuals, step in samples:
            r = np.asarray(residuals, dtype=np.float64)
            if r.ndim != 3:
                raise InputError(f"transform residuals must be (N, channels, length), got {r.shape}")
            edges = cut(r.shape[-1], bands)
            if class_counts is None:
                nb = len(edges) - 1
                class_counts = np.ones((nb, MAX_CLASS + 1), dtype=np.int64)
                coef_counts = [np.ones(2 ** (k + 1) - 1, dtype=np.int64) for k in range(1, MAX_CLASS + 1)]
            q = np.rint(fwd(r) / float(step)).astype(np.int64)
            k = classes(q, edges)
            for b in range(nb):
                class_counts[b] += np.bincount(k[..., b].ravel(), minlength=MAX_CLASS + 1)
            per_coef = np.repeat(k, np.diff(edges), axis=-1)
            for c in range(1, MAX_CLASS + 1):
                lim = 2**c - 1
                coef_counts[c - 1] += np.bincount(np.clip(q[per_coef == c], -lim, lim) + lim, minlength=2 * lim + 1)
            near = int(np.argmin([abs(np.log(st / float(step))) for st in steps]))
            step_counts[near] += len(r)
        if class_counts is None:
            raise InputError("the transform residual needs calibration residuals for at least one step")
        class_tables = TableSet(tuple(table_from_counts(class_counts[b], 0, precision) for b in range(nb)), precision)
        coef_tables = TableSet(tuple(table_from_counts(coef_counts[c - 1], -(2**c - 1), precision)
                                     for c in range(1, MAX_CLASS + 1)), precision)
        step_tables = TableSet((table_from_counts(step_counts, 0, precision),), precision)
        return cls(nb, tuple(float(s) for s in steps), step_tables, class_tables, coef_tables, basis)

    @staticmethod
    def snap(step: float, steps: Sequence[float] = DEFAULT_STEPS) -> float:
        """The ladder step nearest to step (in ratio): what a level asking for step gets."""
        return float(min(steps, key=lambda s: abs(np.log(s / step))))

    def to_json_obj(self) -> dict[str, Any]:
        return {"kind": BASES[self.basis], "bands": self.bands, "steps": list(self.steps),
                "step_tables": self.step_tables.to_json_obj(), "class_tables": self.class_tables.to_json_obj(),
                "coef_tables": self.coef_tables.to_json_obj()}

    @classmethod
    def from_json_obj(cls, obj: Any, where: str = "entropy.json") -> TransformResidual:
        by_kind: dict[Any, str] = {kind: b for b, kind in BASES.items()}
        basis = by_kind.get(obj.get("kind")) if isinstance(obj, dict) else None
        if basis is None:
            got = obj.get("kind") if isinstance(obj, dict) else None
            raise BundleError(f"{where}: unknown transform residual kind {got!r} (this latentwire knows "
                              f"{sorted(BASES.values())})")
        try:
            return cls(int(obj["bands"]), tuple(float(s) for s in obj["steps"]),
                       TableSet.from_json_obj(obj["step_tables"]), TableSet.from_json_obj(obj["class_tables"]),
                       TableSet.from_json_obj(obj["coef_tables"]), basis)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed transform residual ({exc}); re-run calibration") from exc


def prdn_per_frame(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """PRDN in percent of each frame (N, C, L): error energy over the frame's energy about each
    channel's own mean."""
    xf = np.asarray(x, dtype=np.float64)
    err = ((xf - recon) ** 2).reshape(len(xf), -1).sum(axis=1)
    centred = ((xf - xf.mean(axis=-1, keepdims=True)) ** 2).reshape(len(xf), -1).sum(axis=1)
    return 100.0 * np.sqrt(err / np.maximum(centred, 1e-12))


def choose_steps(tr: TransformResidual, x: np.ndarray, raw_float: np.ndarray, coefficients: np.ndarray,
                 target_prdn: float, raw_min: float, raw_max: float, integer: bool) -> np.ndarray:
    """Per frame, the coarsest step on the ladder whose reconstruction meets PRDN <= target
    (bisection over the ladder, all frames at once); the finest step where none does."""
    n = len(x)
    lo = np.zeros(n, dtype=np.int64)  # finest step: assumed to meet (checked below)
    hi = np.full(n, len(tr.steps) - 1, dtype=np.int64)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi + 1) // 2
        q = tr.quantize(coefficients, mid)
        rec = tr.reconstruct(raw_float, q, mid, raw_min, raw_max, integer)
        ok = prdn_per_frame(x, rec) <= target_prdn
        lo = np.where(active & ok, mid, lo)
        hi = np.where(active & ~ok, mid - 1, hi)
    return lo
