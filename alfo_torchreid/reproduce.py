"""The paper's tables reproduced: the runs of Table 1 and of the comparison,
then our figures beside the paper's (behind ``tools/reproduce.py``).

Rows and runs: a row is the dataset's config of its model (ALFO, PCB or
ResNet-50) plus the row's overrides (:data:`ROWS`). ALFO is one run shared by
Table 1 and the comparison, so each seed takes six runs for the seven rows.
The runs go seed by seed (all six with the first seed, then all six with the
next), each into ``<out>/<row>/seed<k>`` with ``train.seed k``.

Continuing: a run whose folder holds ``metrics.json`` has finished and is
skipped; every other run starts with ``train.resume True``, so one that was
interrupted continues from its ``model/latest.pth.tar`` (one stopped in its
final test is tested, :func:`alfo_torchreid.run.main`). A finished run keeps
its final weights and drops ``latest.pth.tar``, which nothing resumes any more.
``<out>/configs.json`` records the config of every run: a run that an earlier
invocation started with another config (other overrides, other epochs) is
refused rather than mixed into the tables.

Tables: ``reproduction.md`` and ``reproduction.csv`` in ``<out>``, written
atomically. Table 1 (local only, global only, no focal loss, ALFO) and the
comparison (ALFO, PCB, ResNet-50): Rank-1, Rank-5, mAP and attribute mA in %
(mean and sample standard deviation over the seeds), the paper's Rank-1 and
mAP (:mod:`alfo_torchreid.evaluation.paper`) and our mean minus the paper's figure, all
rounded to 2 decimals.

The strong table (``table='strong'``, :data:`TABLE_SETS`): the strong
baseline (``configs/strong/resnet50_bnneck_*``, BoT's recipe), ALFO on it
(``configs/strong/alfo_*``) and ALFO on it without its local branch, beside
BoT's published figures (:data:`alfo_torchreid.evaluation.paper.STRONG_RESULTS`;
ALFO's rows have none). The runs go into ``<out>/strong_<row>/seed<k>``.

Quick mode: the same runs on the toy dataset (``configs/*_toy.yaml``, the
dataset's attribute set, :data:`QUICK_OVERRIDES`), a smoke test of the
pipeline on the CPU whose figures are not expected to match the paper's.
"""
import datetime
import json
import os
import os.path as osp
import statistics
import time
from pathlib import Path
from typing import NamedTuple, Tuple

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.data.toy import LAYOUTS, make_toy_dataset
from alfo_torchreid.evaluation import paper, report
from alfo_torchreid.utils.atomic import write_file
from alfo_torchreid.utils.checkpoints import LATEST
from alfo_torchreid.utils.errors import AlfoError, ConfigError
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs'
# the attribute version of each dataset, which every run trains and tests on
TARGETS = {'market1501': 'market1501_attr', 'dukemtmcreid': 'dukemtmcreid_attr'}
# config file of each model, per dataset and for quick mode
CONFIGS = {
    'market1501': {'alfo': 'alfo_market.yaml', 'pcb': 'pcb_market.yaml',
                   'resnet50': 'resnet50_market.yaml'},
    'dukemtmcreid': {'alfo': 'alfo_duke.yaml', 'pcb': 'pcb_duke.yaml',
                     'resnet50': 'resnet50_duke.yaml'},
    'quick': {'alfo': 'alfo_toy.yaml', 'pcb': 'pcb_toy.yaml', 'resnet50': 'resnet50_toy.yaml'},
}
# quick mode: one epoch per run, the least that trains and tests every run
QUICK_OVERRIDES = ('train.max_epoch', '1')


class Row(NamedTuple):
    """A row of the tables: which model's config, changed by which ``KEY VALUE`` pairs."""
    model: str
    overrides: Tuple[str, ...] = ()


# keys are those of alfo_torchreid.evaluation.paper.RESULTS (labels and the paper's figures)
ROWS = {
    'local_only': Row('alfo', ('alfo.global_branch', 'False', 'alfo.feature', 'local')),
    'global_only': Row('alfo', ('alfo.local_branch', 'False')),
    'no_focal': Row('alfo', ('alfo.focal', 'False')),
    'alfo': Row('alfo'),
    'pcb': Row('pcb'),
    'resnet50': Row('resnet50'),
}
# (key, title, rows) of each table
TABLES = (
    ('table1', 'Table 1: the ablations', ('local_only', 'global_only', 'no_focal', 'alfo')),
    ('comparison', 'Comparison (the paper\'s Table 2; ResNet-50 from torchreid\'s model zoo)',
     ('alfo', 'pcb', 'resnet50')),
)

