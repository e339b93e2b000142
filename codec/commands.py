"""The codec room's subcommands, registered with the `latentwire` command (codec/cli.py) through
the "latentwire.commands" entry point. Parsers are torch-free; train and export run with torch."""

from .cli import Command

COMMANDS = (
    Command("train", "train an autoencoder on your data (needs the [train] extra)",
            "latentwire.codec.training.options:add_train_parser", "latentwire.codec.training.train:run", "train"),
    Command("export", "export a checkpoint as a codec bundle: two ONNX graphs + manifest",
            "latentwire.codec.training.options:add_export_parser", "latentwire.codec.training.export:run", "train"),
    Command("calibrate", "build a bundle's integer entropy tables and quality levels",
            "latentwire.codec.calibrate:add_parser", "latentwire.codec.calibrate:run"),
    Command("quantize-exact", "store a bundle's exact integer decoder, the prediction residual levels use",
            "latentwire.codec.training.quantize_exact:add_parser", "latentwire.codec.training.quantize_exact:run",
            "train"),
    Command("train-context", "add a checkerboard context to a hyperprior bundle's latent coding (recalibrate after)",
            "latentwire.codec.training.train_context:add_parser", "latentwire.codec.training.train_context:run",
            "train"),
    Command("encode", "encode arrays, images or records into a .lw file",
            "latentwire.codec.files:add_parser", "latentwire.codec.files:run"),
    Command("decode", "decode a .lw file into arrays or PNG images",
            "latentwire.codec.files:add_parser", "latentwire.codec.files:run"),
    Command("eval", "measure bytes, PSNR (and PRD, PRDN, CR) of a bundle on your data, as JSON and a picture",
            "latentwire.codec.evaluate:add_parser", "latentwire.codec.evaluate:run"),
    Command("embed", "write a bundle's latent codes for a data set (features, .npy)",
            "latentwire.codec.embed:add_parser", "latentwire.codec.embed:run"),
)
