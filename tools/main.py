#!/usr/bin/env python
"""Train and evaluate ALFO, or a torchreid baseline, with torchreid's loop.

Used like torchreid's ``scripts/main.py``::

    python tools/main.py --config-file configs/alfo_market.yaml --root reid-data
    python tools/main.py --config-file configs/pcb_market.yaml --root reid-data
    python tools/main.py --config-file configs/alfo_market.yaml \\
        test.evaluate True model.load_weights log/alfo_market/model/model.pth.tar-60

Trailing ``KEY VALUE`` pairs override the config. The console shows the
training and test progress and ends with one summary line (Rank-1, mAP, mA,
epochs, time, run folder); the config and torchreid's dataset tables go to the
run's train.log only (``--verbose`` prints them too). Errors in the user's input
(config, data, weights) end with one line and exit status 2; ``--debug``
shows the traceback instead.
"""
import argparse
import sys

import alfo_torchreid.run as run_lib
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=HelpFormatter)
    parser.add_argument('--config-file', type=str, default='', help='path to a yaml config')
    parser.add_argument('--root', type=str, default='', help='root of the datasets')
    parser.add_argument('-s', '--sources', type=str, nargs='+', help='training datasets')
    parser.add_argument('-t', '--targets', type=str, nargs='+', help='test datasets')
    parser.add_argument('--transforms', type=str, nargs='+', help='data augmentation')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')
    parser.add_argument('--verbose', action='store_true',
                        help="also print the config and torchreid's dataset tables (they "
                             'always go to the run\'s train.log)')
    parser.add_argument('opts', default=None, nargs=argparse.REMAINDER,
                        help='KEY VALUE pairs that override the config')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.opts = args.opts or []
    for flag in ('--debug', '--verbose'):  # REMAINDER swallows flags given after the overrides
        if flag in args.opts:
            args.opts.remove(flag)
            setattr(args, flag[2:], True)
    return run_command(
        lambda: run_lib.main(args.config_file, run_lib.command_line_overrides(args) + args.opts,
                             verbose=args.verbose),
        args.debug)


if __name__ == '__main__':
    sys.exit(main())
