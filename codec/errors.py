"""Exceptions every latentwire layer raises.

One hierarchy so callers (CLI, server, client) can map failures to an exit code or a gRPC status
without string matching: input problems are the caller's to fix, bundle and bitstream problems
point at a file or a stream.
"""


class LatentwireError(Exception):
    """Base class: every error the codec raises on purpose."""


class InputError(LatentwireError, ValueError):
    """A sample array does not match the model's input spec (shape, dtype, NaN/Inf, range)."""


class BundleError(LatentwireError):
    """A codec bundle is missing a file, is malformed, or does not hash to its model id."""


class BitstreamError(LatentwireError, ValueError):
    """A coded frame cannot be decoded. Subclasses say why."""


class TruncatedFrame(BitstreamError):
    """The frame ends before its header or payload does."""


class BadMagic(BitstreamError):
    """The bytes do not start with the latentwire magic number."""


class UnsupportedVersion(BitstreamError):
    """The frame's format version is newer (or older) than this decoder understands."""


class ChecksumMismatch(BitstreamError):
    """The CRC32 over the frame does not match: the bytes were altered in transit or storage."""


class ModelMismatch(BitstreamError):
    """The frame was coded by another model than the one asked to decode it."""


class MissingStreamContext(BitstreamError):
    """A compact stream frame (codec/coding/compact.py) arrived where no earlier packet of its
    stream set the context it needs."""


class CompactFrameNotPacket(BadMagic):
    """Bytes handed over as a packet start like a compact stream frame: they decode only with
    their stream's context (or a packet's first byte was damaged, hence a BadMagic)."""


class ExportError(LatentwireError):
    """A trained model could not be turned into a trustworthy bundle (e.g. ONNX parity failed)."""


class ReconstructionMismatch(BitstreamError):
    """The receiver's reconstruction differs from the sender's: its decoder output drifted
    (another execution provider or precision), detected by the packet's reconstruction CRC."""
