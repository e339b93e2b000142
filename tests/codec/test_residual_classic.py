"""Classical residual frames (codec/coding/residual_classic.py, residual_modes.py): a max-error
frame sent with no latent, its base channel predicted by MED from its own decoded neighbours;
per-frame modes in residual packets (FLAG_MODES with FLAG_RESIDUAL), chosen by the sender."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from latentwire.codec.bundle import finalize
from latentwire.codec.codec import Codec
from latentwire.codec.coding import bitstream
from latentwire.codec.coding.coder import StreamEncoder
from latentwire.codec.coding.compact import StreamContext, compact, expand
from latentwire.codec.coding.payload import CodingTables, PayloadReader, encode_payload
from latentwire.codec.coding.residual_classic import BASE_MED, MODE_CLASSIC, MODE_LATENT
from latentwire.codec.coding.residual_coding import with_classic
from latentwire.codec.coding.residual_colour import ColourLevel, ResidualColourContext
from latentwire.codec.errors import BitstreamError, BundleError, ChecksumMismatch, InputError
from latentwire.codec.residual_levels import PER_FRAME_TRIALS, choose_modes
from latentwire.codec.sources import list_images, read_image, sample_data_root

ASSETS = Path(__file__).resolve().parents[2] / "codec" / "assets"
OLD = Path(__file__).resolve().parents[1] / "data" / "bsds-v6"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load(ASSETS / "bsds-gdn2d", provider="cpu", threads=1)


def _photos() -> list[np.ndarray]:
    """The shipped BSDS500 test photos (1, 3, H, W) and an odd-sized cut."""
    photos = [read_image(p)[None] for p in list_images(sample_data_root() / "bsds")]
    return photos + [np.ascontiguousarray(photos[2][:, :, :45, :31])]


def _classic(codec: Codec) -> ResidualColourContext:
    coding = codec.tables.residual_coding
    assert isinstance(coding, ResidualColourContext) and coding.classic is not None, "re-run train_bundles classic"
    return coding.classic


def _kw(codec: Codec, d: int) -> dict[str, int]:
    """The ladder level of max error d, else the custom max error."""
    return next(({"quality": q.index} for q in codec.qualities if q.max_error == d), {"max_error": d})


def _noise_codec(codec: Codec) -> Codec:
    """The shipped bundle with its classical tables fit on uniform noise instead of photos: on a
    photo the latent mode wins then, on noise the classical one (so both choices get made)."""
    noise = np.random.default_rng(5).integers(0, 256, (4, 3, 64, 96)).astype(np.uint8)
    coding = codec.tables.residual_coding
    assert isinstance(coding, ResidualColourContext) and codec.tables.residual is not None
    other = Codec.load(ASSETS / "bsds-gdn2d", provider="cpu", threads=1)
    other.tables = dataclasses.replace(other.tables, residual_coding=with_classic(
        dataclasses.replace(coding, classic=None), codec.tables.residual, noise, np.zeros(noise.shape, np.float32)))
    return other


class _NoDecoder:
    def decode(self, *args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("a classical frame must not run decoder.onnx")


# ------------------------------------------------------------------ round trips on the shipped bundle

def test_classic_frames_round_trip_at_every_covered_max_error_without_the_model(codec: Codec) -> None:
    """Every max error the classical tables cover, on every shipped photo: within the bound,
    lossless bit-exactly, and the receiver never runs decoder.onnx for them."""
    classic = _classic(codec)
    coding = codec.tables.residual_coding
    assert [lv.max_error for lv in classic.levels] == [lv.max_error for lv in coding.levels] == [0, 1, 2, 4]
    assert classic.base == BASE_MED and all(lv.model_weight == 0 for lv in classic.levels)
    receiver = Codec.load(ASSETS / "bsds-gdn2d", provider="cpu", threads=1)
    receiver.__dict__["decoder"] = _NoDecoder()  # a cached_property: this instance has no usable decoder
    for lv in classic.levels:
        for raw in _photos():
            packet = codec.encode(raw, **_kw(codec, lv.max_error), residual_mode="classic")
            h = codec.header(packet)
            assert h.has_residual and h.has_modes and h.recon_crc is not None
            out = receiver.decode(packet)
            assert np.abs(out.astype(np.int64) - raw).max() <= lv.max_error
            if lv.max_error == 0:
                assert np.array_equal(out, raw)
            assert np.array_equal(codec.decode(packet), out)


def test_a_packet_mixing_both_modes_decodes_each_frame_as_its_mode(codec: Codec) -> None:
    photos = _photos()
    frames = np.concatenate([photos[0], photos[1], np.ascontiguousarray(photos[2].transpose(0, 1, 3, 2))])
    for d in (0, 2):
        kw = _kw(codec, d)
        q, bound, grid = codec._level(kw.get("quality"), kw.get("max_error"))
        assert bound == d
        symbols = codec.quantize_latents(codec._encode_model(codec.normalization.to_model(frames)), grid)
        raw_float = codec._residual_prediction(symbols, grid, frames.shape[1:])
        modes = np.array([MODE_LATENT, MODE_CLASSIC, MODE_LATENT])
        payload, info = encode_payload(codec.tables, symbols, 0, x_raw=frames, raw_float=raw_float, max_error=d,
                                       latent_step=grid.step, latent_level=grid.level, modes=modes)
        assert info is not None
        packet = bitstream.write_packet(model_id=codec.model_id, quality=q, sample_shape=frames.shape[1:], count=3,
                                        payload=payload, max_error=kw.get("max_error"), residual=True,
                                        recon_crc=info.crc, modes=True, exact=codec.manifest.has_exact)
        out = codec.decode(packet)
        assert np.array_equal(out, info.recon)
        assert np.array_equal(PayloadReader(bitstream.read_packet(packet)[1], codec.tables).modes(3, residual=True),
                              modes)
        for i, mode in enumerate(modes):  # each frame exactly as its mode codes it alone
            alone = codec.encode(frames[i : i + 1], **kw, residual_mode="classic" if mode else "latent")
            assert np.array_equal(out[i : i + 1], codec.decode(alone))
        # frame 1 without its latent symbols (on these photos the classical residual is smaller too)
        assert len(payload) < len(encode_payload(codec.tables, symbols, 0, x_raw=frames, raw_float=raw_float,
                                                 max_error=d, latent_step=grid.step, latent_level=grid.level)[0])
        with pytest.raises(InputError, match="modes must be"):
            encode_payload(codec.tables, symbols, 0, x_raw=frames, raw_float=raw_float, max_error=d,
                           latent_step=grid.step, latent_level=grid.level, modes=np.array([0, 2, 0]))


def test_the_sender_keeps_the_smaller_mode_per_frame(codec: Codec) -> None:
    """Each frame goes the way its one-frame packet is smaller (classical on a tie); a packet
    whose frames all keep their latent has no modes; a forced mode is obeyed."""
    other = _noise_codec(codec)
    photo = _photos()[0]
    noise = np.random.default_rng(9).integers(0, 256, photo.shape).astype(np.uint8)
    frames = np.concatenate([photo, noise, photo[:, :, :, ::-1]])
    kw = _kw(codec, 2)
    picked = []
    for i in range(3):
        one = frames[i : i + 1]
        sizes = {m: len(other.encode(one, **kw, residual_mode=m)) for m in ("latent", "classic")}
        auto = other.encode(one, **kw)
        assert len(auto) == min(sizes.values())
        classic = sizes["classic"] <= sizes["latent"]
        assert other.header(auto).has_modes == classic
        picked.append(MODE_CLASSIC if classic else MODE_LATENT)
    assert picked == [MODE_LATENT, MODE_CLASSIC, MODE_LATENT]  # both choices are exercised
    packet = other.encode(frames, **kw)
    body = bitstream.read_packet(packet)[1]
    assert np.array_equal(PayloadReader(body, other.tables).modes(3, residual=True), picked)
    q, bound, grid = other._level(kw.get("quality"), None)
    symbols = other.quantize_latents(other._encode_model(other.normalization.to_model(frames)), grid)
    raw_float = other._residual_prediction(symbols, grid, frames.shape[1:])
    assert list(choose_modes(other, frames, symbols, raw_float, 2, grid)) == picked
    out = other.decode(packet)
    assert np.abs(out.astype(np.int64) - frames).max() <= 2
    assert len(packet) < len(other.encode(frames, **kw, residual_mode="latent"))
    assert not other.header(other.encode(frames[[0, 2]], **kw)).has_modes  # photos only: the old layout
    many = frames[np.arange(PER_FRAME_TRIALS + 1) % 3]  # past the per-frame trials: one choice per packet
    sizes = {m: len(other.encode(many, **kw, residual_mode=m)) for m in ("latent", "classic")}
    whole = other.encode(many, **kw)
    assert len(whole) == min(sizes.values()) and other.header(whole).has_modes == (sizes["classic"] <= sizes["latent"])
    assert np.abs(other.decode(whole).astype(np.int64) - many).max() <= 2
    with pytest.raises(InputError, match="residual_mode"):
        other.encode(frames, **kw, residual_mode="jpeg-ls")
    with pytest.raises(InputError, match="classical residual tables"):  # no tables for max error 3
        other.encode(frames, max_error=3, residual_mode="classic")


# ------------------------------------------------------------------ the packet's flag and the tables' version

def test_a_damaged_mode_flag_is_caught(codec: Codec) -> None:
    raw = _photos()[0]
    kw = _kw(codec, 0)
    packet = codec.encode(raw, **kw, residual_mode="classic")
    plain = codec.encode(raw, **kw, residual_mode="latent")
    for p in (packet, plain):  # flipped either way: the packet's CRC32 fails
        bad = bytearray(p)
        bad[3] ^= bitstream.FLAG_MODES
        with pytest.raises(ChecksumMismatch):
            codec.decode(bytes(bad))
    # forged with a fresh CRC32: the payload no longer parses as written; the reconstruction CRC
    # (or the payload's own checks) refuse it rather than return wrong pixels
    h = codec.header(packet)
    for modes, p in ((False, packet), (True, plain)):
        forged = bitstream.write_packet(model_id=codec.model_id, quality=h.quality, sample_shape=h.sample_shape,
                                        count=1, payload=bytes(bitstream.read_packet(p)[1]), residual=True,
                                        recon_crc=codec.header(p).recon_crc, modes=modes)
        with pytest.raises(BitstreamError):
            codec.decode(forged)
    # the flag on a latent-only packet (no residual, no transform) is refused as corrupt
    bad = bytearray(bitstream.write_packet(model_id=codec.model_id, quality=0, sample_shape=h.sample_shape, count=1,
                                           payload=b"\x00"))
    bad[3] |= bitstream.FLAG_MODES
    body = bytes(bad[:-4])
    with pytest.raises(BitstreamError, match="modes without a transform or max-error residual"):
        bitstream.read_packet(body + struct.pack("<I", zlib.crc32(body) & 0xFFFFFFFF))
    # in a stream of compact frames the flag rides in the marker; a flip fails the frame's check
    ctx = StreamContext.of(h)
    frame = compact(packet, ctx)
    assert frame is not None and expand(frame, ctx) == packet
    with pytest.raises(ChecksumMismatch):
        expand(bytes([frame[0] ^ 0x04]) + frame[1:], ctx)


def test_entropy_json_versions_the_classical_tables(codec: Codec) -> None:
    """Version 2 of colour-wavefront holds ``classic``; a reader refuses a version that disagrees
    with its content (so a latentwire that reads only version 1 refuses the new bundle), and the
    shipped file writes back to its own bytes."""
    data = (ASSETS / "bsds-gdn2d" / "entropy.json").read_bytes()
    assert codec.tables.dumps() == data
    obj = json.loads(data)
    assert obj["residual_coding"]["version"] == 2
    for change, match in (
        (lambda o: o["residual_coding"].update(version=1), "version"),
        (lambda o: o["residual_coding"].pop("classic"), "version"),
        (lambda o: o["residual_coding"]["classic"]["levels"][0].update(model_weight=2), "no model weight"),
        (lambda o: o["residual_coding"]["classic"].pop("levels"), "malformed"),
    ):
        bad = json.loads(data)
        change(bad)
        with pytest.raises(BundleError, match=match):
            CodingTables.loads(json.dumps(bad))


def test_old_packets_decode_and_encode_exactly_as_before(codec: Codec, tmp_path: Path) -> None:
    """tests/data/bsds-v6: packets of the bundle before it had classical tables and its exact
    network. That bundle is today's without them, byte for byte: rebuilt, it decodes them as that
    latentwire did and writes them again; today's bundle codes the same samples within each bound,
    its residual levels against the exact network (FLAG_EXACT)."""
    old_dir = tmp_path / "bsds-v6"
    old_dir.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (old_dir / name).symlink_to(ASSETS / "bsds-gdn2d" / name)
    manifest = json.loads((ASSETS / "bsds-gdn2d" / "manifest.json").read_bytes())
    manifest.pop("exact", None)
    (old_dir / "manifest.json").write_text(json.dumps(manifest))
    obj = json.loads((ASSETS / "bsds-gdn2d" / "entropy.json").read_bytes())
    del obj["residual_coding"]["classic"]
    obj["residual_coding"]["version"] = 1
    (old_dir / "entropy.json").write_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
    assert finalize(old_dir).startswith("7eb0cffd8fb3")
    old = Codec.load(old_dir, provider="cpu", threads=1)
    photos = _photos()
    samples = [np.ascontiguousarray(photos[2][:, :, :45, :31]), np.ascontiguousarray(photos[0][:, :, 10:74, 20:68])]
    with np.load(OLD / "packets.npz") as z:
        names = [n for n in z.files if not n.endswith("_sha")]
        assert len(names) == 8
        for name in names:
            packet = z[name].tobytes()
            assert not old.header(packet).has_modes
            assert hashlib.sha256(old.decode(packet).tobytes()).digest() == z[name + "_sha"].tobytes(), name
            level, si = name.rsplit("_s", 1)
            kw = {"quality": int(level[7:])} if level.startswith("quality") else {"max_error": int(level[9:])}
            raw = samples[int(si)]
            assert old.encode(raw, **kw) == packet, name
            new = codec.encode(raw, **kw, residual_mode="latent")
            assert codec.header(new).has_exact == codec.manifest.has_exact
            bound = kw.get("max_error", codec.qualities[kw.get("quality", 0)].max_error)
            assert int(np.abs(codec.decode(new).astype(np.int64) - raw).max()) <= bound, name


# ------------------------------------------------------------------ the independent reference

def _q(e: int, d: int) -> int:
    return (abs(e) + d) // (2 * d + 1) * (1 if e > 0 else -1 if e < 0 else 0)


def _med(a: int, b: int, c: int) -> int:
    return min(a, b) if c >= max(a, b) else max(a, b) if c <= min(a, b) else a + b - c


def _classic_reference(ctx: ResidualColourContext, lv: ColourLevel, x: np.ndarray
                       ) -> tuple[list[tuple[list[int], list[int]]], np.ndarray]:
    """Per coder call (symbols, table ids) and the reconstruction of a classical frame set, in plain
    Python ints: the base from MED of u = p + q s around it (0 outside), every table by class of
    its activity (w = 0 throughout)."""
    n_f, c, h, w = x.shape
    d, s = lv.max_error, 2 * lv.max_error + 1
    xs = x.astype(np.int64).tolist()
    order = [ctx.base_channel] + [ch for ch in range(c) if ch != ctx.base_channel]
    bc, sc = ctx.base_clip, ctx.signed_clip
    nb, nc = len(lv.base_edges) + 1, len(lv.chroma_edges) + 1
    offsets = [0, nb * (2 * bc + 1)] + [nb * (2 * bc + 1) + nc + (m - 2) * nc * (2 * sc + 1) for m in range(2, c)]
    q: dict[tuple[int, int, int, int], int] = {}
    k: dict[tuple[int, int, int, int], int] = {}
    u: dict[tuple[int, int, int], int] = {}

    def at(table: dict, key: tuple[int, ...]) -> int:
        return table.get(key, 0)  # never set outside the image: 0 there

    def cls(edges: tuple[int, ...], a: int) -> int:
        return sum(1 for e in edges if e <= a)

    calls = []
    for t in range(h + w - 2 + c):
        syms: list[int] = []
        ids: list[int] = []
        for m in range(c):
            diag = t - m
            if not 0 <= diag <= h + w - 2:
                continue
            for n in range(n_f):
                for i in range(max(0, diag - w + 1), min(h - 1, diag) + 1):
                    j = diag - i
                    if m == 0:
                        p = _med(at(u, (n, i, j - 1)), at(u, (n, i - 1, j)), at(u, (n, i - 1, j - 1)))
                        a, b = at(q, (0, n, i, j - 1)), at(q, (0, n, i - 1, j))
                        act = 2 * (abs(a) + abs(b)) + abs(at(q, (0, n, i - 1, j - 1))) \
                            + abs(at(q, (0, n, i, j - 2))) + abs(at(q, (0, n, i - 2, j)))
                        sym = _q(xs[n][order[0]][i][j] - p, d)
                        ids.append(cls(lv.base_edges, act) * (2 * bc + 1) + max(-bc, min(bc, a + b)) + bc)
                        u[(n, i, j)] = p + sym * s
                    else:
                        a, b, ab = at(k, (m, n, i, j - 1)), at(k, (m, n, i - 1, j)), at(k, (m, n, i - 1, j - 1))
                        guess = _med(a, b, ab) if lv.predictor == "median" else (a + b) // 2
                        sym = _q(xs[n][order[m]][i][j] - u[(n, i, j)] - guess, d)
                        cl = cls(lv.chroma_edges, abs(a - ab) + abs(b - ab))
                        if m >= 2:
                            cl = cl * (2 * sc + 1) + max(-sc, min(sc, q[(m - 1, n, i, j)])) + sc
                        ids.append(offsets[m] + cl)
                        k[(m, n, i, j)] = guess + sym * s
                    q[(m, n, i, j)] = sym
                    syms.append(sym)
        calls.append((syms, ids))
    recon = np.zeros(x.shape, dtype=np.int64)
    for (n, i, j), ub in u.items():
        for m, ch in enumerate(order):
            recon[n, ch, i, j] = min(255, max(0, ub + (k[(m, n, i, j)] if m else 0)))
    return calls, recon


@pytest.mark.parametrize("max_error", [0, 1, 2, 4])
def test_classic_payload_is_the_reference_byte_for_byte(codec: Codec, max_error: int) -> None:
    """The shipped classical tables, two frames of odd-sized cuts: the same table for every symbol
    (the bytes match only then) and the same reconstruction as the plain-Python reference."""
    classic = _classic(codec)
    lv = next(lv for lv in classic.levels if lv.max_error == max_error)
    photos = _photos()
    x = np.concatenate([photos[0][:, :, 5:22, 30:43], photos[1][:, :, 40:57, 7:20]])
    if max_error == 4:
        x[1, :, :4, :4] = 255  # saturated corner: unclipped u above the range, clipped recon
    calls, recon = _classic_reference(classic, lv, x)
    enc = StreamEncoder()
    info = classic.write(enc, codec.tables.residual, x, np.zeros(x.shape, np.float32), max_error)
    ref = StreamEncoder()
    for syms, ids in calls:
        ref.encode(np.asarray(syms, dtype=np.int64), np.asarray(ids, dtype=np.int64), lv.tables)
    assert enc.finish() == ref.finish()
    assert np.array_equal(info.recon, recon)
    assert np.abs(recon - x).max() <= max_error


# ------------------------------------------------------------------ another process

_DECODE_ELSEWHERE = r"""
import sys, numpy as np
from latentwire.codec.codec import Codec
codec = Codec.load(sys.argv[1], provider="cpu", threads=2)
z = np.load(sys.argv[2])
np.savez(sys.argv[3], **{k: codec.decode(z[k].tobytes()) for k in z.files})
"""


def test_classic_and_mixed_packets_decode_alike_in_another_process(codec: Codec, tmp_path: Path) -> None:
    photos = _photos()
    frames = np.concatenate([photos[0], photos[1]])
    packets = {f"classic{d}": codec.encode(photos[2], **_kw(codec, d), residual_mode="classic") for d in (0, 1, 4)}
    packets["auto2"] = codec.encode(frames, **_kw(codec, 2))
    packets["latent0"] = codec.encode(photos[3], **_kw(codec, 0), residual_mode="latent")
    here = {k: codec.decode(p) for k, p in packets.items()}
    np.savez(tmp_path / "packets.npz", **{k: np.frombuffer(p, np.uint8) for k, p in packets.items()})
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    run = subprocess.run([sys.executable, "-c", _DECODE_ELSEWHERE, str(ASSETS / "bsds-gdn2d"),
                          str(tmp_path / "packets.npz"), str(tmp_path / "out.npz")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    with np.load(tmp_path / "out.npz") as got:
        for key, out in here.items():
            assert np.array_equal(got[key], out), key


def test_per_frame_trials_is_a_setting_and_the_sender_is_told_when_a_packet_passes_it(
        codec: Codec, caplog: pytest.LogCaptureFixture) -> None:
    """Codec.per_frame_trials: over it, "auto" takes one mode for the whole packet, logged once per
    codec (not per packet); at or under it, each frame its own."""
    other = _noise_codec(codec)
    photo = _photos()[0]
    noise = np.random.default_rng(9).integers(0, 256, photo.shape).astype(np.uint8)
    frames = np.concatenate([photo, noise, photo, noise])
    kw = _kw(codec, 2)

    def modes(packet: bytes) -> list[int]:
        if not other.header(packet).has_modes:
            return [MODE_LATENT] * len(frames)
        return PayloadReader(bitstream.read_packet(packet)[1], other.tables).modes(len(frames), residual=True).tolist()

    assert other.per_frame_trials == PER_FRAME_TRIALS
    other.per_frame_trials = 3
    with caplog.at_level("INFO", logger="latentwire.codec.residual_levels"):
        whole = [other.encode(frames, **kw) for _ in range(2)]
    assert sum("per_frame_trials (3)" in r.getMessage() for r in caplog.records) == 1
    assert all(len(set(modes(p))) == 1 for p in whole)
    other.per_frame_trials = 4
    per_frame = other.encode(frames, **kw)
    assert modes(per_frame) == [MODE_LATENT, MODE_CLASSIC, MODE_LATENT, MODE_CLASSIC]
    assert len(per_frame) < len(whole[0])
    assert np.abs(other.decode(per_frame).astype(np.int64) - frames).max() <= 2
