"""What every layer uses and that knows nothing of ALFO: atomic files, errors,
torchreid compatibility, downloads, checkpoints and their descriptions,
pretrained weights, run folders, process-group helpers, the tools' ``--help``,
the check that no tool writes over its inputs, and YAML without repeated keys.
Imports no other part of the package."""
