"""A codec bundle on disk: manifest.json, encoder.onnx, decoder.onnx, entropy.json, and where
`latentwire quantize-exact` made one, exact.npz (the integer network residual levels predict from).

The model id is a SHA-256 over everything a receiver needs to decode (decoder graph, entropy
tables, the decoding fields of the manifest), so sender and receiver can tell from one hash
whether they would turn the same bitstream into the same samples; a tampered or half-copied
bundle is refused at load time instead of silently decoding garbage.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .coding.exact_hyper import HYPER_FILE
from .coding.fallback import AnomalyCalibration
from .errors import BundleError
from .normalization import Normalization

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ENCODER = "encoder.onnx"
DECODER = "decoder.onnx"
ENTROPY = "entropy.json"
EXACT = "exact.npz"
# a hyperprior bundle's exact hyper-synthesis: it picks the latent's coding tables, so it is part of the model id
HYPER = HYPER_FILE
DECODING_FIELDS = ("format_version", "family", "input", "latent", "quality_levels")
# latent.residual_step: the latent step every max-error level (custom ones too) predicts from, when
# calibration chose one coarser than the trained grid (ladder.residual_grid); a decoding field
RESIDUAL_STEP = "residual_step"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    path = Path(bundle_dir) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{path} is missing: not a codec bundle (re-run `latentwire export` to create one)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise BundleError(f"{path} is not readable JSON ({e}); restore the bundle from its source or re-export") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{path} must hold a JSON object, found {type(raw).__name__}")
    return raw


def _reject_constant(name: str) -> Any:
    """Manifests hold only finite numbers: NaN/Infinity can only come from corruption or tampering."""
    raise ValueError(f"non-finite number {name} in the manifest")


def _dims(value: Any, what: str) -> tuple[int | None, ...]:
    """A shape: a list of non-negative ints, None for a dynamic axis."""
    if not isinstance(value, list) or not all(d is None or (type(d) is int and d >= 0) for d in value):
        raise TypeError(f"{what} must be a list of non-negative integers or null, got {value!r}")
    return tuple(value)


_NUMBER = r"\s*(?:-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|null)\s*"
_NUMBER_LIST = re.compile(rf"\[(?:{_NUMBER},)*{_NUMBER}\]")


def write_manifest(bundle_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Indented for people, but a list of plain numbers on one line: a photo bundle's per-level
    gains and pmfs otherwise take a line per number (2.8 MB instead of ~1 MB of a bundle every
    subscriber downloads)."""
    path = Path(bundle_dir) / MANIFEST
    text = json.dumps(manifest, sort_keys=True, indent=2)
    text = _NUMBER_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(0)[1:-1].split(",")) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _model_id(bundle_dir: Path, manifest: dict[str, Any]) -> str:
    h = hashlib.sha256()
    decoder = bundle_dir / DECODER
    if not decoder.is_file():
        raise BundleError(f"{decoder} is missing; copy the whole bundle directory or re-export it")
    h.update(decoder.read_bytes())
    entropy = bundle_dir / ENTROPY
    if entropy.is_file():
        h.update(entropy.read_bytes())
    if manifest.get("exact"):  # the exact network decides every residual level's prediction
        exact = bundle_dir / EXACT
        if not exact.is_file():
            raise BundleError(f"{exact} is missing but the manifest names an exact network; copy the whole bundle "
                              "or re-run `latentwire quantize-exact`")
        h.update(b"exact:" + exact.read_bytes())
    if _names_hyper(manifest):
        hyper = bundle_dir / HYPER
        if not hyper.is_file():
            raise BundleError(f"{hyper} is missing but the manifest names a hyperprior; copy the whole bundle "
                              "or re-export it")
        h.update(b"hyper:" + hyper.read_bytes())
    h.update(canonical_json({k: manifest.get(k) for k in DECODING_FIELDS}))
    return h.hexdigest()


def _names_hyper(manifest: dict[str, Any]) -> bool:
    latent = manifest.get("latent")
    return isinstance(latent, dict) and bool(latent.get("hyper"))


def compute_model_id(bundle_dir: str | Path) -> str:
    """SHA-256 of decoder.onnx + entropy.json (if present) + exact.npz (if the manifest names it) +
    hyper.npz (likewise) + canonical decoding fields. A latentwire that predates exact networks computes another id for
    such a bundle and refuses it, rather than decoding its residual levels against the float graph."""
    d = Path(bundle_dir)
    return _model_id(d, read_manifest(d))


