"""The coding tables of a bundle (entropy.json) and the layout of one packet's joint payload.

One payload holds, in this order, all frames' latent symbols (frame-major, C order, channel c
coded with latent table c; or, when the bundle has a latent context model (context.py) and the
level uses the trained step, position by position along the last latent axis), then - when the
packet has the residual layer - every frame's bucket-grid shift and every frame's quantized residuals
(see residual.py), the transform residual (transform.py), or, for a max error entropy.json's
residual_coding covers, that section's context-coded residuals (residual_coding.py). A transform
packet with per-window modes starts with them, and only the frames that send their latent have
latent symbols; so does a max-error packet whose frames choose their mode (residual_modes.py:
then the residual of the latent frames, then that of the classical ones). Everything shares one
range-coder stream, so a packet of N frames pays the coder's ~1 byte of flush once, not N times.
The receiver must run decoder.onnx between the two parts: ``PayloadReader`` reads them in turn.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BitstreamError, BundleError, InputError
from .coder import StreamDecoder, StreamEncoder, as_int32, symbol_bits
from .context import LatentContext, previous_along_last
from .context2d import KIND as KIND_2D
from .context2d import LatentContext2D
from .hyper_latents import HyperLatentPath, HyperLatents
from .hyperprior import HyperLatentCoding
from .quantize import channel_index
from .residual import ResidualEncoding, ResidualModel
from .residual_coding import AnyResidualCoding, residual_coding_from_json
from .residual_context import ResidualContext
from .residual_modes import check_modes, classic_coding, read_modes, read_residual, write_modes, write_residual
from .tables import TableSet
from .transform import MODE_ALONE, MODE_LATENT, MODE_TABLES, TransformResidual

ENTROPY_FORMAT = "latentwire-entropy"
ENTROPY_VERSION = 1
# version 2 added latent_context (written only when present, so older tables kept version 1 and
# their model ids; a latentwire that predates it refuses version 2 clearly)
ENTROPY_VERSION_CONTEXT = 2
# version 3 added latent_levels (variable-rate bundles: one table set, and context, per learned level)
# and the transform residual (transform.py)
ENTROPY_VERSION_LEVELS = 3
# version 4 stores every table set packed (tables.py): what calibration writes from now on; the
# list form of versions 1-3 still reads, so shipped bundles keep their bytes and model ids
ENTROPY_VERSION_PACKED = 4
# version 5 adds either or both of: the transform residual's "alone" tables (windows sent without the
# latent, per-window modes) and hyper_latent (hyperprior bundles: z tables, Gaussian tables, their
# thresholds). Written only when one is present, so every other bundle keeps version 4 and its model
# id, and a latentwire that predates them refuses the bundle instead of failing on its packets
ENTROPY_VERSION_SECTIONS = 5
# version 6 adds residual_coding (residual_coding.py: context-coded max-error residuals); written
# only when present, so bundles without it keep their version and model id
ENTROPY_VERSION_RESIDUAL_CODING = 6
READABLE_VERSIONS = (ENTROPY_VERSION, ENTROPY_VERSION_CONTEXT, ENTROPY_VERSION_LEVELS, ENTROPY_VERSION_PACKED,
                     ENTROPY_VERSION_SECTIONS, ENTROPY_VERSION_RESIDUAL_CODING)
# the versions that may hold each later addition
_SECTIONS_VERSIONS = (ENTROPY_VERSION_SECTIONS, ENTROPY_VERSION_RESIDUAL_CODING)
_CONTEXT_VERSIONS = (ENTROPY_VERSION_CONTEXT, ENTROPY_VERSION_LEVELS, ENTROPY_VERSION_PACKED) + _SECTIONS_VERSIONS
_LEVELS_VERSIONS = (ENTROPY_VERSION_LEVELS, ENTROPY_VERSION_PACKED) + _SECTIONS_VERSIONS


AnyLatentContext = LatentContext | LatentContext2D


def latent_context_from_json(obj: Any, where: str) -> AnyLatentContext:
    """A latent context model of either kind (previous-position for series, causal-2d for images)."""
    if isinstance(obj, dict) and obj.get("kind") == KIND_2D:
        return LatentContext2D.from_json_obj(obj, where)
    return LatentContext.from_json_obj(obj, where)


def _transform_from_json(obj: dict[str, Any], where: str) -> TransformResidual | None:
    if obj.get("transform") is None:
        return None
    if obj.get("version") not in _LEVELS_VERSIONS:
        raise BundleError(
            f"{where}: a transform residual needs entropy format version {ENTROPY_VERSION_LEVELS} or later; "
            "re-run calibration"
        )
    tr = TransformResidual.from_json_obj(obj["transform"], where)
    if tr.alone is not None and obj.get("version") not in _SECTIONS_VERSIONS:
        raise BundleError(f"{where}: the transform residual's alone tables need entropy format version "
                          f"{ENTROPY_VERSION_SECTIONS}; re-run calibration")
    return tr


@dataclass(frozen=True)
class LevelTables:
    """The tables of one learned latent level of a variable-rate bundle: symbols round(y * gain)
    with the level's factorized tables, or its context model when calibration fit one."""

    tables: TableSet
    context: AnyLatentContext | None = None

    def to_json_obj(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"tables": self.tables.to_json_obj()}
        if self.context is not None:
            obj["context"] = self.context.to_json_obj()
        return obj

    @classmethod
    def from_json_obj(cls, obj: Any, where: str) -> LevelTables:
        if not isinstance(obj, dict) or "tables" not in obj:
            raise BundleError(f"{where}: malformed latent_levels entry; re-run calibration")
        ctx = obj.get("context")
        return cls(TableSet.from_json_obj(obj["tables"]), None if ctx is None else latent_context_from_json(ctx, where))


