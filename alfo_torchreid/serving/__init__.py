"""Using a trained model: loading it and predicting features and named
attributes (:mod:`.inference`), searching a gallery (:mod:`.search`,
:mod:`.gallery_index`) and exporting it to ONNX / TorchScript (:mod:`.export`)."""
