"""latentwire.codec: the codec itself, from raw samples to packets and back.

Holds, by folder:
- sources/   data sources (MNIST IDX, arrays, image folders, MIT-BIH WFDB) -> SampleSet;
- coding/    the coding stages: quantizer, integer tables, range coder, context models, residual
             layer, payload layout, packet format (no torch, no onnxruntime);
- training/  everything torch: model families, training, ONNX export (the [train] extra);
- top level: the runtime (bundle.py, runtime.py over onnxruntime, codec.py's Codec), calibration,
             the file tools (encode/decode, eval, embed, pictures), the baselines, and the
             `latentwire` command (cli.py), which discovers every room's subcommands.

May import: numpy, onnxruntime, constriction, zstandard, Pillow (and torch in training/ only).
Never imports latentwire.server or latentwire.client: they build on it, not the reverse.
"""