# tools/reproduce.py --table strong: ALFO on the strong baseline (docs/method.md)
STRONG_CONFIGS = {
    'market1501': {'alfo': 'strong/alfo_market.yaml',
                   'resnet50_bnneck': 'strong/resnet50_bnneck_market.yaml'},
    'dukemtmcreid': {'alfo': 'strong/alfo_duke.yaml',
                     'resnet50_bnneck': 'strong/resnet50_bnneck_duke.yaml'},
    'quick': {'alfo': 'strong/alfo_toy.yaml',
              'resnet50_bnneck': 'strong/resnet50_bnneck_toy.yaml'},
}
STRONG_ROWS = {
    'strong_baseline': Row('resnet50_bnneck'),
    'strong_alfo': Row('alfo'),
    'strong_global_only': Row('alfo', ('alfo.local_branch', 'False')),
}
STRONG_TABLES = (
    ('strong', 'ALFO on the strong baseline (BoT, Luo et al. 2019)',
     ('strong_baseline', 'strong_alfo', 'strong_global_only')),
)


class TableSet(NamedTuple):
    """What one ``--table`` runs and writes: config files per dataset
    (:data:`CONFIGS`' form), rows, tables ((key, title, rows) each) and the
    published figures of each row."""
    configs: dict
    rows: dict
    tables: tuple
    figures: dict
    title: str

    @property
    def run_order(self):
        return tuple(dict.fromkeys(name for _, _, names in self.tables for name in names))


TABLE_SETS = {
    'paper': TableSet(CONFIGS, ROWS, TABLES, paper.RESULTS, "The paper's tables reproduced"),
    'strong': TableSet(STRONG_CONFIGS, STRONG_ROWS, STRONG_TABLES, paper.STRONG_RESULTS,
                       'ALFO on the strong baseline'),
}
# config keys the tool sets for every run, and the option that sets them instead
OWN_KEYS = {'data.root': '--root', 'data.save_dir': '--out', 'data.sources': '--dataset',
            'data.targets': '--dataset', 'train.seed': '--seeds', 'train.resume': None}
# the config of every run, as the first invocation into <out> recorded it
CONFIGS_RECORD = 'configs.json'
TABLE_FILES = ('reproduction.md', 'reproduction.csv')
# keys that may differ between the invocations that continue one reproduction
FREE_KEYS = {'use_gpu', 'data.root', 'data.workers', 'data.save_dir'}
METRIC_KEYS = ('rank1', 'rank5', 'mAP', 'attr_mA')
CSV_COLUMNS = ('table', 'row', 'seeds', 'rank1', 'rank1_std', 'rank5', 'rank5_std', 'mAP',
               'mAP_std', 'attr_mA', 'attr_mA_std', 'paper_rank1', 'paper_mAP', 'delta_rank1',
               'delta_mAP', 'paper_source')
MD_COLUMNS = ('row', 'Rank-1', 'Rank-5', 'mAP', 'attr mA', 'paper Rank-1', 'paper mAP',
              'ΔRank-1', 'ΔmAP', 'paper source')


class Run(NamedTuple):
    """One training and evaluation: ``run.main(config_file, opts)`` into ``save_dir``."""
    row: str
    seed: int
    config_file: str
    opts: Tuple[str, ...]
    save_dir: str


