#!/usr/bin/env python
"""Writes the manifest of a tree in Market-1501's layout: a starting point for
training ALFO on one's own data (README, "Your own data").

    python tools/make_manifest.py my-data/images --out my-data/manifest.csv
    python tools/make_manifest.py reid-data/market1501/Market-1501-v15.09.15 \\
        --out reid-data/market_manifest.csv --attributes reid-data/market1501/market_attribute.mat

The folder holds ``bounding_box_train``, ``query`` and ``bounding_box_test``
with images named ``<pid>_c<camera>...jpg``. Without ``--attributes`` the
manifest has no attribute columns: add one per attribute of your schema, or
give labels per identity in a second CSV (data.custom.identity_attributes).
"""
import argparse
import os.path as osp
import sys

from alfo_torchreid.data.attributes import load_attribute_file
from alfo_torchreid.data.manifest import market_layout_rows, write_manifest
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import DatasetError, run_command


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument('data_dir', help='folder holding bounding_box_train, query, '
                                         'bounding_box_test')
    parser.add_argument('--out', required=True, help='the manifest CSV to write')
    parser.add_argument('--attributes', default=None,
                        help='an annotation .mat of Market-1501_attribute or '
                             'DukeMTMC-attribute: writes its labels as class names')
    parser.add_argument('--force', action='store_true',
                        help='replace --out if it exists (it may hold labels written by hand)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    def make():
        if osp.exists(args.out) and not args.force:
            raise DatasetError(f'manifest "{args.out}" exists (it may hold labels written by '
                               'hand); pass --force to replace it')
        annotation = load_attribute_file(args.attributes) if args.attributes else None
        header, rows = market_layout_rows(args.data_dir, osp.dirname(osp.abspath(args.out)),
                                          annotation)
        write_manifest(args.out, header, rows)
        print(f'{len(rows)} images, {len(header) - 4} attribute columns written to "{args.out}"')

    return run_command(make)


if __name__ == '__main__':
    sys.exit(main())
