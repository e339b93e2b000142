"""MIT-BIH / PhysioNet WFDB records (header + format 212 or 16 signal files), in numpy.

Read without the `wfdb` package so the runtime stays small, and every record is checked against
its own header (first sample of each signal and the 16-bit checksum): a corrupted or truncated
.dat fails loudly instead of training a model on garbage.

Header (.hea) grammar, as in the WFDB spec:
  record line: name[/segments] n_sig [fs[/counter_freq[(base_counter)]] [n_samples [time [date]]]]
  signal line: file format[xspf][:skew][+offset] [gain[(baseline)][/units] [adc_res [adc_zero
               [init_value [checksum [block_size [description...]]]]]]]
e.g. `100.dat 212 200 11 1024 995 -22131 0 MLII`. Lines starting with '#' are comments.
Format 212: two 12-bit two's-complement samples in 3 bytes; byte 0 = low 8 bits of the first,
byte 1 = high nibbles (first in bits 0-3, second in bits 4-7), byte 2 = low 8 bits of the second.
Samples of all signals sharing a file are interleaved frame by frame.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..normalization import Normalization
from .sampleset import SampleSet

DEFAULT_GAIN = 200.0
SUPPORTED_FORMATS = (212, 16)


@dataclass
class SignalSpec:
    """One signal line of a header."""

    file_name: str
    fmt: int
    gain: float = DEFAULT_GAIN  # adu per physical unit
    baseline: int = 0  # adc value of 0 physical units (defaults to adc_zero)
    units: str = "mV"
    adc_res: int = 12
    adc_zero: int = 0
    init_value: int | None = None
    checksum: int | None = None
    block_size: int = 0
    description: str = ""
    byte_offset: int = 0

    def line(self) -> str:
        fmt = f"{self.fmt}" + (f"+{self.byte_offset}" if self.byte_offset else "")
        gain = f"{self.gain:g}" + (f"({self.baseline})" if self.baseline != self.adc_zero else "")
        gain += f"/{self.units}" if self.units != "mV" else ""
        fields = [self.file_name, fmt, gain, str(self.adc_res), str(self.adc_zero),
                  str(self.init_value if self.init_value is not None else 0),
                  str(self.checksum if self.checksum is not None else 0), str(self.block_size)]
        if self.description:
            fields.append(self.description)
        return " ".join(fields)


@dataclass
class WfdbHeader:
    """A parsed .hea file."""

    record: str
    n_sig: int
    fs: float
    n_samples: int | None
    signals: list[SignalSpec]
    comments: list[str] = field(default_factory=list)
    path: Path | None = None

    def text(self) -> str:
        """The header as WFDB text (LF line ends; readers accept LF or CRLF)."""
        ns = "" if self.n_samples is None else f" {self.n_samples}"
        lines = [f"{self.record} {self.n_sig} {self.fs:g}{ns}"]
        lines += [s.line() for s in self.signals]
        lines += [c if c.startswith("#") else f"# {c}" for c in self.comments]
        return "\n".join(lines) + "\n"


_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+0-9.eE]+)(?:\((-?\d+)\))?(?:/(\S+))?$")


def parse_header(path: str | Path) -> WfdbHeader:
    """Parse a .hea file; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as e:
        raise InputError(f"cannot read WFDB header {path}: {e}") from e
    lines = [ln.strip() for ln in text.splitlines()]
    comments = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise InputError(f"{path}: empty WFDB header (no record line)")
    rec = body[0].split()
    try:
        name = rec[0]
        if "/" in name:
            raise InputError(f"{path}: multi-segment records ({name}) are not supported")
        n_sig = int(rec[1])
        fs = float(rec[2].split("/")[0]) if len(rec) > 2 else 250.0
        n_samples = int(rec[3]) if len(rec) > 3 else None
    except (IndexError, ValueError) as e:
        raise InputError(f"{path}: bad record line {body[0]!r} (expected 'name n_sig fs n_samples')") from e
    if len(body) - 1 < n_sig:
        raise InputError(f"{path}: record line declares {n_sig} signals, header has {len(body) - 1} signal lines")
    signals = []
    for ln in body[1 : 1 + n_sig]:
        parts = ln.split()
        try:
            m = _FMT_RE.match(parts[1])
            if m is None:
                raise ValueError(f"format field {parts[1]!r}")
            fmt = int(m.group(1))
            if m.group(2) not in (None, "1") or m.group(3) not in (None, "0"):
                raise InputError(f"{path}: signal line {ln!r}: multi-sample frames and skew are not supported")
            spec = SignalSpec(file_name=parts[0], fmt=fmt, byte_offset=int(m.group(4) or 0))
            if fmt not in SUPPORTED_FORMATS:
                raise InputError(f"{path}: signal format {fmt} is not supported (supported: {SUPPORTED_FORMATS})")
            spec.adc_res = 12 if fmt == 212 else 16
            baseline = None
            if len(parts) > 2:
                g = _GAIN_RE.match(parts[2])
                if g is None:
                    raise ValueError(f"gain field {parts[2]!r}")
                spec.gain = float(g.group(1)) or DEFAULT_GAIN
                baseline = int(g.group(2)) if g.group(2) is not None else None
                spec.units = g.group(3) or "mV"
            if len(parts) > 3 and int(parts[3]) != 0:
                spec.adc_res = int(parts[3])
            if len(parts) > 4:
                spec.adc_zero = int(parts[4])
            spec.baseline = spec.adc_zero if baseline is None else baseline
            if len(parts) > 5:
                spec.init_value = int(parts[5])
            if len(parts) > 6:
                spec.checksum = int(parts[6])
            if len(parts) > 7:
                spec.block_size = int(parts[7])
            spec.description = " ".join(parts[8:])
        except (IndexError, ValueError) as e:
            raise InputError(f"{path}: bad signal line {ln!r} ({e})") from e
        signals.append(spec)
    return WfdbHeader(record=name, n_sig=n_sig, fs=fs, n_samples=n_samples, signals=signals,
                      comments=comments, path=path)