def reproduce(dataset, out, root='', quick=False, seeds=(1,), opts=(), table='paper'):
    """Runs what is missing of the reproduction, then writes and returns its tables.

    Args:
        dataset: ``'market1501'`` or ``'dukemtmcreid'``.
        out: folder of the run folders and of ``reproduction.md`` / ``.csv``.
        root: root of the datasets (``data.root``); ``''``: the configs' root
            (``toy-data`` in quick mode, written there when absent).
        quick: the toy configs and :data:`QUICK_OVERRIDES`.
        seeds: ``train.seed`` of each repetition of every run.
        opts: ``KEY VALUE`` overrides of every run's config.
        table: ``'paper'`` (Table 1 and the comparison) or ``'strong'`` (ALFO on
            the strong baseline), a key of :data:`TABLE_SETS`.

    Returns:
        str: the Markdown of ``reproduction.md``.

    Raises:
        AlfoError: an unknown dataset, a negative or repeated seed, an override of
            a key the tool sets, a bad config, a missing dataset folder, or a run
            recorded with another config; all before any training.
    """
    check_arguments(dataset, seeds, opts, table)
    tables = TABLE_SETS[table]
    runs = plan(dataset, out, seeds, quick, root, opts, table)
    cfgs = [config.load_config(run.config_file, run.opts) for run in runs]
    if quick and not root:
        ensure_toy_dataset(cfgs[0].data.root, dataset)
    for cfg in cfgs:
        run_lib.check_dataset_folder(cfg.data.root, TARGETS[dataset])
    refuse_writing_over_inputs([osp.join(out, name) for name in (CONFIGS_RECORD, *TABLE_FILES)],
                               input_files(runs, cfgs))
    record_configs(runs, cfgs, out)
    train_missing(runs)
    rows = table_rows({name: [run_results(r, TARGETS[dataset], cfg)
                              for r, cfg in zip(runs, cfgs) if r.row == name]
                       for name in tables.run_order}, dataset, table)
    text = markdown(rows, dataset, seeds, out, quick, cfgs[0].train.max_epoch, opts, table)
    md, table_csv = (osp.join(out, name) for name in TABLE_FILES)
    write_file(md, text.encode())
    write_file(table_csv, report.csv_text(rows, CSV_COLUMNS).encode())
    return text


def check_arguments(dataset, seeds, opts, table='paper'):
    """Raises AlfoError for an unknown dataset or table, a negative or repeated
    seed, or an override of a key that the tool sets itself."""
    if table not in TABLE_SETS:
        raise AlfoError(f'unknown table "{table}"; expected one of {", ".join(TABLE_SETS)}')
    if dataset not in TARGETS:
        raise AlfoError(f'unknown dataset "{dataset}"; expected one of {", ".join(TARGETS)}')
    given = ' '.join(map(str, seeds))
    if any(seed < 0 for seed in seeds):
        raise AlfoError(f'seeds must be >= 0, got --seeds {given}')
    repeated = sorted({s for s in seeds if list(seeds).count(s) > 1})
    if repeated:
        raise AlfoError(f'seed {repeated[0]} is given twice in --seeds {given}')
    for key in opts[::2]:
        if key in OWN_KEYS:
            where = f'use {OWN_KEYS[key]}' if OWN_KEYS[key] else 'it is always True'
            raise AlfoError(f'override {key} is set by tools/reproduce.py itself ({where})')


def plan(dataset, out, seeds=(1,), quick=False, root='', opts=(), table='paper'):
    """The runs of the reproduction, in the order they run (the table set's
    rows, :attr:`TableSet.run_order`, seed by seed)."""
    tables = TABLE_SETS[table]
    configs = tables.configs['quick' if quick else dataset]
    common = (*(QUICK_OVERRIDES if quick else ()), *opts,
              'data.sources', str([TARGETS[dataset]]), 'data.targets', str([TARGETS[dataset]]),
              'train.resume', 'True', *(('data.root', root) if root else ()))
    runs = []
    for seed in seeds:
        for name in tables.run_order:
            row = tables.rows[name]
            save_dir = osp.join(out, name, f'seed{seed}')
            own = ('data.save_dir', save_dir, 'train.seed', str(seed))
            runs.append(Run(name, seed, str(CONFIG_DIR / configs[row.model]),
                            (*row.overrides, *common, *own), save_dir))
    return runs


def input_files(runs, cfgs):
    """``{path: what it is}`` of the files the runs read: their configs, and the
    weights and attribute files their configs name."""
    files = {}
    for run, cfg in zip(runs, cfgs):
        files[run.config_file] = 'a config'
        for key in ('pretrained', 'load_weights', 'resume'):
            files[cfg.model[key]] = f'model.{key}'
        for name, path in cfg.alfo.attr_file.items():
            files[path] = f'alfo.attr_file.{name}'
    files.pop('', None)
    return files


