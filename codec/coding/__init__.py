"""The coding stages, in the order data flows through them: quantize.py (latents -> integer
symbols), tables.py (fixed integer frequency tables) and coder.py (range coding with them),
context.py / context2d.py (tables chosen from already-decoded symbols), residual.py and
residual_context.py, residual_coding.py with residual_colour.py, residual_value.py and
residual_checker.py (the max-error layer and its context-coded tables), exact.py and
exact_layers.py (the integer network residuals are taken against where a bundle has one),
exact_hyper.py (a hyperprior's means and scales from that network, 2-D), payload.py (one packet's
payload and entropy.json), bitstream.py (the versioned, checksummed packet), fallback.py (lossless
packets, anomaly scores).

May import numpy, constriction, zstandard and latentwire.codec.errors / normalization; never
onnxruntime, torch, or the runtime above it (bundle, runtime, codec)."""