def decode_212(data: bytes | np.ndarray, n_values: int) -> np.ndarray:
    """The first n_values 12-bit samples packed in format 212, as int16."""
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8, copy=False)
    need = (n_values * 3 + 1) // 2
    if raw.size < need:
        raise InputError(f"format 212 data too short: {n_values} samples need {need} bytes, found {raw.size}")
    n_pairs = (n_values + 1) // 2
    buf = np.zeros(n_pairs * 3, dtype=np.uint8)
    buf[:need] = raw[:need]
    t = buf.reshape(n_pairs, 3).astype(np.int16)
    out = np.empty((n_pairs, 2), dtype=np.int16)
    out[:, 0] = t[:, 0] | ((t[:, 1] & 0x0F) << 8)
    out[:, 1] = t[:, 2] | ((t[:, 1] & 0xF0) << 4)
    out = out.reshape(-1)[:n_values]
    out[out >= 2048] -= 4096  # 12-bit two's complement
    return out


def encode_212(values: np.ndarray) -> bytes:
    """Pack int samples in -2048..2047 into format 212 (odd count: the last triple is cut to 2 bytes)."""
    v = np.asarray(values).reshape(-1).astype(np.int64)
    if v.size and (v.min() < -2048 or v.max() > 2047):
        raise InputError(f"format 212 holds 12-bit values -2048..2047, got {v.min()}..{v.max()}")
    n = v.size
    u = (np.concatenate([v, np.zeros(n % 2, dtype=np.int64)]) & 0xFFF).reshape(-1, 2)
    out = np.empty((u.shape[0], 3), dtype=np.uint8)
    out[:, 0] = u[:, 0] & 0xFF
    out[:, 1] = ((u[:, 0] >> 8) & 0x0F) | (((u[:, 1] >> 8) & 0x0F) << 4)
    out[:, 2] = u[:, 1] & 0xFF
    return out.reshape(-1)[: (n * 3 + 1) // 2].tobytes()


def checksum16(signal: np.ndarray) -> int:
    """The WFDB checksum: the sum of the samples modulo 2**16, as a signed 16-bit value."""
    s = int(np.asarray(signal, dtype=np.int64).sum()) & 0xFFFF
    return s - 0x10000 if s >= 0x8000 else s


def verify_record(signals: np.ndarray, header: WfdbHeader) -> list[str]:
    """Mismatches between decoded signals and the header's initial values / checksums (empty: ok)."""
    problems = []
    for i, spec in enumerate(header.signals):
        sig = signals[i]
        label = f"{header.record} signal {i} ({spec.description or spec.file_name})"
        if spec.init_value is not None and sig.size and int(sig[0]) != spec.init_value:
            problems.append(f"{label}: first sample {int(sig[0])}, header says {spec.init_value}")
        if spec.checksum is not None and checksum16(sig) != ((spec.checksum + 0x8000) & 0xFFFF) - 0x8000:
            problems.append(f"{label}: checksum {checksum16(sig)}, header says {spec.checksum}")
    return problems


def _header_path(path: str | Path) -> Path:
    p = Path(path)
    if p.suffix in (".hea", ".dat", ".atr"):
        p = p.with_suffix("")
    hea = p.with_name(p.name + ".hea")
    if not hea.is_file():
        raise InputError(f"WFDB header not found: {hea}")
    return hea


def load_record(path: str | Path, verify: bool = True) -> tuple[np.ndarray, WfdbHeader]:
    """(signals int16 (n_sig, n_samples), header) for the record at path (with or without .hea).

    verify: raise InputError when a signal's first sample or checksum disagrees with the header.
    """
    header = parse_header(_header_path(path))
    folder = header.path.parent  # type: ignore[union-attr]
    by_file: dict[str, list[int]] = {}
    for i, spec in enumerate(header.signals):
        by_file.setdefault(spec.file_name, []).append(i)
    n = header.n_samples
    out: np.ndarray | None = None
    for file_name, idx in by_file.items():
        specs = [header.signals[i] for i in idx]
        fmt, offset = specs[0].fmt, specs[0].byte_offset
        if any(s.fmt != fmt or s.byte_offset != offset for s in specs):
            raise InputError(f"{header.path}: signals sharing {file_name} must share one format and byte offset")
        dat = folder / file_name
        try:
            raw = np.fromfile(dat, dtype=np.uint8)[offset:]
        except OSError as e:
            raise InputError(f"{header.path}: cannot read signal file {dat}: {e}") from e
        k = len(idx)
        if fmt == 212:
            available = (raw.size * 2) // 3
        else:
            available = raw.size // 2
        n_file = available // k if n is None else n
        if n_file * k > available:
            raise InputError(
                f"{dat}: truncated: the header declares {n_file} samples x {k} signals, the file holds "
                f"only {available // k} per signal"
            )
        if fmt == 212:
            values = decode_212(raw, n_file * k)
        else:
            values = raw[: n_file * k * 2].view("<i2").astype(np.int16)
        if out is None:
            n = n_file
            out = np.empty((header.n_sig, n), dtype=np.int16)
        out[idx] = values.reshape(n_file, k).T  # n_file == n once the first file set it
    assert out is not None
    if header.n_samples is None:
        header.n_samples = int(out.shape[1])
    if verify:
        problems = verify_record(out, header)
        if problems:
            raise InputError(f"{header.path}: record does not match its header: " + "; ".join(problems))
    return out, header


def write_record(folder: str | Path, header: WfdbHeader, signals: np.ndarray) -> Path:
    """Write signals (n_sig, n) as a single-file format 212 record; the header's n_samples, initial
    values and checksums are recomputed from the data. Returns the .hea path."""
    folder = Path(folder)
    signals = np.asarray(signals)
    if signals.ndim != 2 or signals.shape[0] != header.n_sig:
        raise InputError(f"signals must be ({header.n_sig}, n), got {signals.shape}")
    dat_name = f"{header.record}.dat"
    specs = []
    for i, s in enumerate(header.signals):
        specs.append(SignalSpec(**{**s.__dict__, "file_name": dat_name, "fmt": 212, "byte_offset": 0,
                                   "init_value": int(signals[i, 0]) if signals.shape[1] else 0,
                                   "checksum": checksum16(signals[i])}))
    out = WfdbHeader(record=header.record, n_sig=header.n_sig, fs=header.fs, n_samples=int(signals.shape[1]),
                     signals=specs, comments=list(header.comments))
    (folder / dat_name).write_bytes(encode_212(signals.T.reshape(-1)))
    hea = folder / f"{header.record}.hea"
    hea.write_text(out.text(), encoding="latin-1")
    return hea


def ecg_normalization(header: WfdbHeader) -> Normalization:
    """Raw ADC counts -> physical units: offset = baseline (= adc zero unless the header says
    otherwise), scale = gain; the valid raw range is the ADC's: zero +- 2**(bits-1)."""
    first = header.signals[0]
    for s in header.signals[1:]:
        if (s.gain, s.baseline, s.adc_zero, s.adc_res) != (first.gain, first.baseline, first.adc_zero, first.adc_res):
            raise InputError(
                f"{header.path}: signals differ in gain/baseline/adc zero/resolution; one Normalization cannot "
                "cover them (select records whose leads share an ADC)"
            )
    half = 2 ** (first.adc_res - 1)
    return Normalization(offset=float(first.baseline), scale=float(first.gain), raw_dtype="int16",
                         raw_min=float(first.adc_zero - half), raw_max=float(first.adc_zero + half - 1))


def _record_paths(
    folder_or_files: str | Path | Sequence[str | Path], records: Iterable[str | int] | None
) -> list[Path]:
    if isinstance(folder_or_files, (str, Path)) and Path(folder_or_files).is_dir():
        folder = Path(folder_or_files)
        available = {p.stem: p for p in sorted(folder.glob("*.hea"))}
        if not available:
            raise InputError(f"{folder}: no WFDB records (.hea files)")
        if records is None:
            return [available[k] for k in sorted(available)]
        wanted = [str(r) for r in records]
        missing = [r for r in wanted if r not in available]
        if missing:
            raise InputError(f"{folder}: records {missing} not found; available: {sorted(available)}")
        return [available[r] for r in wanted]
    files = [folder_or_files] if isinstance(folder_or_files, (str, Path)) else list(folder_or_files)
    paths = [_header_path(f) for f in files]
    if records is not None:
        stems = {str(r) for r in records}
        paths = [p for p in paths if p.stem in stems]
    return paths


def load_ecg_windows(
    folder_or_files: str | Path | Sequence[str | Path],
    records: Iterable[str | int] | None = None,
    window: int = 1024,
    stride: int | None = None,
    limit_per_record: int | None = None,
) -> SampleSet:
    """Fixed-length windows of raw ADC counts, int16 (N, n_sig, window), groups = record number.

    stride defaults to window (no overlap). Every record is verified against its header.
    """
    if window <= 0:
        raise InputError(f"window must be positive, got {window}")
    stride = window if stride is None else int(stride)
    if stride <= 0:
        raise InputError(f"stride must be positive, got {stride}")
    paths = _record_paths(folder_or_files, records)
    if not paths:
        raise InputError(f"no WFDB records selected from {folder_or_files} (records={records})")
    numeric = all(p.stem.isdigit() for p in paths)
    chunks, groups, names = [], [], []
    norm: Normalization | None = None
    fs = None
    for i, p in enumerate(paths):
        sig, hdr = load_record(p)
        rec_norm = ecg_normalization(hdr)
        if norm is None:
            norm, fs, n_sig = rec_norm, hdr.fs, hdr.n_sig
        elif rec_norm != norm or hdr.n_sig != n_sig or hdr.fs != fs:
            raise InputError(f"{p}: record {hdr.record} differs from {paths[0].stem} in ADC, lead count or rate; "
                             "load them separately")
        starts = np.arange(0, sig.shape[1] - window + 1, stride)
        if limit_per_record is not None:
            starts = starts[:limit_per_record]
        if starts.size == 0:
            continue
        idx = starts[:, None] + np.arange(window)[None, :]
        chunks.append(sig[:, idx].transpose(1, 0, 2))
        groups.append(np.full(starts.size, int(hdr.record) if numeric else i, dtype=np.int64))
        names.append(hdr.record)
    if not chunks:
        raise InputError(f"no record is at least {window} samples long")
    assert norm is not None
    return SampleSet(
        samples=np.ascontiguousarray(np.concatenate(chunks)),
        normalization=norm,
        groups=np.concatenate(groups),
        name=f"ecg-w{window}",
        meta={"source": "ecg", "records": names, "fs": fs, "window": window, "stride": stride},
    )
