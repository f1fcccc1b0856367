"""The GPU check: everything a lent GPU machine should tell us, in one command.

Sections, each independent (a failure or a time-out is recorded as FAILED, with
its traceback in the log, and the next section runs), each under a time limit,
all under a budget (sections that would start after it are SKIPPED):

1. environment: GPU, driver, torch, CUDA, date;
2. the CUDA tests (``pytest -m cuda tests/engine/test_cuda.py``), their junit summary;
3. throughput: training images/s and peak GPU memory of one engine step of
   torchreid's ``resnet50``, ``pcb_p6`` and ALFO at 256x128 and 224x224, batch 64,
   fp32 / bf16 / bf16 + channels-last (the models of one input and precision
   timed in interleaved rounds; medians), with the ratios of the targets;
4. evaluation at Market scale (3,368 queries x 15,913 gallery images):
   extraction images/s through the engine, distance and ranking time;
5. loader: images/s of the training loader (default transforms, 256x128, batch
   64) on a Market-sized synthetic tree (12,936 JPEGs of 128x64) at
   ``data.workers`` 4, 8 and 16, beside the GPU step's images/s;
6. toy training: ``tools/main.py`` on the toy dataset on the GPU to the end
   (final test, snapshot), then resumed for one more epoch.

``gpu_check.md`` (the report) is rewritten after every section, so a run cut
short keeps what it measured; ``gpu_check.log`` holds everything printed.
``--dry-run`` runs the same code on the CPU at tiny sizes (the CUDA tests skip
themselves); the test suite runs it.

Usage::

    python3 benchmarks/gpu_check.py OUT_DIR [--dry-run] [--budget-s 300] [--sections ...]
"""
import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torchreid

import bench_eval
import bench_scale
from alfo_torchreid import config
from alfo_torchreid.data.toy import make_cameras, make_toy_dataset, render_image, sample_look
from alfo_torchreid.engine.engine import ImageFocalVoteEngine, unwrap
from alfo_torchreid.engine.precision import MixedPrecision
from alfo_torchreid.evaluation.metrics import evaluate_rank
from alfo_torchreid.utils.errors import TrainingError

REPO = Path(__file__).resolve().parents[1]
MARKET_TRAIN = (751, 12936)  # Market-1501's training identities and images
MARKET_TEST = bench_eval.MARKET  # (3368 queries, 15913 gallery images)

# (name, train.amp, channels-last) of the throughput table
PRECISIONS = [('fp32', 'off', False), ('bf16', 'bf16', False), ('bf16+CL', 'bf16', True)]
MODELS = ['resnet50', 'pcb_p6', 'alfo']

# What each section runs at, on the GPU and in the dry run (CPU, seconds in all).
FULL = SimpleNamespace(
    mode='full', budget_s=290, batch=64, sizes=[(256, 128), (224, 224)], precisions=PRECISIONS,
    warmup=3, rounds=3, steps=5,
    eval_counts=MARKET_TEST, eval_batch=100, train_tree=MARKET_TRAIN, workers=[4, 8, 16],
    loader_batches=50, toy=dict(), toy_epochs=2, toy_opts=[],
    limits={'environment': 30, 'cuda-tests': 170, 'throughput': 75, 'evaluation': 40,
            'loader': 45, 'toy-training': 50})
# The dry run's limits only catch a hang: a shared CPU may be many times slower. Its
# batch is 4: resnet50's bf16 step on 2 images of 96x32 (a 3x1 map) gave NaN 1 time in 8.
DRY = SimpleNamespace(
    mode='dry run (CPU, tiny sizes)', budget_s=3600, batch=4, sizes=[(96, 32)],
    precisions=[PRECISIONS[0], PRECISIONS[2]], warmup=1, rounds=1, steps=1, eval_counts=(8, 24),
    eval_batch=25, train_tree=(8, 64), workers=[1, 2],
    loader_batches=3,
    toy=dict(num_train_ids=8, num_test_ids=8, images_per_id=4, queries_per_id=2,
             cams_per_id=3, num_distractor_images=4, num_junk_images=3),
    toy_epochs=1, toy_opts=['train.batch_size', '16', 'test.batch_size', '64',
                            'data.height', '96', 'data.width', '32'],
    limits={'environment': 60, 'throughput': 600, 'evaluation': 600, 'loader': 600,
            'toy-training': 600, 'cuda-tests': 600})


