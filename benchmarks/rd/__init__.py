"""Rate-distortion benchmark: latentwire against classical codecs on the same samples, same run.

    python -m benchmarks.rd --dataset mnist|ecg|bsds --bundle DIR [--data PATH | --data-root PATH]
                            [--limit N] [--batch 256] [--out benchmarks/results/rd-<dataset>.json]

Why this exists: the codec's claims are about bytes on the wire. So latentwire's bytes are the
packets AS SENT (header + payload + CRCs, packets of --batch frames, and the compact one-frame
packets), every packet is decoded again and the PSNR is measured on what the receiver gets.
The classical codecs compress each sample on its own (that is how a sender of frames uses them);
the PCA baseline uses the project's own quantizer, entropy coder and packet framing.

Metrics: PSNR over the whole set in raw units (peak = raw range: 255 for pixels, 2047 for 11-bit
ECG). ECG adds PRD = 100 * sqrt(sum (x - x_hat)^2 / sum (x - 1024)^2) (the record's ADC zero,
i.e. the literature's PRD on the zero-mean signal), PRDN (the same against each window's own
mean per lead), bits per sample and CR = samples * 11 bits / (bytes * 8); BD-rates over PRD and
PRDN 1-8 % as well as PSNR; DCT and CDF 9/7 wavelet baselines fit on the bundle's training records.
Images (bsds) are whole photos, one packet each: bits per pixel and mean per-image PSNR.

What users would pick instead (codecs.py, through imagecodecs, soundfile and lzma): AVIF and JPEG XL
sweeps beside JPEG and WebP, with a BD-rate against each; and per data kind a lossless / near-lossless
table (bounded.py: PNG, WebP / JPEG XL lossless, JPEG-LS with and without a colour transform and at
NEAR = --near; xz and zstd on latentwire's batches; FLAC on whole records and per window), each row's
max error measured on what it decoded, next to latentwire's lossless and max-error points.
"""

from .cli import main, parse_args
from .datasets import DEFAULT_ECG_HELD_OUT, heldout_records, training_records
from .points import Point, Scorer, latentwire_point
from .report import bd_rates, curve, prd_interval_db, quality

__all__ = ["DEFAULT_ECG_HELD_OUT", "Point", "Scorer", "bd_rates", "curve", "heldout_records", "latentwire_point",
           "main", "parse_args", "prd_interval_db", "quality", "training_records"]