def finalize(bundle_dir: str | Path) -> str:
    """Re-hash the files and rewrite manifest["files"], ["entropy"]["sha256"] and ["model_id"].

    Call after any change to the graphs, tables or decoding fields (export, calibrate).
    """
    d = Path(bundle_dir)
    manifest = read_manifest(d)
    files: dict[str, str] = {}
    for name in (ENCODER, DECODER):
        if not (d / name).is_file():
            raise BundleError(f"{d / name} is missing; cannot finalize an incomplete bundle")
        files[name] = sha256_file(d / name)
    if (d / ENTROPY).is_file():
        digest = sha256_file(d / ENTROPY)
        files[ENTROPY] = digest
        manifest["entropy"] = {**manifest.get("entropy", {}), "file": ENTROPY, "sha256": digest}
    if manifest.get("exact"):
        files[EXACT] = sha256_file(d / EXACT)
    if _names_hyper(manifest):
        files[HYPER] = sha256_file(d / HYPER)
    manifest["files"] = files
    manifest["model_id"] = _model_id(d, manifest)
    write_manifest(d, manifest)
    return manifest["model_id"]


@dataclass(frozen=True, eq=False)
class LatentLevel:
    """One learned level of a variable-rate bundle (manifest latent.levels[k]): the sender codes
    round(y * gain) per channel, the receiver feeds symbols * inverse_gain to decoder.onnx."""

    gain: np.ndarray  # float32 (C,)
    inverse_gain: np.ndarray  # float32 (C,)

    @classmethod
    def from_dict(cls, d: Any, channels: int, where: str) -> LatentLevel:
        if not isinstance(d, dict):
            raise TypeError(f"latent.levels entries must be objects, got {type(d).__name__}")
        out = []
        for key in ("gain", "inverse_gain"):
            v = np.asarray(d[key], dtype=np.float64)
            if v.shape != (channels,) or not np.all(np.isfinite(v)) or not np.all(v > 0):
                raise ValueError(f"{where}: latent level {key} must be {channels} positive numbers")
            out.append(v.astype(np.float32))
        return cls(*out)


@dataclass(frozen=True)
class QualityLevel:
    """A named operating point (manifest quality_levels[index]): the latent quantized with
    latent_step (coarser = fewer bytes) or, in a variable-rate bundle, at learned level
    latent_level, alone (max_error None) or with the residual layer bounding every sample's error
    by max_error."""

    index: int
    name: str
    max_error: int | None
    latent_step: float = 1.0
    latent_level: int | None = None
    transform_step: float | None = None  # the transform residual's quantizer step (raw units), if any

    @classmethod
    def from_dict(cls, index: int, d: Any) -> QualityLevel:
        if not isinstance(d, dict):
            raise TypeError(f"quality_levels[{index}] must be an object, got {type(d).__name__}")
        bound, level = d.get("max_error"), d.get("latent_level")
        if bound is not None and (type(bound) is not int or bound < 0):
            raise ValueError(f"quality_levels[{index}].max_error must be null or an integer >= 0, got {bound!r}")
        step = float(d.get("latent_step", 1.0))
        if not step > 0:
            raise ValueError(f"quality_levels[{index}].latent_step must be > 0, got {step}")
        t = d.get("transform_step")
        if t is not None and (not isinstance(t, (int, float)) or not t > 0):
            raise ValueError(f"quality_levels[{index}].transform_step must be a number > 0, got {t!r}")
        if t is not None and bound is not None:
            raise ValueError(f"quality_levels[{index}] has a max_error and a transform_step: one residual per level")
        return cls(index, str(d.get("name", f"q{index}")), bound, step, None if level is None else int(level),
                   None if t is None else float(t))


