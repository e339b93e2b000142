"""Warm start from a shipped bundle: the weights in its two ONNX graphs, back into a torch model.

Why: a training run's checkpoints live in an ignored folder that does not outlive the machine it
ran on, while the shipped bundle is committed. A long run (the photo codec trains for days of CPU)
can therefore continue in a later session from what ships, with `latentwire train --init-from
codec/assets/NAME`. What the graphs hold is the network: every weight the exporter kept as an
initializer named after its module, and the GDN betas (and, in small layers, gammas), which the
exporter folds into constants of their 1x1 convolution (max(p, bound)^2 - pedestal; p = sqrt(value +
pedestal) is an equivalent parameter). Variable-rate gains come from the manifest. What they do not hold is
the optimizer state and the factorized density, which only shaped the training rate term: the
density is refitted on the run's own training crops with the network frozen (fit_density) before
the first step, so the rate gradient the network sees from step one is a sensible one.

The recovered model is checked against both graphs on one input before anything trains.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from tqdm import tqdm

from .. import bundle as bundle_mod
from .half_encoder import HALF_SUFFIX
from .models import Autoencoder, ModelConfig
from .models.gdn import _PEDESTAL, GDN

# the exporter names each kept initializer after the wrapper's attribute holding the model
_PREFIX = "model."
# torch and onnxruntime agree to float32 rounding on these graphs; a wrong mapping is off by O(1)
_PARITY = 1e-3


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / bundle_mod.MANIFEST).is_file()


def bundle_config(path: str | Path) -> ModelConfig:
    return ModelConfig.from_dict(bundle_mod.read_manifest(path)["config"])


def _recover(value: np.ndarray) -> np.ndarray:
    """The parameter p behind a folded max(p, bound)^2 - pedestal (an equivalent one where clamped)."""
    return np.sqrt(np.maximum(value.astype(np.float64), 0.0) + _PEDESTAL).astype(np.float32)


def _gdn_params(graph: onnx.GraphProto, values: dict[str, np.ndarray], modules: list[str]) -> dict[str, np.ndarray]:
    """{module.beta, module.gamma} for each GDN, in graph order: a GDN is a 1x1 Conv over x * x whose
    bias is beta and whose kernel is gamma, each either folded to a constant (small layers, all betas)
    or computed from the parameter itself."""
    producer = {out: node for node in graph.node for out in node.output}

    def raw_source(name: str) -> str | None:
        for _ in range(16):  # an unfolded kernel is Clip -> Mul -> Reshape of the gamma parameter
            if name in values:
                return name if name.startswith(_PREFIX) else None
            node = producer.get(name)
            if node is None or not node.input:
                return None
            name = node.input[0]
        return None

    def is_square(name: str) -> bool:
        node = producer.get(name)
        return node is not None and node.op_type == "Mul" and len(node.input) == 2 and node.input[0] == node.input[1]

    convs = [n for n in graph.node if n.op_type == "Conv" and len(n.input) == 3 and is_square(n.input[0])]
    if len(convs) != len(modules):
        raise ValueError(f"found {len(convs)} GDN convolutions in the graph, the model has {len(modules)} GDN layers")
    params: dict[str, np.ndarray] = {}
    for node, module in zip(convs, modules, strict=True):
        for name, key in ((node.input[1], "gamma"), (node.input[2], "beta")):
            raw = raw_source(name)
            if raw is not None:
                params[f"{_PREFIX}{module}.{key}"] = values[raw]
            elif name in values:
                v = _recover(values[name])
                params[f"{_PREFIX}{module}.{key}"] = v.reshape(v.shape[0], -1) if key == "gamma" else v
    return params


def _graph_state(path: Path, modules: list[str]) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name in [n for n in values if n.endswith(HALF_SUFFIX)]:  # weights stored in float16 (half_encoder.py)
        values[name[: -len(HALF_SUFFIX)]] = values.pop(name).astype(np.float32)
    state = {k: v for k, v in values.items() if k.startswith(_PREFIX)}
    state.update(_gdn_params(graph, values, modules))
    return {k[len(_PREFIX):]: v for k, v in state.items()}


def load_bundle_weights(model: Autoencoder, path: str | Path) -> dict[str, Any]:
    """Load the bundle's network into ``model`` (same config) and return its training record
    (command, seconds, epochs, earlier stages) for the new run's init_from."""
    d = Path(path)
    manifest = bundle_mod.read_manifest(d)
    if not _same_network(ModelConfig.from_dict(manifest["config"]), model.config):
        raise ValueError(f"--init-from: {d} was trained with {manifest['config']}, not {model.config.to_dict()}")
    gdn = [name for name, m in model.named_modules() if isinstance(m, GDN)]
    state = {**_graph_state(d / bundle_mod.ENCODER, [n for n in gdn if n.startswith("encoder.")]),
             **_graph_state(d / bundle_mod.DECODER, [n for n in gdn if n.startswith("decoder.")])}
    levels = manifest["latent"].get("levels") or []
    if model.levels:
        state["log_gain"] = np.log(np.asarray([lv["gain"] for lv in levels], dtype=np.float64)).astype(np.float32)
        state["log_inverse_gain"] = np.log(np.asarray([lv["inverse_gain"] for lv in levels],
                                                      dtype=np.float64)).astype(np.float32)
    own = model.state_dict()
    # what a bundle's float graphs cannot hold start fresh and are fitted with the density before the
    # first step (fit_density): a hyperprior's h_s (hyper.npz is its integer form) and, from a
    # factorized-prior bundle, its h_a (a hyperprior bundle's encoder graph holds h_a's weights)
    fresh = ("density.", "hyper_synthesis.") + (() if any(k.startswith("hyper_analysis.") for k in state)
                                                else ("hyper_analysis.",))
    wanted = {k for k in own if not k.startswith(fresh)}
    missing = sorted(wanted - state.keys())
    if missing:
        raise ValueError(f"--init-from: {d}'s graphs do not hold {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''}; warm-start from its run's checkpoint instead")
    for k in wanted:
        if tuple(own[k].shape) != tuple(state[k].shape):
            raise ValueError(
                f"--init-from: {k} is {tuple(state[k].shape)} in {d}, the model wants {tuple(own[k].shape)}"
            )
        own[k] = torch.from_numpy(np.array(state[k], copy=True)).to(own[k].dtype)
    model.load_state_dict(own)
    _check_parity(model, d)
    training = manifest.get("training") or {}
    return {"path": str(d), "bundle": manifest.get("name", ""), "model_id": manifest.get("model_id", ""),
            "command": training.get("command", ""), "seconds": round(float(training.get("seconds", 0.0)), 2),
            "epochs": int(training.get("epochs", 0)), "stages": training.get("stages", [])}


