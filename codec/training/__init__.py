"""Training and export: the only place latentwire imports torch (and onnx).

models/ (one registry of autoencoder families and the learned density), train.py, export.py,
distributed.py (torchrun). options.py is the exception: torch-free, so `latentwire train --help`
and `export --help` answer without the [train] extra. May import everything in latentwire.codec
below it; nothing outside training/ imports from here except through the `latentwire` command.
"""