@dataclass(frozen=True)
class Manifest:
    """Typed view of manifest.json; `raw` keeps every field (training, metrics, entropy...)."""

    name: str
    family: str
    config: dict[str, Any]
    sample_shape: tuple[int | None, ...]
    normalization: Normalization
    latent_shape: tuple[int | None, ...]
    latent_stride: int
    latent_channels: int
    channel_axis: int
    quality_levels: tuple[QualityLevel, ...]
    model_id: str
    raw: dict[str, Any]
    latent_levels: tuple[LatentLevel, ...] = ()
    default_quality: int | None = None  # the bundle's own choice, when it makes one

    @property
    def files(self) -> dict[str, str]:
        """File name -> sha256 of every file the model id and the bundle cover."""
        files = self.raw.get("files")
        return {str(k): str(v) for k, v in files.items()} if isinstance(files, dict) else {}

    @property
    def anomaly(self) -> AnomalyCalibration | None:
        """The calibrated anomaly-score quantiles (None before `latentwire calibrate`)."""
        block = self.raw.get("anomaly")
        return AnomalyCalibration.from_dict(block) if block else None

    @property
    def has_exact(self) -> bool:
        """The bundle holds an exact network (exact.npz): every residual level predicts from it."""
        return bool(self.raw.get("exact"))

    @property
    def has_hyper(self) -> bool:
        """The latent is coded under a mean-scale hyperprior (latent.hyper; hyper.npz picks its tables)."""
        return bool(self.raw["latent"].get("hyper"))

    @property
    def residual_step(self) -> float:
        """The latent step the max-error levels predict from (1.0: the trained grid)."""
        return float(self.raw["latent"].get(RESIDUAL_STEP, 1.0))

    @property
    def entropy_file(self) -> str | None:
        entropy = self.raw.get("entropy")
        return str(entropy.get("file")) if isinstance(entropy, dict) and entropy.get("file") else None

    @property
    def spatial_dims(self) -> int:
        """Number of size-varying axes the decoder needs in out_size (0 for dense)."""
        return 0 if self.family == "dense" else len(self.sample_shape) - 1

    @property
    def pmf(self) -> tuple[list[int], list[list[float]]]:
        p = self.raw["latent"]["pmf"]
        return list(p["offsets"]), list(p["probs"])

    def level_pmf(self, level: int) -> tuple[list[int], list[list[float]]]:
        """Learned level ``level``'s density over its symbols round(y * gain) (export computes it)."""
        p = self.raw["latent"]["levels"][level]["pmf"]
        return list(p["offsets"]), list(p["probs"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = MANIFEST) -> Manifest:
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"{where}: format_version {version!r} is not supported (this latentwire reads {FORMAT_VERSION}); "
                "upgrade latentwire or re-export the bundle"
            )
        try:
            inp, lat = raw["input"], raw["latent"]
            return cls(
                name=str(raw.get("name", "")),
                family=str(raw["family"]),
                config=dict(raw["config"]),
                sample_shape=_dims(inp["sample_shape"], "input.sample_shape"),
                normalization=Normalization.from_dict(inp["normalization"]),
                latent_shape=_dims(lat["shape"], "latent.shape"),
                latent_stride=int(lat["stride"]),
                latent_channels=int(lat["channels"]),
                channel_axis=int(lat["channel_axis"]),
                quality_levels=tuple(QualityLevel.from_dict(i, q) for i, q in enumerate(raw.get("quality_levels", []))),
                model_id=str(raw.get("model_id", "")),
                raw=raw,
                latent_levels=tuple(
                    LatentLevel.from_dict(lv, int(lat["channels"]), where) for lv in lat.get("levels", [])
                ),
                default_quality=raw["default_quality"] if type(raw.get("default_quality")) is int else None,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise BundleError(f"{where} lacks or mangles a required field ({e!r}); re-export the bundle") from e


class Bundle:
    """A loaded (and by default verified) bundle directory."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.is_file():
            if name == ENCODER:
                raise BundleError(f"{p} is missing: this is a receiver's copy of the bundle, which decodes but "
                                  "cannot encode; fetch the whole bundle to encode, embed or denoise")
            raise BundleError(f"{p} is missing from the bundle; copy the whole directory or re-export it")
        return p

    @classmethod
    def load(cls, path: str | Path, verify: bool = True, require_encoder: bool = True) -> Bundle:
        """require_encoder=False admits a receiver's copy: everything but encoder.onnx (which, where
        present, must still match its hash)."""
        d = Path(path)
        if not d.is_dir():
            raise BundleError(f"{d} is not a directory; a bundle is the folder `latentwire export --out` wrote")
        raw = read_manifest(d)
        manifest = Manifest.from_dict(raw, str(d / MANIFEST))
        bundle = cls(d, manifest)
        if verify:
            bundle.verify(require_encoder)
        return bundle

    @property
    def has_encoder(self) -> bool:
        return (self.path / ENCODER).is_file()

    def verify(self, require_encoder: bool = True) -> None:
        """Files exist, hash to what the manifest says, and the model id matches the content.

        Why the encoder may be left out: the model id covers only what decoding needs, so a
        receiver can hold (and verify) a bundle without the sender's graph, a third of the bytes."""
        raw = self.manifest.raw
        files = raw.get("files")
        if not isinstance(files, dict) or ENCODER not in files or DECODER not in files:
            raise BundleError(f"{self.path / MANIFEST} has no file hashes; run bundle.finalize on it (export does)")
        for name, expected in sorted(files.items()):
            if name == ENCODER and not require_encoder and not self.has_encoder:
                continue
            actual = sha256_file(self.file(name))
            if actual != expected:
                raise BundleError(
                    f"{self.path / name} does not match its hash in the manifest (sha256 {actual[:12]}..., "
                    f"expected {str(expected)[:12]}...): the file was modified or truncated; restore it or re-export"
                )
        entropy = raw.get("entropy")
        if entropy:
            name = entropy.get("file", ENTROPY)
            if sha256_file(self.file(name)) != entropy.get("sha256"):
                raise BundleError(f"{self.path / name} does not match manifest entropy.sha256; re-run calibration")
        actual_id = _model_id(self.path, raw)
        if actual_id != self.manifest.model_id:
            raise BundleError(
                f"{self.path / MANIFEST}: model_id {self.manifest.model_id[:12]}... does not match the bundle's "
                f"content ({actual_id[:12]}...): the manifest's decoding fields were edited; re-export, or run "
                "finalize if the edit was intended"
            )
