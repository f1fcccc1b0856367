#!/usr/bin/env python
"""Soak test of resume: SIGKILL training runs at random moments, resume each,
and compare its end with an uninterrupted run.

Not a speed benchmark: it counts kills survived. On the toy tree at ``--root``
(``tools/make_toy_dataset.py`` defaults, written if absent) it trains
``configs/alfo_toy.yaml`` deterministically for ``--epochs`` epochs once
without interruption (T seconds, interpreter start included). Then, ``--kills``
times, it starts the same run in a fresh folder, kills the process (SIGKILL: no
chance to clean up) after a random 0.25 T to 0.95 T — during start-up, a step,
a checkpoint write or the final test alike — and runs it again with
``train.resume True``. The resumed run must end with status 0 and equal the
uninterrupted one: the same checkpoint files (latest and snapshots) with every
tensor bit for bit, the same history and the same metrics.

Usage::

    python benchmarks/kill_resume.py [--kills 10] [--epochs 4] [--seed 0] [--root R] [--out DIR]

Prints one line per kill and a summary, and writes them to
``benchmarks/results/kill_resume.json``.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import torch

from alfo_torchreid.reproduce import ensure_toy_dataset
from alfo_torchreid.utils import checkpoints
from alfo_torchreid.utils.run_folder import read_history

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(root, save_dir, epochs, *extra):
    return [sys.executable, os.path.join(REPO, 'tools', 'main.py'), '--config-file',
            os.path.join(REPO, 'configs', 'alfo_toy.yaml'), '--root', root,
            'train.max_epoch', str(epochs), 'train.deterministic', 'True', 'train.stepsize', '[2]',
            'data.save_dir', save_dir, *extra]


def run_end(save_dir):
    """What a finished run left: the names of its checkpoint files, their state
    dicts, its history (without the epochs' wall times) and its metrics."""
    names = sorted(os.listdir(os.path.join(save_dir, 'model')))
    with open(os.path.join(save_dir, 'history.jsonl')) as f:
        history = [{k: v for k, v in json.loads(line).items() if k != 'epoch_time'}
                   for line in f]
    with open(os.path.join(save_dir, 'metrics.json')) as f:
        results = json.load(f)['results']
    return {'files': names, 'history': history, 'results': results,
            'tensors': {name: checkpoints.load_checkpoint(
                os.path.join(save_dir, 'model', name))['state_dict'] for name in names}}


def differing_checkpoints(a, b):
    """What differs between the checkpoints of two run ends (:func:`run_end`): a
    file only one has, or ``file:tensor`` for a tensor that is not bit for bit
    the same."""
    if a['files'] != b['files']:
        return [f'files {a["files"]} != {b["files"]}']
    return [f'{name}:{t}' for name in a['files'] for t in a['tensors'][name]
            if not torch.equal(a['tensors'][name][t], b['tensors'][name][t])]


def trial(args, folder, whole, delay):
    """Starts a run in ``folder``, SIGKILLs it after ``delay`` seconds, resumes
    it to its end; returns what was on disk and whether the end equals
    ``whole``, the uninterrupted run's :func:`run_end`."""
    proc = subprocess.Popen(command(args.root, folder, args.epochs),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        killed = False  # it ended first
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        killed = True
    on_disk = len(read_history(folder))
    resumed = subprocess.run(command(args.root, folder, args.epochs, 'train.resume', 'True'),
                             capture_output=True, text=True)
    end = run_end(folder) if resumed.returncode == 0 else None
    differing = differing_checkpoints(whole, end) if end else ['(not finished)']
    result = {
        'delay_s': round(delay, 1), 'killed': killed, 'epochs_on_disk_at_kill': on_disk,
        'final_status': resumed.returncode, 'stderr_tail': resumed.stderr[-300:],
        'differing_tensors': differing,
        'identical': not differing and whole['history'] == end['history']
        and whole['results'] == end['results'],
    }
    print(f'killed after {delay:.1f} s with {on_disk} of {args.epochs} epochs on disk: '
          f'resume ended with status {resumed.returncode}, '
          f'{"identical" if result["identical"] else "DIFFERENT"}')
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--kills', type=int, default=10)
    parser.add_argument('--epochs', type=int, default=4)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--root', default='toy-data')
    parser.add_argument('--out', default='log/kill_resume')
    parser.add_argument('--json', default=os.path.join(REPO, 'benchmarks', 'results',
                                                       'kill_resume.json'))
    args = parser.parse_args()
    ensure_toy_dataset(args.root, 'market1501')
    if os.path.exists(args.out):
        sys.exit(f'error: "{args.out}" exists: give another --out')
    whole, killed = os.path.join(args.out, 'whole'), os.path.join(args.out, 'killed')

    start = time.time()
    subprocess.run(command(args.root, whole, args.epochs), check=True, capture_output=True)
    seconds = time.time() - start
    print(f'uninterrupted run: {seconds:.0f} s')

    draw = random.Random(args.seed)
    reference = run_end(whole)
    trials = [trial(args, killed + f'-{k + 1}', reference, draw.uniform(0.25, 0.95) * seconds)
              for k in range(args.kills)]
    summary = {'kills': len(trials),
               'survived': sum(t['final_status'] == 0 and t['identical'] for t in trials),
               'epochs': args.epochs, 'seed': args.seed, 'uninterrupted_s': seconds,
               'trials': trials}
    print(f'{summary["survived"]} of {summary["kills"]} killed runs resumed to the '
          'uninterrupted run\'s checkpoints, history and metrics')
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, 'w') as f:
        json.dump(summary, f, indent=2)
    return 0 if summary['survived'] == summary['kills'] else 1


if __name__ == '__main__':
    sys.exit(main())
