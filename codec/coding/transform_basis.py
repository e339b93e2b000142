"""The transform residual's bases: an orthonormal DCT-II and the CDF 9/7 wavelet, along the last axis.

Both keep the length (L samples give L coefficients) and carry the error energy of the coefficients
into the samples (the DCT exactly, the biorthogonal 9/7 within ~10 %), so one quantizer step sets
the fidelity of either. Split from transform.py, which codes the coefficients.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError

WAVELET = "bior4.4"  # CDF 9/7, the JPEG 2000 lossy filter
WAVELET_MODE = "periodization"  # L samples -> L coefficients when every level halves an even length
DEFAULT_BANDS = 16


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


# The CDF 9/7 synthesis filters (PyWavelets' bior4.4 rec_lo and rec_hi) on a grid of 2**-TAP_BITS, as
# (offset, tap): a periodized inverse level puts coefficient k's tap j at sample 2k + j (mod its
# length). Fixed integers, so the exact inverse below is the same on every machine and every
# PyWavelets; tests/codec/test_transform_exact.py checks them against the library's filters.
TAP_BITS = 20
SYNTHESIS_LO = ((-3, -67674), (-2, -42666), (-1, 438402), (0, 826787), (1, 438402), (2, -42666), (3, -67674))
SYNTHESIS_HI = ((-3, -39666), (-2, -25008), (-1, 115998), (0, 395736), (1, -894119), (2, 395736), (3, 115998),
                (4, -25008), (5, -39666))
# |coefficient| on the fixed-point grid an exact inverse accepts: every tap product and the sums of
# one level stay far below 2**63 (2**36 * 2**20 * 16 taps = 2**60)
FIXED_LIMIT = 1 << 36


def wavelet_inverse_fixed(coefficients: np.ndarray) -> np.ndarray:
    """The inverse of ``wavelet_forward`` in integers: (N, C, L) int64 coefficients on a fixed-point
    grid -> samples on the same grid (int64). Each level is the periodized synthesis with the integer
    taps above, then a rounding shift by TAP_BITS (floor(v / 2**20 + 1/2)), so every machine computes
    the same integers; it follows PyWavelets' float inverse to within 2**-19 of the coefficients'
    size per level (codec/coding/transform.py's exact levels: 2**-12 raw units, 1e-4 of a raw unit)."""
    c = np.asarray(coefficients)
    if c.dtype.kind not in "iu":
        raise InputError(f"the exact inverse takes integer coefficients, got {c.dtype}")
    c = c.astype(np.int64)
    if c.size and int(np.abs(c).max()) >= FIXED_LIMIT:
        raise InputError("transform coefficient beyond the exact inverse's range (2**36 on its grid)")
    sizes = wavelet_sizes(c.shape[-1])
    a = c[..., : sizes[0]]
    start = sizes[0]
    for size in sizes[1:]:
        d = c[..., start : start + size]
        start += size
        m = 2 * size
        out = np.zeros(a.shape[:-1] + (m,), dtype=np.int64)
        for part, taps in ((a, SYNTHESIS_LO), (d, SYNTHESIS_HI)):
            up = np.zeros_like(out)
            up[..., 0::2] = part
            for offset, tap in taps:
                out += tap * np.roll(up, offset, axis=-1)
        a = (out + (1 << (TAP_BITS - 1))) >> TAP_BITS
    return a


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
BASIS_FUNCTIONS = {"dct": (forward, inverse, band_edges),
                    "cdf97": (wavelet_forward, wavelet_inverse, _wavelet_edges)}


def smooth_span(basis: str, length: int) -> int:
    """How many leading coefficients form a smooth sequence along the window: the wavelet's
    approximation subband (a downsampled low-pass copy of the signal, baseline and all); the DCT
    has none. A window coded without the latent sends these as differences (transform.py)."""
    return wavelet_sizes(length)[0] if basis == "cdf97" else 0