def ensure_toy_dataset(root, dataset):
    """Writes the toy ``dataset`` under ``root`` (as ``tools/demo.py``) unless it is there."""
    if not osp.isdir(osp.join(root, LAYOUTS[dataset].dataset_dir)):
        print(make_toy_dataset(root, dataset).summary())


def record_configs(runs, cfgs, out):
    """Records the config of every run in ``<out>/configs.json``, after checking
    it against the config an earlier invocation recorded for the same run.

    Raises:
        ConfigError: a run was recorded with another config (beyond
            :data:`FREE_KEYS`); nothing is written then.
    """
    path = osp.join(out, CONFIGS_RECORD)
    recorded = {}
    if osp.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                recorded = json.load(f)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f'"{path}", the record of the configs of the runs in "{out}", '
                              f'is damaged ({exc}): give another --out, or remove "{out}"'
                              ) from None
        if not isinstance(recorded, dict) or not all(isinstance(v, dict)
                                                     for v in recorded.values()):
            raise ConfigError(f'"{path}", the record of the configs of the runs in "{out}", '
                              f'is not a mapping of runs to configs: give another --out, or '
                              f'remove "{out}"')
    for run, cfg in zip(runs, cfgs):
        name = f'{run.row}/seed{run.seed}'
        now = json.loads(json.dumps(config.flatten(cfg)))  # lists as JSON gives them back
        before = recorded.get(name, now)
        changed = [key for key in sorted(before.keys() | now.keys())
                   if key not in FREE_KEYS and before.get(key, 'absent') != now.get(key, 'absent')]
        if changed:
            shown = '; '.join(f'{key} {before.get(key, "absent")!r} there, '
                              f'{now.get(key, "absent")!r} now' for key in changed[:3])
            more = f' and {len(changed) - 3} more' if len(changed) > 3 else ''
            raise ConfigError(f'run {name} of "{out}" was started with another config '
                              f'({shown}{more}): give another --out, or remove "{out}"')
        recorded[name] = now
    write_file(path, json.dumps(recorded, indent=1).encode())


def is_finished(run):
    return osp.isfile(osp.join(run.save_dir, run_lib.METRICS))


def train_missing(runs):
    """Trains the runs that have not finished, printing a progress line before
    each run and its summary line after it (the rest goes to its ``train.log``)."""
    left = sum(not is_finished(run) for run in runs)
    seconds = []  # wall time of each run trained by this call
    for index, run in enumerate(runs, 1):
        head = f'[{index}/{len(runs)}] {run.row} seed {run.seed}'
        if is_finished(run):
            print(f'{head}: skipped, {run_lib.METRICS} exists', flush=True)
            continue
        resumed = osp.isfile(osp.join(run.save_dir, 'model', LATEST))
        print(f'{head}{", resumed" if resumed else ""} — ETA {eta(seconds, left)}', flush=True)
        start = time.monotonic()
        run_lib.main(run.config_file, run.opts, quiet=True)
        seconds.append(time.monotonic() - start)
        left -= 1
        drop_resume_state(run)


def drop_resume_state(run):
    """Removes the ``model/latest.pth.tar`` of a finished run: the tables never
    resume it, and it is three times the final weights (the optimizer's state),
    about 11 GB over a three-seed reproduction of both datasets."""
    latest = osp.join(run.save_dir, 'model', LATEST)
    if is_finished(run) and osp.isfile(latest):
        os.remove(latest)


def eta(seconds, runs_left):
    """``'h:mm:ss'``: ``runs_left`` times the mean of ``seconds`` (the runs timed
    so far), or ``'unknown'`` before the first run has been timed."""
    if not seconds:
        return 'unknown'
    return str(datetime.timedelta(seconds=round(runs_left * statistics.fmean(seconds))))


def run_results(run, target, cfg):
    """``{'rank1', 'rank5', 'mAP', 'attr_mA'}`` (%, None when absent) of a finished run.

    Raises:
        AlfoError: the run's ``metrics.json`` has no results on ``target``, or
            is not that of the run's config ``cfg`` (another model, or attribute
            results where the model has no attribute heads, or none where it has).
    """
    path = osp.join(run.save_dir, run_lib.METRICS)
    metrics = report.load_run(run.save_dir)
    heads = config.is_alfo(cfg) and cfg.alfo.local_branch
    for row in report.rows([metrics]):
        if row['dataset'] != target:
            continue
        if metrics['model'] != cfg.model.name or (row['attr_mA'] is not None) != heads:
            found = 'with' if row['attr_mA'] is not None else 'without'
            raise AlfoError(
                f'"{path}" holds the results of a {metrics["model"]} model {found} attribute '
                f'results, not of row {run.row}\'s {cfg.model.name}'
                f'{" with attribute heads" if heads else ""}: a file of another run was put '
                f'there; remove it and run again to test this run\'s weights')
        return {key: row[key] for key in METRIC_KEYS}
    raise AlfoError(f'"{path}" has no results on {target}')


