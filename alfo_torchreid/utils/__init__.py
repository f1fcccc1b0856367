"""What every layer uses and that knows nothing of ALFO: atomic files, errors,
torchreid compatibility, downloads, checkpoints, pretrained weights, run folders
and process-group helpers. Imports no other part of the package."""
