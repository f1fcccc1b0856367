#!/usr/bin/env python
"""`make demo`: the toy dataset, ALFO and PCB trained on it, and their comparison.

Everything runs on the CPU from files this script writes (no downloads):
toy-data/ (a Market-1501-style tree with its attribute file), log/toy/alfo and
log/toy/pcb (the runs), log/toy/comparison (table and plots).
"""
import os.path as osp
import sys

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.data.toy import make_toy_dataset
from alfo_torchreid.evaluation import report
from alfo_torchreid.utils.errors import run_command

ROOT = 'toy-data'
CONFIGS = ('configs/alfo_toy.yaml', 'configs/pcb_toy.yaml')
OUT = 'log/toy/comparison'


def demo():
    if not osp.isdir(osp.join(ROOT, 'market1501')):
        print(make_toy_dataset(ROOT, 'market1501').summary())
    run_dirs = []
    for config_file in CONFIGS:
        print(f'\n===== {config_file} =====')
        # a second `make demo` continues or reuses the runs of the first
        run_lib.main(config_file, ['data.root', ROOT, 'train.resume', 'True'])
        run_dirs.append(config.load_config(config_file).data.save_dir)
    print('\n===== ALFO vs PCB on the toy dataset =====')
    print(report.write_report(run_dirs, OUT))
    print(f'Report, CMC and attribute plots in "{OUT}"')


if __name__ == '__main__':
    sys.exit(run_command(demo))