class SectionTimeout(Exception):
    """A section ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds):
    """Raises :class:`SectionTimeout` in the block after ``seconds`` (SIGALRM:
    a long CUDA call or C loop is interrupted when it returns)."""
    def expire(signum, frame):
        raise SectionTimeout(f'time limit of {seconds:.0f} s reached')

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Report:
    """``gpu_check.md``: one part per section, the file rewritten at each change."""

    def __init__(self, path, header):
        self.path, self.header, self.parts = Path(path), header, {}

    def add(self, title, status, seconds, body):
        """Writes (or replaces) the part of section ``title``."""
        self.parts[title] = f'## {title}: {status} ({seconds:.0f} s)\n\n{body.strip()}\n'
        self.path.write_text('\n'.join([self.header, *self.parts.values()]))


class Tee:
    """A text stream writing to the console and to the log file, flushed at once."""

    def __init__(self, console, log):
        self.console, self.log = console, log

    def write(self, text):
        self.console.write(text)
        self.log.write(text)
        self.flush()

    def flush(self):
        self.console.flush()
        self.log.flush()

    def isatty(self):
        return False


def say(text):
    print(f'[gpu_check {time.strftime("%H:%M:%S")}] {text}', flush=True)


def table(header, rows):
    """Markdown table of ``header`` (list of str) and ``rows`` (lists of values)."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(v) for v in row) + ' |' for row in rows]
    return '\n'.join(lines)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def run_logged(command, timeout, cwd=REPO):
    """Runs ``command`` with its output streamed into this process's log;
    kills its whole process group at ``timeout`` seconds (None: none) or at
    the section's time limit.

    Returns:
        (exit status, or None when killed; the output's last 4,000 characters).
    """
    env = dict(os.environ, PYTHONUNBUFFERED='1',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get('PYTHONPATH')])))
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    tail = []

    def pump():
        for line in proc.stdout:
            sys.stdout.write('    ' + line)
            tail.append(line)
            del tail[:-200]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, SectionTimeout):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = None
    reader.join(timeout=5)
    return status, ''.join(tail)[-4000:]


# -- 1. environment ---------------------------------------------------------

