#!/usr/bin/env python
"""Predict the re-ID feature and the named attributes of images with a trained ALFO.

    python tools/predict.py --weights log/alfo_market/model/model.pth.tar-60 \\
        photos/ more/0002_c1s1_000451_03.jpg --out predictions

Folders are searched recursively for .jpg/.jpeg/.png/.bmp files. Writes into
--out, row i of each file being the same image: features.npy ([N, D] float32),
index.csv (path and the predicted class of every attribute) and
predictions.jsonl (every attribute's class probabilities), then prints the
predictions of the first images. The config defaults to the run's
config.yaml (beside model/). An unreadable image is skipped with a warning
naming it; the others are written, and the exit status is 2.
"""
import argparse
import logging
import sys

from alfo_torchreid.serving import inference
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument('inputs', nargs='+', help='image files and folders')
    inference.add_model_arguments(parser)
    parser.add_argument('--out', required=True, help='folder for the outputs')
    parser.add_argument('--batch-size', type=int, default=64, help='images per forward pass')
    parser.add_argument('--workers', type=int, default=0, help='image-reading processes')
    parser.add_argument('--show', type=int, default=4, help='images in the printed table')
    return parser


def predict(args):
    images = inference.find_images(args.inputs)
    refuse_writing_over_inputs(inference.prediction_files(args.out),
                               {**inference.model_files(args.weights, args.config),
                                **dict.fromkeys(images, 'the input image')})
    trained = inference.load_trained_alfo(args.weights, args.config, args.trust_checkpoint)
    predictions = inference.predict(trained, images, args.batch_size, args.workers)
    inference.write_predictions(args.out, predictions, trained.schema)
    print(inference.prediction_table(predictions, trained.schema, args.show))
    print(f'{len(predictions.paths)} images, features of {predictions.features.shape[1]} '
          f'dimensions: written to "{args.out}"')
    inference.raise_if_skipped(predictions, args.out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format='warning: %(message)s', level=logging.WARNING)
    return run_command(lambda: predict(args), args.debug)


if __name__ == '__main__':
    sys.exit(main())
