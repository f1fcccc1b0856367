#!/usr/bin/env python
"""Reproduce the paper's Table 1 and its comparison with PCB and ResNet-50.

    python tools/reproduce.py --dataset market1501 --root reid-data
    python tools/reproduce.py --dataset dukemtmcreid --root reid-data --seeds 1 2 3
    python tools/reproduce.py --dataset market1501 --quick     # toy data, CPU, minutes
    python tools/reproduce.py --dataset market1501 --root reid-data --table strong

Runs local only, global only, no focal loss, ALFO, PCB (pcb_p6) and ResNet-50
(each seed in turn) into <out>/<row>/seed<k>, skipping the runs that have
finished and continuing an interrupted one, then writes reproduction.md and
reproduction.csv into --out: our Rank-1, Rank-5, mAP and attribute mA beside
the paper's figures. --table strong runs instead the strong baseline (BoT's
recipe, resnet50_bnneck), ALFO on it and ALFO on it without the local branch
(configs/strong/), beside BoT's published figures. Trailing KEY VALUE pairs
override every run's config.
Run the same command again to continue an interrupted reproduction.
"""
import argparse
import os.path as osp
import sys

from alfo_torchreid import reproduce
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=HelpFormatter)
    parser.add_argument('--dataset', required=True,
                        help=f'one of {", ".join(reproduce.TARGETS)}')
    parser.add_argument('--root', default='',
                        help="root of the datasets (default: the configs' data.root; "
                             'toy-data, written when absent, with --quick)')
    parser.add_argument('--quick', action='store_true',
                        help='the same runs on the toy dataset, a few minutes on the CPU')
    parser.add_argument('--table', default='paper', choices=sorted(reproduce.TABLE_SETS),
                        help="paper: the paper's Table 1 and comparison; strong: ALFO on "
                             'the strong baseline beside BoT')
    parser.add_argument('--seeds', nargs='+', default=['1'],
                        help='train.seed of each repetition of every run')
    parser.add_argument('--out', default='',
                        help='folder of the runs and tables (default: '
                             'log/reproduce/<dataset>, or <dataset>-quick)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')
    parser.add_argument('opts', nargs=argparse.REMAINDER,
                        help='KEY VALUE pairs that override the config of every run')
    return parser


def split_seeds(values):
    """The leading integers of ``--seeds`` values, and the rest (the first
    ``KEY VALUE`` override, which ``nargs='+'`` also takes)."""
    count = next((i for i, v in enumerate(values) if not v.lstrip('-').isdigit()), len(values))
    return [int(v) for v in values[:count]], values[count:]


def main(argv=None):
    args = build_parser().parse_args(argv)
    seeds, opts = split_seeds(args.seeds)
    opts += args.opts or []
    if '--debug' in opts:  # REMAINDER swallows flags given after the overrides
        opts.remove('--debug')
        args.debug = True
    name = args.dataset + ('' if args.table == 'paper' else f'-{args.table}')
    out = args.out or osp.join('log', 'reproduce', name + ('-quick' if args.quick else ''))

    def action():
        print(reproduce.reproduce(args.dataset, out, args.root, args.quick, seeds, opts,
                                  args.table))
        print(f'Tables written to "{out}" (reproduction.md, reproduction.csv)')

    return run_command(action, args.debug,
                       interrupted='interrupted: the same command continues where it stopped')


if __name__ == '__main__':
    sys.exit(main())