def environment(settings, device, out):
    rows = [('date (UTC)', datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')),
            ('mode', settings.mode),
            ('python', platform.python_version()), ('torch', torch.__version__),
            ('torch CUDA / cuDNN', f'{torch.version.cuda} / {torch.backends.cudnn.version()}'),
            ('torchreid', getattr(torchreid, '__version__', '?')),
            ('CPU cores', os.cpu_count())]
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(0)
        rows += [('GPU', f'{props.name}, {props.total_memory / 2**30:.0f} GiB, '
                         f'{torch.cuda.device_count()} visible'),
                 ('nvidia-smi', nvidia_smi())]
    try:
        import onnxruntime
        rows.append(('onnxruntime providers', ', '.join(onnxruntime.get_available_providers())))
    except ImportError:
        rows.append(('onnxruntime', 'absent'))
    return table(['what', 'value'], rows)


def nvidia_smi():
    """GPU name, driver and memory as nvidia-smi reports them (or why not)."""
    try:
        return subprocess.run(['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
                               '--format=csv,noheader'], capture_output=True, text=True,
                              timeout=20).stdout.strip().replace('\n', '; ')
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f'unavailable ({exc})'


# -- 3. throughput ---------------------------------------------------------

class Autocast(torch.nn.Module):
    """``module`` with its forward pass under ``precision``'s autocast, as ALFO's
    engine runs its model: how the baselines (whose engines train in fp32) are
    timed in bf16. Backward and the optimizer's step stay outside, as in ALFO's."""

    def __init__(self, module, precision):
        super().__init__()
        self.module, self.precision = module, precision

    def forward(self, *args):
        with self.precision.autocast():
            return self.module(*args)


def build_engine(name, amp, channels_last, device):
    """bench_scale's engine of model ``name``; a baseline's model under autocast."""
    engine = bench_scale.build_engine(name, amp, channels_last, device)
    if not isinstance(engine, ImageFocalVoteEngine):
        engine.model = Autocast(engine.model, MixedPrecision(amp, device.type == 'cuda'))
    return engine


def step_rate(engine, batch, steps, device):
    """Images/s of ``steps`` engine steps; NaN when a step's loss was not finite
    (the engine refuses it; the table shows nan and the log the message)."""
    try:
        seconds = bench_scale.timed_steps(engine, batch, steps, device)
    except TrainingError as exc:
        say(f'{type(unwrap(engine.model)).__name__}: {exc}')
        return float('nan')
    return len(batch['img']) * steps / seconds


def measure_group(size, precision, settings, device):
    """{model: (median images/s, peak MiB)} of the three models at one input and precision."""
    _, amp, channels_last = precision
    batch = bench_scale.random_batch(settings.batch, *size)
    if device.type == 'cuda':
        batch = {k: v.pin_memory() for k, v in batch.items()}
    engines, peaks = {}, {}
    for name in MODELS:
        synchronize(device)
        before = torch.cuda.memory_allocated() if device.type == 'cuda' else 0
        engines[name] = build_engine(name, amp, channels_last, device)
        step_rate(engines[name], batch, settings.warmup, device)
        peaks[name] = step_peak_mib(engines[name], batch, before, device)
    rates = {name: [] for name in MODELS}
    for _ in range(settings.rounds):
        for name, engine in engines.items():
            rates[name].append(step_rate(engine, batch, settings.steps, device))
    return {name: (statistics.median(rates[name]), peaks[name]) for name in MODELS}


def step_peak_mib(engine, batch, before, device):
    """Peak GPU memory (MiB) of one step after the warm-up (not cuDNN's trials of
    algorithms), less ``before``: weights, gradients, Adam's state, activations,
    the chosen algorithms' workspaces. None on the CPU (not measured)."""
    if device.type != 'cuda':
        return None
    torch.cuda.reset_peak_memory_stats()
    step_rate(engine, batch, 1, device)
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def throughput(settings, device, out):
    torch.backends.cudnn.benchmark = True  # as tools/main.py on a GPU (run.seed_everything)
    torch.manual_seed(0)
    measured = settings.measured_steps = {}  # the loader section compares against it
    for size in settings.sizes:
        for precision in settings.precisions:
            say(f'throughput {size[0]}x{size[1]} {precision[0]}')
            measured[size, precision[0]] = measure_group(size, precision, settings, device)
            settings.partial = throughput_tables(measured, settings)
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    return throughput_tables(measured, settings)


def rate_text(rate):
    """Images/s to show: whole numbers, or 3 significant digits below 100."""
    return f'{rate:,.0f}' if rate >= 100 else f'{rate:.3g}'


def memory_ratio(alfo, pcb):
    """[ratio, met] of ALFO's peak memory to pcb_p6's (None: not measured)."""
    if alfo is None or pcb is None:
        return ['-', '-']
    return [f'{alfo / pcb:.3f}', 'yes' if alfo / pcb <= 1.01 else 'NO']


def throughput_tables(measured, settings):
    rows, ratios = [], []
    for (size, name), cases in measured.items():
        size_text = f'{size[0]}x{size[1]}'
        for model, (rate, peak) in cases.items():
            rows.append([size_text, name, model, rate_text(rate),
                         '-' if peak is None else f'{peak:.0f}'])
        step = cases['pcb_p6'][0] / cases['alfo'][0]  # time ratio = inverse rate ratio
        ratios.append([size_text, name, f'{step:.3f}', 'yes' if step <= 1.02 else 'NO',
                       *memory_ratio(cases['alfo'][1], cases['pcb_p6'][1])])
    speedups = []
    for size in settings.sizes:
        if (size, 'fp32') not in measured or (size, 'bf16+CL') not in measured:
            continue
        gain = measured[size, 'bf16+CL']['alfo'][0] / measured[size, 'fp32']['alfo'][0]
        speedups.append([f'{size[0]}x{size[1]}', f'{gain:.2f}', 'yes' if gain >= 2 else 'NO'])
    return '\n\n'.join([
        f'batch {settings.batch}; median of {settings.rounds} rounds of {settings.steps} '
        f'steps after {settings.warmup} warm-up steps; peak = max_memory_allocated '
        'during one step after the warm-up, less what was allocated before the model was '
        'built; nan: a step\'s loss was not finite (see the log)',
        table(['input', 'precision', 'model', 'images/s', 'peak MiB'], rows),
        table(['input', 'precision', 'step ALFO / pcb_p6', '<= 1.02', 'memory ALFO / pcb_p6',
               '<= 1.01'], ratios),
        table(['input', 'ALFO bf16+CL / fp32 images/s', '>= 2'], speedups)])


# -- 4. evaluation at Market scale -----------------------------------------

class PoolImages(torch.utils.data.Dataset):
    """``count`` evaluation samples cycling through a pool of 64 random images
    (no decoding: what is timed is the engine's extraction)."""

    def __init__(self, count, height, width):
        self.count = count
        self.pool = torch.randn(64, 3, height, width, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return {'img': self.pool[index % len(self.pool)], 'pid': index, 'camid': 0}


def evaluation(settings, device, out):
    num_q, num_g = settings.eval_counts
    engine = bench_scale.build_engine('alfo', 'off', False, device)
    engine.model.eval()
    loaders = {name: torch.utils.data.DataLoader(
        PoolImages(count, *settings.sizes[0]), batch_size=settings.eval_batch,
        pin_memory=device.type == 'cuda') for name, count in (('query', num_q), ('gallery', num_g))}
    extracted, rows = {}, []
    with torch.no_grad():
        engine.extract(loaders['query'], 'warm-up query')
        for name, loader in loaders.items():
            synchronize(device)
            start = time.perf_counter()
            extracted[name] = engine.extract(loader, name)
            seconds = time.perf_counter() - start
            rows.append([f'extraction, {name} ({len(loader.dataset):,} images)',
                         f'{seconds:.2f}', f'{rate_text(len(loader.dataset) / seconds)} images/s'])
    rows += ranking_rows(extracted['query'].features, extracted['gallery'].features, device)
    height, width = settings.sizes[0]
    return (f'ALFO ({height}x{width}, fp32, eval batch {settings.eval_batch}, global feature '
            '+ attribute probabilities, as Engine.test; synthetic images from memory, so no '
            'decoding, but the batches are collated and copied as from a loader); Market-like '
            'identities for the ranking (benchmarks/bench_eval.py)\n\n'
            + table(['step', 'seconds', 'rate'], rows))


def ranking_rows(qf, gf, device):
    """Seconds of the distances (the engine's: CPU; and on the GPU) and of the ranking."""
    _, q_pids, g_pids, q_camids, g_camids = bench_eval.market_like_problem(len(qf), len(gf))
    rows = []
    start = time.perf_counter()
    distmat = torchreid.metrics.compute_distance_matrix(qf, gf).numpy()
    rows.append([f'distances {len(qf):,} x {len(gf):,} x {qf.shape[1]} (CPU, as the engine)',
                 f'{time.perf_counter() - start:.2f}', ''])
    if device.type == 'cuda':
        synchronize(device)
        start = time.perf_counter()
        torchreid.metrics.compute_distance_matrix(qf.cuda(), gf.cuda()).cpu()
        rows.append(['distances on the GPU (copies included)',
                     f'{time.perf_counter() - start:.2f}', ''])
    start = time.perf_counter()
    evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    rows.append(['ranking (CMC + mAP, alfo evaluator)', f'{time.perf_counter() - start:.2f}', ''])
    return rows


# -- 5. the data loader ----------------------------------------------------

def write_images(job):
    """Writes the training images of the identities ``job = (folder, pids, seed, per_id)``."""
    folder, pids, seed, per_id = job
    rng = np.random.default_rng(seed)
    cameras = make_cameras(rng, 6)
    for pid in pids:
        look = sample_look(rng, 'market1501')
        for k in range(per_id[pid]):
            cam = 1 + (pid + k) % 6
            render_image(look, cameras[cam - 1], rng, 128, 64).save(
                Path(folder) / f'{pid:04d}_c{cam}s1_{10 * k + 1:06d}_00.jpg', quality=92)


def write_market_tree(root, num_ids, num_images):
    """A Market-1501 tree under ``root`` with ``num_images`` training images of
    ``num_ids`` identities (and one query and one gallery image), in parallel."""
    data = Path(root) / 'market1501' / 'Market-1501-v15.09.15'
    folders = [data / f for f in ('bounding_box_train', 'query', 'bounding_box_test')]
    for folder in folders:
        folder.mkdir(parents=True)
    pids = list(range(1, num_ids + 1))
    per_id = {p: num_images // num_ids + (i < num_images % num_ids) for i, p in enumerate(pids)}
    jobs = [(folders[0], pids[i::32], i, per_id) for i in range(32)]
    jobs += [(folder, [1501], 99 + i, {1501: 1}) for i, folder in enumerate(folders[1:])]
    with Pool(min(os.cpu_count(), 32)) as pool:
        pool.map(write_images, jobs)


def loader_rate(root, workers, settings, device):
    """Images/s of the training loader of configs/resnet50_market.yaml's data
    settings (transforms, 256x128) with ``workers`` processes, batch
    ``settings.batch``, over ``settings.loader_batches`` batches after the first."""
    cfg = config.load_config(str(REPO / 'configs' / 'resnet50_market.yaml'), [
        'data.root', str(root), 'data.sources', "['market1501']", 'data.targets',
        "['market1501']", 'data.workers', str(workers), 'train.batch_size', str(settings.batch),
        'use_gpu', str(device.type == 'cuda')])
    with contextlib.redirect_stdout(sys.stderr):
        manager = torchreid.data.ImageDataManager(**config.imagedata_kwargs(cfg))
    batches = iter(manager.train_loader)
    next(batches)  # the workers' start
    start = time.perf_counter()
    for _ in range(settings.loader_batches):
        next(batches)
    rate = settings.batch * settings.loader_batches / (time.perf_counter() - start)
    del batches
    return rate


def loader(settings, device, out):
    with tempfile.TemporaryDirectory(prefix='gpu-check-market-') as root:
        start = time.perf_counter()
        write_market_tree(root, *settings.train_tree)
        say(f'wrote {settings.train_tree[1]:,} images in {time.perf_counter() - start:.1f} s')
        rates = {}
        for workers in settings.workers:
            rates[workers] = loader_rate(root, workers, settings, device)
            say(f'loader, {workers} workers: {rates[workers]:.0f} images/s')
            settings.partial = table(['workers', 'images/s'],
                                     [[w, rate_text(r)] for w, r in rates.items()])
    steps = getattr(settings, 'measured_steps', {})
    size = settings.sizes[0]
    gpu = {name: steps[size, name]['alfo'][0] for name in ('fp32', 'bf16+CL')
           if (size, name) in steps}
    rows = [[w, rate_text(r)] + [f'{r / g:.2f}' for g in gpu.values()] for w, r in rates.items()]
    return (f'{settings.train_tree[1]:,} JPEGs of 128x64 ({settings.train_tree[0]} ids), '
            f'configs/resnet50_market.yaml\'s loader (random flip, resize to 256x128, '
            f'normalise), batch {settings.batch}, {settings.loader_batches} batches after the '
            f'first; GPU step of ALFO at {size[0]}x{size[1]} (throughput section): '
            + (', '.join(f'{n} {rate_text(g)} images/s' for n, g in gpu.items())
               or 'not measured')
            + '\n\n' + table(['workers', 'images/s'] + [f'loader / ALFO {n} step'
                                                        for n in gpu], rows))


# -- 6. toy training ---------------------------------------------------------

def toy_training(settings, device, out):
    """The toy run in a temporary folder (its checkpoints take hundreds of MB);
    its metrics, history and log are copied to ``out/toy_run``."""
    with tempfile.TemporaryDirectory(prefix='gpu-check-toy-') as root:
        make_toy_dataset(root, 'market1501', **settings.toy)
        folder = Path(root) / 'run'
        common = [sys.executable, 'tools/main.py', '--config-file', 'configs/alfo_toy.yaml',
                  '--root', root, 'data.save_dir', str(folder),
                  'use_gpu', str(device.type == 'cuda'), *settings.toy_opts]
        epochs = settings.toy_epochs
        rows = []
        for last, resume in ((epochs, []), (epochs + 1, ['train.resume', 'True'])):
            start = time.perf_counter()
            status, tail = run_logged([*common, 'train.max_epoch', str(last), *resume], None)
            rows.append([f'to epoch {last}' + (' (resumed)' if resume else ''), status,
                         f'{time.perf_counter() - start:.1f}'])
            if status != 0:
                raise RuntimeError(f'tools/main.py exited with {status}:\n{tail}')
        results = checked_toy_run(folder, epochs + 1)
        kept = Path(out) / 'toy_run'
        kept.mkdir(exist_ok=True)
        for name in ('metrics.json', 'history.jsonl', 'train.log', 'config.yaml'):
            shutil.copy(folder / name, kept / name)
    return table(['run', 'exit status', 'seconds'], rows) + '\n\n' + results


def checked_toy_run(folder, epochs):
    """The final results of the toy run in ``folder``, after checking its files."""
    metrics = json.loads((folder / 'metrics.json').read_text())
    history = (folder / 'history.jsonl').read_text().splitlines()
    missing = [name for name in (f'model.pth.tar-{epochs}', 'latest.pth.tar')
               if not (folder / 'model' / name).is_file()]
    if len(history) != epochs or metrics['epochs'] != epochs or missing:
        raise RuntimeError(f'toy run incomplete: {len(history)} history lines, metrics of '
                           f'epoch {metrics["epochs"]}, missing {missing}')
    result = metrics['results']['market1501_attr']
    return (f'final test after epoch {epochs}: Rank-1 {result["rank1"]:.1%}, mAP '
            f'{result["mAP"]:.1%}, attribute mA {result["attributes"]["mA"]:.1%}; '
            f'snapshot model.pth.tar-{epochs}, {len(history)} history lines')


# -- 2. the CUDA tests (run second, after the environment) ------------------

def cuda_tests(settings, device, out):
    junit = Path(out) / 'cuda_tests.xml'
    # -v: a test per line, so a run cut short shows how far it got
    status, tail = run_logged([sys.executable, '-m', 'pytest', '-m', 'cuda', '-v', '-rs',
                               '--tb=short', '--durations=10', '-p', 'no:cacheprovider',
                               f'--junitxml={junit}', 'tests/engine/test_cuda.py'], None)
    if status is None:
        raise SectionTimeout(f'pytest killed at its time limit; output:\n{tail}')
    body = junit_summary(junit) if junit.is_file() else f'no junit report; output:\n{tail}'
    if status not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f'pytest exited with {status}\n\n{body}')
    return body


def junit_summary(path):
    """Counts and the non-passing tests of a junit XML file, as markdown."""
    suite = ElementTree.parse(path).getroot()
    suite = suite.find('testsuite') if suite.tag == 'testsuites' else suite
    counts = {k: int(suite.get(k, 0)) for k in ('tests', 'failures', 'errors', 'skipped')}
    lines = [', '.join(f'{v} {k}' for k, v in counts.items())
             + f', {float(suite.get("time", 0)):.0f} s', '']
    for case in suite.iter('testcase'):
        for kind in ('failure', 'error', 'skipped'):
            found = case.find(kind)
            if found is not None:
                message = ' '.join((found.get('message') or '').split())[:300]
                lines.append(f'- {kind.upper()} `{case.get("name")}`: {message}')
    return '\n'.join(lines)


SECTIONS = {'environment': environment, 'cuda-tests': cuda_tests, 'throughput': throughput,
            'evaluation': evaluation, 'loader': loader, 'toy-training': toy_training}


def run_sections(names, settings, device, out, budget_s):
    """Runs the sections ``names`` in order into ``out/gpu_check.md``; returns
    the number that did not pass."""
    report = Report(Path(out) / 'gpu_check.md',
                    f'# GPU check\n\n`python3 benchmarks/gpu_check.py {" ".join(sys.argv[1:])}`'
                    f'; full output in gpu_check.log\n')
    started, failed = time.perf_counter(), 0
    for name in names:
        left = budget_s - (time.perf_counter() - started)
        if left < 10:
            report.add(name, 'SKIPPED', 0, f'the budget of {budget_s} s was spent')
            failed += 1
            continue
        say(f'section "{name}" (limit {min(settings.limits[name], left):.0f} s)')
        start, settings.partial = time.perf_counter(), ''
        report.add(name, 'RUNNING', 0, 'started; if this stays, the check was stopped here')
        try:
            with time_limit(min(settings.limits[name], left)):
                body, status = SECTIONS[name](settings, device, out), 'ok'
        except Exception as exc:  # recorded; the next section runs
            traceback.print_exc()
            body, status = f'```\n{type(exc).__name__}: {exc}\n```'[:6000], 'FAILED'
            if settings.partial:
                body = f'measured before the failure:\n\n{settings.partial}\n\n{body}'
            failed += 1
        report.add(name, status, time.perf_counter() - start, body)
        say(f'section "{name}": {status}')
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out', help='folder for gpu_check.md and gpu_check.log')
    parser.add_argument('--dry-run', action='store_true',
                        help='on the CPU at tiny sizes (CUDA tests skipped)')
    parser.add_argument('--budget-s', type=float,
                        help='sections that would start later are skipped (default: 300 s; '
                             'dry run 3600 s)')
    parser.add_argument('--sections', nargs='+', choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    device = torch.device('cpu' if args.dry_run or not torch.cuda.is_available() else 'cuda')
    if args.dry_run:
        # one thread per process, subprocesses too: on a shared, busy CPU, OpenMP's
        # threads wait for each other at every layer (a step 40x slower, measured)
        torch.set_num_threads(1)
        os.environ['OMP_NUM_THREADS'] = '1'
    os.makedirs(args.out, exist_ok=True)
    with open(Path(args.out) / 'gpu_check.log', 'a') as log, \
            contextlib.redirect_stdout(Tee(sys.__stdout__, log)), \
            contextlib.redirect_stderr(Tee(sys.__stderr__, log)):
        if device.type == 'cpu' and not args.dry_run:
            say('no CUDA device: running on the CPU at full size (use --dry-run for tiny sizes)')
        settings = copy.deepcopy(DRY if args.dry_run else FULL)
        failed = run_sections(args.sections, settings, device, args.out,
                              args.budget_s or settings.budget_s)
        say(f'done: {len(args.sections) - failed} of {len(args.sections)} sections ok; '
            f'report in {Path(args.out) / "gpu_check.md"}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
