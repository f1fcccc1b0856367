#!/usr/bin/env python
"""Compare finished runs (or run configs first) in one table and two plots.

    python tools/compare.py log/alfo_market log/pcb_market --out log/comparison
    python tools/compare.py --configs configs/alfo_toy.yaml configs/pcb_toy.yaml

Writes comparison.md, comparison.csv, cmc.png and attributes.png into --out
and prints the table.
"""
import argparse
import os.path as osp
import sys

from alfo_torchreid.evaluation import report
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import run_command
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument('runs', nargs='*', help='run folders holding metrics.json')
    parser.add_argument('--configs', nargs='+', default=[],
                        help='config files to run first (tools/main.py), then compare')
    parser.add_argument('--out', default='log/comparison', help='folder for the report')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.runs or args.configs):
        parser.error('give run folders or --configs')
    return run_command(lambda: compare(args.runs, args.configs, args.out), args.debug)


def compare(runs, config_files, out):
    """Runs ``config_files`` (as tools/main.py), then writes the report of
    ``runs`` and those runs into the folder ``out`` and prints its table."""
    runs = list(runs)
    refuse_writing_over_inputs([osp.join(out, name) for name in report.REPORT_FILES],
                               {**{report.metrics_file(r): 'the metrics of a run' for r in runs},
                                **dict.fromkeys(config_files, 'a config (--configs)')})
    report.check_names([report.load_run(r) for r in runs], runs)  # before any training
    if config_files:
        from alfo_torchreid import run as run_lib
        for config_file in config_files:
            runs.append(run_lib.main(config_file).save_dir)
    print(report.write_report(runs, out))
    print(f'Report written to "{out}" (comparison.md, comparison.csv, cmc.png, attributes.png)')


if __name__ == '__main__':
    sys.exit(main())