def mean_std(values):
    """Mean and sample standard deviation (n − 1) of the values that are not None.

    Returns:
        (mean, std): std is None for fewer than two values; both are None for none.
    """
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def table_rows(results, dataset, table='paper'):
    """The rows of the table set's tables, each a dict of :data:`CSV_COLUMNS`
    (% or None; the differences are None where nothing was published).

    Args:
        results: ``{row: [run_results of each seed]}``.
        dataset: the key of the paper's figures (``'market1501'``, ``'dukemtmcreid'``).
        table: a key of :data:`TABLE_SETS`.
    """
    tables = TABLE_SETS[table]
    rows = []
    for key, _, names in tables.tables:
        for name in names:
            figures = tables.figures[name]
            row = {'table': key, 'row': name, 'seeds': len(results[name]),
                   'paper_source': figures.source}
            for metric in METRIC_KEYS:
                row[metric], row[f'{metric}_std'] = mean_std([r[metric] for r in results[name]])
            row['paper_rank1'], row['paper_mAP'] = getattr(figures, dataset)
            for metric in ('rank1', 'mAP'):
                ours, theirs = row[metric], row[f'paper_{metric}']
                row[f'delta_{metric}'] = None if None in (ours, theirs) else ours - theirs
            rows.append(row)
    return rows


def _figure(value, std=None):
    if value is None:
        return '-'
    return f'{value:.2f}' if std is None else f'{value:.2f} ± {std:.2f}'


def markdown_cells(row, table='paper'):
    """A table row as the Markdown cells of :data:`MD_COLUMNS`."""
    delta = {k: '-' if row[k] is None else f'{row[k]:+.2f}' for k in ('delta_rank1', 'delta_mAP')}
    return {'row': TABLE_SETS[table].figures[row['row']].method,
            'Rank-1': _figure(row['rank1'], row['rank1_std']),
            'Rank-5': _figure(row['rank5'], row['rank5_std']),
            'mAP': _figure(row['mAP'], row['mAP_std']),
            'attr mA': _figure(row['attr_mA'], row['attr_mA_std']),
            'paper Rank-1': _figure(row['paper_rank1']), 'paper mAP': _figure(row['paper_mAP']),
            'ΔRank-1': delta['delta_rank1'], 'ΔmAP': delta['delta_mAP'],
            'paper source': row['paper_source']}


def markdown(rows, dataset, seeds, out, quick, epochs, opts, table='paper'):
    """``reproduction.md``: what was run, then the table set's tables."""
    tables = TABLE_SETS[table]
    title = paper.DATASET_TITLES[dataset]
    runs = (f'`{out}/<row>/seed<k>`, {epochs} epoch{"s" * (epochs != 1)}, '
            + ('seeds ' if len(seeds) > 1 else 'seed ') + ', '.join(map(str, seeds)))
    lines = [f'# {tables.title} on {title}', '',
             f'Our runs ({runs}) beside the published figures '
             '(`alfo_torchreid/evaluation/paper.py`). '
             'Rank-k, mAP and attribute mA (gallery, `-` for models without attribute heads) '
             'in %' + (', mean ± sample standard deviation over the seeds' if len(seeds) > 1
                       else '') + "; Δ = ours − paper's.", '']
    if quick:
        lines += [f'**Quick mode: a smoke test of the pipeline on the synthetic toy dataset. '
                  f"Its figures are not expected to match the paper's, which are on the real "
                  f'{title}.**', '']
    if opts:
        lines += [f'Overrides of every run: `{" ".join(opts)}`', '']
    for key, heading, _ in tables.tables:
        cells = [markdown_cells(row, table) for row in rows if row['table'] == key]
        lines += [f'## {heading}', '', report.markdown_table(cells, MD_COLUMNS)]
    return '\n'.join(lines)
