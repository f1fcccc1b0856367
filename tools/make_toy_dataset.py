#!/usr/bin/env python
"""Writes the toy Market-1501 / DukeMTMC-reID (see ``alfo_torchreid.data.toy``).

    python tools/make_toy_dataset.py --root reid-data --dataset all

then point torchreid (``data.root``) at ``--root``.
"""
import argparse
import sys

from alfo_torchreid.data.toy import LAYOUTS, make_toy_dataset
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command

# Counts that exist in one of the real sets only.
DATASET_ONLY = {'market1501': ('num_distractor_images', 'num_junk_images'),
                'dukemtmcreid': ('num_distractor_ids',)}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument('--root', default='reid-data', help='folder to write under')
    parser.add_argument('--dataset', default='all', choices=[*LAYOUTS, 'all'],
                        help='the layout to write, or both')
    parser.add_argument('--num-train-ids', type=int, default=40,
                        help='identities of the training split')
    parser.add_argument('--num-test-ids', type=int, default=30,
                        help='identities of the query and gallery splits')
    parser.add_argument('--images-per-id', type=int, default=8,
                        help='images of each identity')
    parser.add_argument('--queries-per-id', type=int, default=2,
                        help='query images per test id, one per camera')
    parser.add_argument('--cams-per-id', type=int, default=3,
                        help='cameras that see each identity')
    parser.add_argument('--num-cams', type=int, default=None,
                        help='default: 6 (Market), 8 (Duke)')
    parser.add_argument('--num-distractor-images', type=int, default=None,
                        help='Market pid-0000 images (default 24)')
    parser.add_argument('--num-junk-images', type=int, default=None,
                        help='Market pid -1 images (default 24)')
    parser.add_argument('--num-distractor-ids', type=int, default=None,
                        help='Duke gallery-only identities (default 10)')
    parser.add_argument('--height', type=int, default=128, help='image height in pixels')
    parser.add_argument('--width', type=int, default=64, help='image width in pixels')
    parser.add_argument('--seed', type=int, default=0, help='random seed of the images and labels')
    return parser


def main(argv=None):
    args = vars(build_parser().parse_args(argv))
    root, which = args.pop('root'), args.pop('dataset')

    def make_all():
        for dataset in (LAYOUTS if which == 'all' else [which]):
            kwargs = dict(args)
            if which == 'all':  # give each dataset only the counts it has
                for other in set(DATASET_ONLY) - {dataset}:
                    for key in DATASET_ONLY[other]:
                        kwargs.pop(key)
            print(make_toy_dataset(root, dataset, **kwargs).summary())

    return run_command(make_all)


if __name__ == '__main__':
    sys.exit(main())
