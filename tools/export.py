#!/usr/bin/env python
"""Export a trained ALFO to ONNX or TorchScript, checked against PyTorch.

    python tools/export.py --weights log/alfo_market/model/model.pth.tar-60 --format onnx

The exported model maps a batch of normalised images [B, 3, H, W] to the
retrieval feature [B, D] and the attribute probabilities [B, K]; a JSON file
beside it describes the input and the attribute columns. The export is checked
on a batch of another size (onnxruntime for ONNX): its outputs must be within
1e-4 of PyTorch's, or nothing is written.
"""
import argparse
import sys

from alfo_torchreid.serving import export, inference
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=HelpFormatter)
    inference.add_model_arguments(parser)
    parser.add_argument('--format', choices=export.FORMATS, default='onnx',
                        help='ONNX (onnxruntime) or TorchScript (torch.jit)')
    parser.add_argument('--out', default='', help='default: the weights\' path + '
                        '.onnx or .torchscript.pt')
    return parser


def export_weights(args):
    refuse_writing_over_inputs(export.output_paths(args.weights, args.format, args.out),
                               inference.model_files(args.weights, args.config))
    trained = inference.load_trained_alfo(args.weights, args.config, args.trust_checkpoint,
                                          device='cpu')
    report = export.export_model(trained, args.format, args.out)
    diff = ', '.join(f'{name} {value:.1e}' for name, value in report.max_abs_diff.items())
    print(f'Exported "{report.path}" (described in "{report.description}"); largest '
          f'difference from PyTorch on a batch of {export.CHECK_BATCH}: {diff}')


def main(argv=None):
    args = build_parser().parse_args(argv)
    return run_command(lambda: export_weights(args), args.debug)


if __name__ == '__main__':
    sys.exit(main())
