"""A trained ALFO exported for use without this package: ONNX or TorchScript.

The exported function is :class:`~alfo_torchreid.serving.inference.FeaturesAndAttributes`
in eval mode::

    images   [B, 3, H, W] float32, RGB scaled to [0, 1], then normalised with
             the run's mean and std (torchreid's test transform)
    feature  [B, D]  the retrieval feature (not normalised)
    attributes [B, K] every attribute's class probabilities in schema order,
             concatenated (binary: P(no), P(yes))

The batch axis is dynamic; height and width are those of the run (the stripes
are laid out for that feature-map height). Every export is checked before it
is written: on a batch of another size than the one traced, the exported
model's outputs (run by onnxruntime, or by TorchScript) must be within
:data:`MAX_ABS_DIFF` of PyTorch's, or nothing is written. A JSON file beside
the model describes the input, the outputs and their columns.

TorchScript is deprecated by PyTorch (``torch.jit`` warns since 2.9); prefer
ONNX, which onnxruntime runs without PyTorch.
"""
import json
import os.path as osp
import warnings
from dataclasses import dataclass

import torch

from alfo_torchreid.utils.atomic import PartialFile, write_file
from alfo_torchreid.utils.errors import ExportError

FORMATS = ('onnx', 'torchscript')
SUFFIXES = {'onnx': '.onnx', 'torchscript': '.torchscript.pt'}
MAX_ABS_DIFF = 1e-4
OUTPUTS = ('feature', 'attributes')
TRACE_BATCH, CHECK_BATCH = 2, 3
ONNX_OPSET = 17


@dataclass
class ExportReport:
    """The files written and the largest |exported - PyTorch| of each output."""
    path: str
    description: str
    max_abs_diff: dict


def import_export_libraries():
    """(onnx, onnxruntime), or a one-line error naming the extra that installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f'ONNX export needs {exc.name}: pip install '
                          'alfo-torchreid[export] (onnx and onnxruntime)') from None
    return onnx, onnxruntime


def export_model(trained, fmt, out_path=''):
    """Exports and checks a loaded model.

    Args:
        trained (TrainedALFO): from :func:`~alfo_torchreid.serving.inference.load_trained_alfo`.
        fmt (str): ``'onnx'`` or ``'torchscript'``.
        out_path (str): default: the weights' path + ``.onnx`` / ``.torchscript.pt``.

    Returns:
        ExportReport

    Raises:
        ExportError: a missing library, or outputs that differ by more than
            :data:`MAX_ABS_DIFF` (then nothing is written).
    """
    out_path, description = output_paths(trained.weights, fmt, out_path)
    network = trained.network.cpu().eval()
    size = (trained.identity['input']['height'], trained.identity['input']['width'])
    generator = torch.Generator().manual_seed(0)
    example, check = (torch.randn(n, 3, *size, generator=generator)
                      for n in (TRACE_BATCH, CHECK_BATCH))
    with torch.no_grad():
        expected = network(check)
    exporter = _export_onnx if fmt == 'onnx' else _export_torchscript
    with PartialFile(out_path) as partial, warnings.catch_warnings():
        # The stripes' layout depends on the input height, which the export fixes.
        warnings.simplefilter('ignore', torch.jit.TracerWarning)
        # torch 2.14 deprecates torch.jit; the module docstring says so once.
        warnings.filterwarnings('ignore', message='`torch.jit', category=FutureWarning)
        outputs = exporter(network, example, check, partial)
        diff = {name: float((torch.as_tensor(got) - want).abs().max().detach())
                for name, got, want in zip(OUTPUTS, outputs, expected)}
        if max(diff.values()) > MAX_ABS_DIFF:
            raise ExportError(f'the {fmt} export of "{trained.weights}" differs from PyTorch by '
                              f'{max(diff.values()):.2e} (> {MAX_ABS_DIFF:g}; per output: '
                              f'{diff}): nothing written')
        partial.replace()
    write_file(description, json.dumps(describe(trained, fmt, diff), indent=1).encode())
    return ExportReport(out_path, description, diff)


def output_paths(weights, fmt, out_path=''):
    """(model file, its JSON description) that :func:`export_model` writes.

    Args:
        weights (str): the checkpoint exported.
        fmt (str): ``'onnx'`` or ``'torchscript'``.
        out_path (str): default: the weights' path + ``.onnx`` / ``.torchscript.pt``.

    Raises:
        ExportError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ExportError(f'unknown export format {fmt!r}; expected one of {list(FORMATS)}')
    path = osp.abspath(osp.expanduser(str(out_path))) if out_path else \
        osp.abspath(osp.expanduser(str(weights))) + SUFFIXES[fmt]
    return path, path + '.json'


def _export_onnx(network, example, check, partial):
    """Writes the ONNX model into ``partial``; returns onnxruntime's outputs on ``check``."""
    onnx, onnxruntime = import_export_libraries()
    batch = {0: 'batch'}
    torch.onnx.export(network, (example,), partial.file, dynamo=False, input_names=['images'],
                      output_names=list(OUTPUTS), opset_version=ONNX_OPSET,
                      dynamic_axes={'images': batch, 'feature': batch, 'attributes': batch})
    partial.sync()
    onnx.checker.check_model(partial.path)
    session = onnxruntime.InferenceSession(partial.path, providers=['CPUExecutionProvider'])
    return session.run(list(OUTPUTS), {'images': check.numpy()})


def _export_torchscript(network, example, check, partial):
    """Writes the traced model into ``partial``; returns its outputs on ``check``
    after loading it back."""
    traced = torch.jit.trace(network, example, check_trace=False)  # checked below instead
    torch.jit.save(traced, partial.file)
    partial.sync()
    # The profiling executor would spend seconds optimising on the first calls;
    # the graph and its arithmetic are the same without it.
    with torch.no_grad(), torch.jit.optimized_execution(False):
        return torch.jit.load(partial.path)(check)


def describe(trained, fmt, max_abs_diff):
    """The JSON written beside an exported model."""
    identity = trained.identity
    schema = trained.schema
    columns, start = [], 0
    for name, classes in zip(schema.names, schema.num_classes):
        columns.append({'attribute': name, 'classes': list(schema.class_names(name)),
                        'columns': [start, start + classes]})
        start += classes
    return {
        'format': fmt,
        'input': {'name': 'images', 'shape': ['batch', 3, identity['input']['height'],
                                              identity['input']['width']],
                  'preprocessing': 'RGB, resized to height x width (bilinear), scaled to '
                                   '[0, 1], minus mean, divided by std (per channel)',
                  'mean': identity['input']['mean'], 'std': identity['input']['std']},
        'outputs': {'feature': {'shape': ['batch', trained.network.model.retrieval_dim],
                                'compare_normalised': identity['normalize_feature']},
                    'attributes': {'shape': ['batch', start], 'columns': columns,
                                   'colour_groups': {k: list(v) for k, v in
                                                     schema.colour_groups.items()}}},
        'weights': trained.weights,
        'weights_digest': identity['weights_digest'],
        'max_abs_diff_vs_pytorch': max_abs_diff,
    }