@dataclass(frozen=True)
class CodingTables:
    """Everything entropy.json holds: latent tables (one per channel) and the residual model
    (None when the raw data is not integer, where only latent-only quality exists)."""

    latent: TableSet
    residual: ResidualModel | None = None
    # Tables for latents quantized with a coarser step (cheap quality levels): ((step, tables), ...).
    latent_steps: tuple[tuple[float, TableSet], ...] = ()
    # Context-adaptive tables for the trained step (conv latents only); None: factorized tables.
    latent_context: AnyLatentContext | None = None
    # Residual tables that also follow the previous residual, for the calibrated max errors.
    residual_context: ResidualContext | None = None
    # Variable-rate bundles: the tables of each learned latent level (manifest latent.levels).
    latent_levels: tuple[LevelTables, ...] = ()
    # The transform residual's tables and step ladder (levels with a transform step).
    transform: TransformResidual | None = None
    # Hyperprior bundles: the latent is coded under the hyperprior (hyperprior.py), and ``latent``
    # holds its side latent z's tables (the same tables as hyper.z_tables).
    hyper: HyperLatentCoding | None = None
    # Context-coded max-error residuals for the calibrated max errors (residual_coding.py); they take
    # precedence over residual_context.
    residual_coding: AnyResidualCoding | None = None

    def _level(self, level: int) -> LevelTables:
        if not 0 <= level < len(self.latent_levels):
            raise BundleError(
                f"entropy.json has no tables for latent level {level} (it has {len(self.latent_levels)}); "
                "re-run calibration"
            )
        return self.latent_levels[level]

    def context_for(self, step: float, level: int | None = None) -> AnyLatentContext | None:
        """The context model coding latents of step ``step`` or learned level ``level`` (only the
        trained step and learned levels have one)."""
        if level is not None:
            return self._level(level).context
        return self.latent_context if step == 1.0 else None

    def latent_for(self, step: float, level: int | None = None) -> TableSet:
        """The latent tables of quantization step ``step`` (1.0: the trained integer grid), or of
        learned level ``level`` of a variable-rate bundle."""
        if level is not None:
            return self._level(level).tables
        if step == 1.0:
            return self.latent
        for s, tables in self.latent_steps:
            if s == step:
                return tables
        raise BundleError(
            f"entropy.json has no latent tables for step {step}; known steps: "
            f"{[1.0] + [s for s, _ in self.latent_steps]} (re-run calibration with that level)"
        )

    def to_json_obj(self) -> dict[str, Any]:
        obj = {
            "format": ENTROPY_FORMAT,
            # table sets are always written packed; version 5 or 6 only where a later section needs it
            "version": (ENTROPY_VERSION_RESIDUAL_CODING if self.residual_coding is not None
                        else ENTROPY_VERSION_SECTIONS if self.hyper is not None or (
                            self.transform is not None and self.transform.alone is not None)
                        else ENTROPY_VERSION_PACKED),
            "precision": self.latent.precision,
            "latent": self.latent.to_json_obj(),
            "residual": None if self.residual is None else self.residual.to_json_obj(),
        }
        if self.latent_steps:  # absent when unused, so older tables keep their exact bytes
            obj["latent_steps"] = [{"step": s, "tables": t.to_json_obj()} for s, t in self.latent_steps]
        if self.latent_context is not None:
            obj["latent_context"] = self.latent_context.to_json_obj()
        if self.residual_context is not None:
            obj["residual_context"] = self.residual_context.to_json_obj()
        if self.latent_levels:
            obj["latent_levels"] = [lv.to_json_obj() for lv in self.latent_levels]
        if self.transform is not None:
            obj["transform"] = self.transform.to_json_obj()
        if self.hyper is not None:
            obj["hyper_latent"] = self.hyper.to_json_obj()
        if self.residual_coding is not None:
            obj["residual_coding"] = self.residual_coding.to_json_obj()
        return obj

    def dumps(self) -> bytes:
        """Canonical bytes (sorted keys, compact): the same tables always hash the same."""
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes | str, where: str = "entropy.json") -> CodingTables:
        try:
            obj = json.loads(data)
        except ValueError as exc:
            raise BundleError(f"{where} is not valid JSON ({exc}); re-run calibration") from exc
        if not isinstance(obj, dict) or obj.get("format") != ENTROPY_FORMAT:
            raise BundleError(f"{where} is not a latentwire entropy file; re-run calibration")
        if obj.get("version") not in READABLE_VERSIONS:
            raise BundleError(
                f"{where} has entropy format version {obj.get('version')!r}; this latentwire reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade latentwire or re-calibrate the bundle"
            )
        latent = TableSet.from_json_obj(obj.get("latent"))
        res = obj.get("residual")
        try:
            steps = tuple(
                (float(e["step"]), TableSet.from_json_obj(e["tables"])) for e in obj.get("latent_steps", [])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{where}: malformed latent_steps ({exc}); re-run calibration") from exc
        ctx, rctx = obj.get("latent_context"), obj.get("residual_context")
        for key, val in (("latent_context", ctx), ("residual_context", rctx)):
            if val is not None and obj.get("version") not in _CONTEXT_VERSIONS:
                raise BundleError(
                    f"{where} has a {key} but entropy format version {obj.get('version')}; re-run calibration"
                )
        levels = obj.get("latent_levels", [])
        if not isinstance(levels, list) or (levels and obj.get("version") not in _LEVELS_VERSIONS):
            raise BundleError(f"{where}: latent_levels need entropy format version {ENTROPY_VERSION_LEVELS} or later; "
                              "re-run calibration")
        if rctx is not None and res is None:
            raise BundleError(f"{where} has a residual_context but no residual model; re-run calibration")
        hyper = obj.get("hyper_latent")
        if hyper is not None and obj.get("version") not in _SECTIONS_VERSIONS:
            raise BundleError(f"{where} has hyperprior tables but entropy format version {obj.get('version')}; "
                              "re-run calibration")
        rcoding = obj.get("residual_coding")
        if rcoding is not None and (obj.get("version") != ENTROPY_VERSION_RESIDUAL_CODING or res is None):
            raise BundleError(f"{where} has a residual_coding but entropy format version {obj.get('version')} or no "
                              "residual model; re-run calibration")
        return cls(
            latent=latent,
            residual=None if res is None else ResidualModel.from_json_obj(res),
            latent_steps=steps,
            latent_context=None if ctx is None else latent_context_from_json(ctx, where),
            residual_context=None if rctx is None else ResidualContext.from_json_obj(rctx, where),
            latent_levels=tuple(LevelTables.from_json_obj(lv, where) for lv in levels),
            transform=_transform_from_json(obj, where),
            hyper=None if hyper is None else HyperLatentCoding.from_json_obj(hyper, where),
            residual_coding=None if rcoding is None else residual_coding_from_json(rcoding, where),
        )

    @classmethod
    def load(cls, path: str | Path) -> CodingTables:
        p = Path(path)
        if p.is_dir():
            p = p / "entropy.json"
        if not p.is_file():
            raise BundleError(f"{p} is missing: the bundle is not calibrated (run `latentwire calibrate`)")
        return cls.loads(p.read_bytes(), str(p))


def _channel_axis(latent_shape: tuple[int, ...], channel_axis: int) -> int:
    channel_index(latent_shape, channel_axis, 0)  # validates the shape and the axis
    return channel_axis % len(latent_shape)


def _check_context_axis(latent_shape: tuple[int, ...], channel_axis: int) -> None:
    if len(latent_shape) < 2 or _channel_axis(latent_shape, channel_axis) != 0:
        raise BundleError(
            f"the bundle's latent context needs channel-first latents with a position axis, got latent shape "
            f"{latent_shape} with channel axis {channel_axis}; re-calibrate with --no-latent-context"
        )


def _by_channel(symbols: np.ndarray, channel_axis: int) -> np.ndarray:
    """(C, N * rest) int32: row c is every symbol of latent table c in stream order.

    The stream codes the latents grouped by table, stably; with one table per channel that order
    is just the channel axis moved to the front (frame-major, C order within), so a transpose
    replaces the argsort a generic ``encode`` needs."""
    axis = _channel_axis(tuple(symbols.shape[1:]), channel_axis)
    if symbols.size and symbols.dtype.kind not in "iu":
        raise InputError(f"symbols must be integers, got dtype {symbols.dtype}")
    symbols = as_int32(symbols)
    moved = np.moveaxis(symbols, 1 + axis, 0)
    return np.ascontiguousarray(moved.reshape(moved.shape[0], -1), dtype=np.int32)


def encode_payload(
    tables: CodingTables,
    symbols: np.ndarray | HyperLatents,
    channel_axis: int,
    *,
    x_raw: np.ndarray | None = None,
    raw_float: np.ndarray | None = None,
    max_error: int | None = None,
    latent_step: float = 1.0,
    latent_level: int | None = None,
    transform: tuple[np.ndarray, np.ndarray] | None = None,
    modes: np.ndarray | None = None,
    hyper: HyperLatentPath | None = None,
) -> tuple[bytes, ResidualEncoding | None]:
    """symbols: int32 (N, *latent_shape). With max_error, also the residual of x_raw against the
    decoder output raw_float (both (N, *sample_shape)). Returns (payload, residual info or None).
    latent_level: the learned level of a variable-rate bundle the symbols were quantized at.
    transform: (quantized coefficients (N, C, L), per-frame step indices (N,)) of the transform
    residual (transform.py), coded after the latents; never with max_error.
    modes: (N,) per-window modes of a transform packet (FLAG_MODES): coded first, then the latents
    of the MODE_LATENT frames only (symbols of the others are left out), then the transform; or,
    with max_error and no transform, per-frame modes of a residual packet (residual_modes.py).
    A hyperprior bundle passes its HyperLatents as symbols and its latent stage as ``hyper``."""
    enc = StreamEncoder()
    s: np.ndarray | HyperLatents
    if isinstance(symbols, HyperLatents):
        if hyper is None or latent_step != 1.0:
            raise InputError("hyperprior latents need the bundle's hyperprior stage and the trained step")
        s = symbols
    else:
        s = np.asarray(symbols)
        if s.ndim < 2:
            raise InputError(f"symbols must be (N, *latent_shape), got shape {s.shape}")
    if modes is not None:
        if transform is None and (max_error is None or classic_coding(tables.residual_coding, max_error) is None):
            raise InputError("per-frame modes choose how the transform residual, or a max-error residual the bundle "
                             "has classical tables for, is coded")
        m = check_modes(modes, s.count if isinstance(s, HyperLatents) else len(s))
        write_modes(enc, m)
        s = s[m == MODE_LATENT]
    if isinstance(s, HyperLatents):
        if s.count:
            assert hyper is not None  # checked above
            hyper.write(enc, s, latent_level)
    elif len(s):
        _write_latents(enc, tables, s, channel_axis, latent_step, latent_level)
    return _encode_residuals(enc, tables, x_raw, raw_float, max_error, transform, modes)


def _encode_residuals(enc: StreamEncoder, tables: CodingTables, x_raw: np.ndarray | None,
                      raw_float: np.ndarray | None, max_error: int | None,
                      transform: tuple[np.ndarray, np.ndarray] | None,
                      modes: np.ndarray | None) -> tuple[bytes, ResidualEncoding | None]:
    """The part after the latents: the transform residual or the max-error residual, if any."""
    info = None
    if transform is not None:
        if max_error is not None:
            raise InputError("a packet carries the transform residual or the max-error residual, not both")
        if tables.transform is None:
            raise InputError("this bundle has no transform residual tables (calibrate it with a transform level)")
        tables.transform.write(enc, *transform, modes=modes)
    if max_error is not None:
        if tables.residual is None:
            raise InputError("this bundle has no residual model (non-integer raw data): only latent-only quality")
        if x_raw is None or raw_float is None:
            raise InputError("the residual layer needs x_raw and the decoder output raw_float")
        if modes is not None:
            info = write_residual(enc, tables.residual_coding, tables.residual, x_raw, raw_float, max_error, modes)
        elif tables.residual_coding is not None and tables.residual_coding.covers(max_error):
            info = tables.residual_coding.write(enc, tables.residual, x_raw, raw_float, max_error)
        elif tables.residual_context is not None and tables.residual_context.covers(max_error):
            info = tables.residual_context.write(enc, tables.residual, x_raw, raw_float, max_error)
        else:
            info = tables.residual.write(enc, x_raw, raw_float, max_error)
    return enc.finish(), info


def _latent_ids(tables: CodingTables, s: np.ndarray, channel_axis: int, latent_step: float,
                latent_level: int | None) -> tuple[np.ndarray | None, TableSet]:
    """(table id of every symbol of s (N, *latent_shape), or None for the factorized tables'
    channel order, the tables): the one place the latent's table choice is made for the sender."""
    context = tables.context_for(latent_step, latent_level)
    if isinstance(context, LatentContext2D):
        raise InputError("per-symbol costs of 2-D context latents are not implemented (transform levels are 1-D)")
    if context is not None:
        _check_context_axis(tuple(s.shape[1:]), channel_axis)
        return context.table_ids(previous_along_last(s)), context.tables
    return None, tables.latent_for(latent_step, latent_level)


def _write_latents(enc: StreamEncoder, tables: CodingTables, s: np.ndarray, channel_axis: int, latent_step: float,
                   latent_level: int | None) -> None:
    context = tables.context_for(latent_step, latent_level)
    if context is not None:
        _check_context_axis(tuple(s.shape[1:]), channel_axis)
        context.write(enc, s)
    else:
        enc.encode_grouped(list(enumerate(_by_channel(s, channel_axis))), tables.latent_for(latent_step, latent_level))


def latent_frame_bits(tables: CodingTables, symbols: np.ndarray, channel_axis: int, latent_step: float = 1.0,
                      latent_level: int | None = None) -> np.ndarray:
    """(N,) ideal bits of each frame's latent symbols under the tables ``encode_payload`` codes them
    with: what sending the latent costs a window, for the per-window mode choice."""
    s = np.asarray(symbols)
    ids, tset = _latent_ids(tables, s, channel_axis, latent_step, latent_level)
    if ids is None:
        axis = _channel_axis(tuple(s.shape[1:]), channel_axis)
        shape = [1] * s.ndim
        shape[1 + axis] = -1
        ids = np.broadcast_to(np.arange(s.shape[1 + axis]).reshape(shape), s.shape)
    return symbol_bits(s.ravel(), np.asarray(ids).ravel(), tset).reshape(len(s), -1).sum(axis=1)


class PayloadReader:
    """Receiver side: ``latents`` first, run decoder.onnx, then ``residual``."""

    def __init__(self, payload: bytes | memoryview, tables: CodingTables) -> None:
        self._dec = StreamDecoder(payload)
        self._tables = tables

    def latents(
        self, count: int, latent_shape: tuple[int, ...], channel_axis: int, latent_step: float = 1.0,
        latent_level: int | None = None,
    ) -> np.ndarray:
        shape = tuple(int(d) for d in latent_shape)
        axis = _channel_axis(shape, channel_axis)
        if count < 1:
            raise InputError(f"count must be >= 1, got {count}")
        context = self._tables.context_for(latent_step, latent_level)
        if context is not None:
            _check_context_axis(shape, channel_axis)
            return context.read(self._dec, (count, *shape))
        n_channels = shape[axis]
        per = count * (int(np.prod(shape)) // n_channels)
        flat = self._dec.decode_grouped([(c, per) for c in range(n_channels)],
                                        self._tables.latent_for(latent_step, latent_level))
        # undo _by_channel: (C, N, *rest without C) -> (N, *latent_shape)
        rest = shape[:axis] + shape[axis + 1 :]
        return np.ascontiguousarray(np.moveaxis(flat.reshape((n_channels, count, *rest)), 0, 1 + axis))

    def hyper_latents(self, hyper: HyperLatentPath, count: int, latent_shape: tuple[int, ...],
                      latent_level: int | None) -> HyperLatents:
        """A hyperprior bundle's latents (hyper_latents.py), in place of ``latents``."""
        if count < 1:
            raise InputError(f"count must be >= 1, got {count}")
        return hyper.read(self._dec, count, tuple(int(d) for d in latent_shape), latent_level)

    def modes(self, count: int, residual: bool = False) -> np.ndarray:
        """(count,) per-window modes, read first in a packet with FLAG_MODES (residual: per-frame
        modes of a max-error packet, FLAG_RESIDUAL)."""
        if residual:
            return read_modes(self._dec, count)
        tr = self._tables.transform
        if tr is None or tr.alone is None:
            raise BitstreamError("packet has per-window modes, but this bundle has no tables for windows sent "
                                 "without the latent: foreign packet")
        m = self._dec.decode_grouped([(0, count)], MODE_TABLES).astype(np.int64)
        if not np.isin(m, (MODE_LATENT, MODE_ALONE)).all():
            raise BitstreamError("packet names a window mode that does not exist: corrupt payload")
        return m

    def transform(self, count: int, channels: int, length: int,
                  modes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(quantized coefficients (N, C, L), step indices (N,)) of the transform residual."""
        if self._tables.transform is None:
            raise BundleError("packet has a transform residual but the bundle has no transform tables")
        return self._tables.transform.read(self._dec, count, channels, length, modes)

    def residual(self, raw_float: np.ndarray, max_error: int, modes: np.ndarray | None = None,
                 sample_shape: tuple[int, ...] = ()) -> np.ndarray:
        """Every frame's reconstruction; with modes (residual_modes.py) raw_float holds the model's
        output for the MODE_LATENT frames only, and sample_shape is the packet's."""
        if self._tables.residual is None:
            raise BundleError("packet has a residual layer but the bundle has no residual model")
        coding = self._tables.residual_coding
        if modes is not None:
            return read_residual(self._dec, coding, self._tables.residual, raw_float, max_error, modes, sample_shape)
        if coding is not None and coding.covers(max_error):
            return coding.read(self._dec, self._tables.residual, raw_float, max_error)
        rctx = self._tables.residual_context
        if rctx is not None and rctx.covers(max_error):
            return rctx.read(self._dec, self._tables.residual, raw_float, max_error)
        return self._tables.residual.read(self._dec, raw_float, max_error)
