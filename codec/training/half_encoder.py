"""The sender's graph with its weights stored in float16: a bundle half the encoder's size.

Why only the encoder: its output is rounded by the sender alone, and the packet carries the
integers it chose, so no receiver ever has to reproduce it; a weight rounded to float16 (11
significant bits) moves y by about 1e-3 of its size, which changes a symbol only where y sat on a
rounding boundary. The decoder, the exact networks and the tables are what receivers compute
with, and they keep their bytes (the model id does not cover encoder.onnx, so it is unchanged).

Each large float32 initializer becomes a float16 one plus a Cast back to float32 at the head of
the graph: onnxruntime folds the casts when it builds the session, so the graph computes in
float32 at the same speed. Only export-time tooling: the runtime reads the result like any graph.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..bundle import ENCODER, finalize, read_manifest, write_manifest
from ..errors import ExportError

HALF_SUFFIX = "__float16"
# tensors smaller than this stay float32: biases, GDN's beta and gamma vectors cost nothing and
# are where a relative error of 2**-11 would matter most
MIN_ELEMENTS = 4096
FLOAT16_MAX = 65504.0


@dataclass(frozen=True)
class HalfReport:
    """What the conversion did and what it cost: bytes of encoder.onnx, tensors stored in float16,
    and the largest |y| change (and |z|, under a hyperprior) relative to the largest |y| on samples."""

    bytes_before: int
    bytes_after: int
    tensors: int
    max_relative_change: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def halve_initializers(path: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite path's float32 initializers of at least min_elements values as float16 + Cast;
    returns how many. Refuses a weight beyond float16's range (it would become inf)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    count = 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        arr = numpy_helper.to_array(init)
        if float(np.abs(arr).max()) > FLOAT16_MAX:
            raise ExportError(f"{path}: initializer {init.name} exceeds float16's range; keep it float32")
        name = init.name
        init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16), name + HALF_SUFFIX))
        casts.append(helper.make_node("Cast", [name + HALF_SUFFIX], [name], to=TensorProto.FLOAT,
                                      name=name + "_to_float32"))
        count += 1
    if count:
        nodes = list(graph.node)
        del graph.node[:]
        graph.node.extend(casts + nodes)
        onnx.checker.check_model(model)
        onnx.save(model, str(path), save_as_external_data=False)
    return count


def _outputs(path: Path, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, {"x": x.astype(np.float32)})]


def halve_bundle_encoder(bundle_dir: str | Path, samples: np.ndarray, command: str,
                         min_elements: int = MIN_ELEMENTS) -> HalfReport:
    """Store a bundle's encoder weights in float16, measure the change on model-domain samples
    (N, *sample_shape) against the float32 graph, record it in manifest training.encoder_float16
    and re-finalize (file hashes; the model id stays)."""
    t0 = time.perf_counter()
    d = Path(bundle_dir)
    path = d / ENCODER
    before_bytes = path.stat().st_size
    before = _outputs(path, samples)
    tensors = halve_initializers(path, min_elements)
    if tensors == 0:
        raise ExportError(f"{path}: no float32 initializer of {min_elements} or more values to store in float16")
    after = _outputs(path, samples)
    scale = max(float(np.abs(before[0]).max()), 1e-12)
    change = max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True)) / scale
    report = HalfReport(before_bytes, path.stat().st_size, tensors, round(change, 6),
                        round(time.perf_counter() - t0, 2))
    manifest = read_manifest(d)
    manifest.setdefault("training", {})["encoder_float16"] = {**report.to_dict(), "command": command,
                                                              "samples": int(len(samples))}
    write_manifest(d, manifest)
    finalize(d)
    return report