def _same_network(bundle: ModelConfig, model: ModelConfig) -> bool:
    """Same config, or a gdn2d bundle whose analysis, synthesis and gains a hyper2d model extends."""
    if bundle == model:
        return True
    return bundle.family == "gdn2d" and model.family == "hyper2d" and replace(bundle, family="hyper2d") == model


def _check_parity(model: Autoencoder, d: Path) -> None:
    """The recovered encoder and decoder must reproduce the graphs (padding-free input size)."""
    shape = [s if s is not None else 4 * max(1, model.stride) for s in model.config.sample_shape]
    x = np.random.default_rng(0).uniform(0.0, 1.0, size=[2, *shape]).astype(np.float32)
    enc = ort.InferenceSession(str(d / bundle_mod.ENCODER), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(d / bundle_mod.DECODER), providers=["CPUExecutionProvider"])
    y_onnx = enc.run(None, {enc.get_inputs()[0].name: x})[0]
    model.eval()
    compute_dtype, model.compute_dtype = model.compute_dtype, None  # the graphs are float32: so is the comparison
    try:
        with torch.no_grad():
            y = model.encode(torch.from_numpy(x)).numpy()
            feeds = {dec.get_inputs()[0].name: y_onnx}
            if len(dec.get_inputs()) > 1:
                feeds[dec.get_inputs()[1].name] = np.asarray(shape[1:], dtype=np.int64)
            x_onnx = dec.run(None, feeds)[0]
            x_hat = model.decode(torch.from_numpy(y_onnx), tuple(shape[1:]) if model.spatial_dims else None).numpy()
    finally:
        model.compute_dtype = compute_dtype
    for what, a, b in (("encoder", y, y_onnx), ("decoder", x_hat, x_onnx)):
        err = float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))
        if not math.isfinite(err) or err > _PARITY:
            raise ValueError(
                f"--init-from: the weights recovered from {d} do not reproduce its {what} "
                f"(relative max error {err:.2e} > {_PARITY:g}); warm-start from its run's checkpoint instead"
            )


# frames whose latents the density warm-up computes once (then every step only runs the density)
DENSITY_SAMPLES = 512


def fit_density(model: Autoencoder, x: np.ndarray, *, steps: int, batch_size: int, lr: float,
                device: torch.device, seed: int = 0, samples: int = DENSITY_SAMPLES, progress: bool = True) -> float:
    """Fit the factorized density alone to the frozen network's latents (noisy, at random levels)
    and return the mean bits per sample over the cached latents at the end. The latents of up to
    ``samples`` random frames are computed once: a step is then a density evaluation, so thousands
    of steps cost less than one epoch's encoder passes."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(x.shape[0], generator=gen)[: min(samples, x.shape[0])].numpy()
    model.eval()
    with torch.no_grad():
        starts = range(0, len(pick), batch_size)
        cached = torch.cat([model.encode(torch.from_numpy(x[np.sort(pick[i : i + batch_size])]).to(device))
                            for i in tqdm(starts, desc="density warm-up: latents", unit="batch", leave=False,
                                          disable=not progress)])
    fitted = model.warmup_parameters()
    opt = torch.optim.Adam(fitted, lr=lr)
    fitted_ids = {id(p) for p in fitted}
    frozen = [p for p in model.parameters() if id(p) not in fitted_ids and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    model.train()
    bits_of = model.warmup_bits

    def levels_for(n: int) -> torch.Tensor | None:
        return torch.randint(0, model.levels, (n,), generator=gen).to(device) if model.levels else None

    step_batch = max(batch_size, 32)
    try:
        for _ in tqdm(range(steps), desc="density warm-up: fit", unit="step", leave=False, disable=not progress):
            idx = torch.randint(0, cached.shape[0], (min(step_batch, cached.shape[0]),), generator=gen)
            loss = bits_of(cached[idx], levels_for(len(idx))).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    with torch.no_grad():
        return float(bits_of(cached, levels_for(cached.shape[0])).mean())
