"""Side-by-side report of finished runs: a table (Markdown, CSV) and two plots.

Reads the ``metrics.json`` that ``tools/main.py`` writes in each run folder.
``comparison.md`` / ``comparison.csv``: Rank-1/5/10, mAP, attribute mA,
parameters, GFLOPs and training time per epoch of every run (2 decimals in
both). ``cmc.png``: the CMC curves. ``attributes.png``: per-attribute balanced
accuracy of the runs that predict attributes, with each attribute's chance
level, each run's mA, and the attributes left out of mA hatched.
"""
import csv
import io
import json
import math
import os
import os.path as osp
from dataclasses import dataclass

import matplotlib

matplotlib.use('Agg')  # files only; no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from alfo_torchreid.utils.atomic import write_file  # noqa: E402
from alfo_torchreid.utils.errors import AlfoError  # noqa: E402

COLUMNS = ('run', 'model', 'dataset', 'rank1', 'rank5', 'rank10', 'mAP', 'attr_mA',
           'params_M', 'GFLOPs', 'sec_per_epoch')
REPORT_FILES = ('comparison.md', 'comparison.csv', 'cmc.png', 'attributes.png')


def metrics_file(run_dir):
    """The ``metrics.json`` of the run folder ``run_dir``."""
    return osp.join(run_dir, 'metrics.json')


def load_run(run_dir):
    """The ``metrics.json`` of ``run_dir`` as a dict (``name`` defaults to the folder).

    Raises:
        AlfoError: the file is missing, not JSON, or not shaped as
            ``tools/main.py`` writes it; the message names the file.
    """
    path = metrics_file(run_dir)
    if not osp.isfile(path):
        raise AlfoError(f'run folder "{run_dir}" has no metrics.json: has the run finished '
                        f'(tools/main.py writes it after the final test)?')
    try:
        with open(path, encoding='utf-8') as f:
            run = json.load(f)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AlfoError(f'"{path}" is not valid JSON ({exc}): the file is damaged; '
                        'evaluate the run again to rewrite it') from None
    problem = _metrics_problem(run)
    if problem:
        raise AlfoError(f'"{path}" is not a metrics file of tools/main.py: {problem}')
    run.setdefault('name', osp.basename(osp.normpath(run_dir)))
    return run


def _metrics_problem(run):
    """What makes ``run`` unlike a ``metrics.json`` of ``tools/main.py`` (None if nothing)."""
    if not isinstance(run, dict):
        return f'it holds a {type(run).__name__}, not an object'
    for key, kind in (('model', str), ('results', dict)):
        if not isinstance(run.get(key), kind):
            return f'"{key}" is missing or not a {kind.__name__}'
    for key in ('params', 'gflops'):
        if not _number(run.get(key), high=math.inf):
            return f'"{key}" is missing or not a finite number >= 0'
    if 'name' in run and not (isinstance(run['name'], str) and run['name']):
        return '"name" is not a name'
    seconds = run.get('train_time_per_epoch')
    if seconds is not None and not _number(seconds, high=math.inf):
        return '"train_time_per_epoch" is not a finite number >= 0'
    for dataset, res in run['results'].items():
        if not isinstance(res, dict) or not _number(res.get('mAP')) or \
                not isinstance(res.get('cmc'), list) or not all(map(_number, res['cmc'])):
            return (f'results of "{dataset}" lack an "mAP" and a "cmc" list of fractions in '
                    '[0, 1]')
        attrs = res.get('attributes')
        if attrs is not None and not (
                isinstance(attrs, dict) and _fraction_or_nan(attrs.get('mA')) and
                isinstance(attrs.get('balanced_accuracy'), dict) and
                all(map(_fraction_or_nan, attrs['balanced_accuracy'].values()))):
            return (f'attribute results of "{dataset}" lack an "mA" and "balanced_accuracy" '
                    'of fractions in [0, 1] (or NaN)')
    return None


def _number(value, high=1.0):
    """Whether ``value`` is a number (not a boolean) in ``[0, high]``; NaN is not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        0 <= value <= high


def _fraction_or_nan(value):
    """Whether ``value`` is a number in ``[0, 1]`` or NaN: the balanced accuracy
    of an attribute without any known label in the test split, and the mA of
    none (:func:`~alfo_torchreid.evaluation.metrics.attribute_metrics`)."""
    return _number(value) or (isinstance(value, float) and math.isnan(value))


def check_names(runs, run_dirs):
    """Refuses two runs of the same name: their rows could not be told apart."""
    seen = {}
    for run, folder in zip(runs, run_dirs):
        if run['name'] in seen:
            raise AlfoError(f'runs "{seen[run["name"]]}" and "{folder}" are both named '
                            f'"{run["name"]}": their rows could not be told apart; compare '
                            'runs whose folders (or metrics.json names) differ')
        seen[run['name']] = folder


def rows(runs):
    """One table row per run and test dataset."""
    table = []
    for run in runs:
        for dataset, res in run['results'].items():
            cmc = res.get('cmc', [])
            attrs = res.get('attributes') or {}
            table.append({
                'run': run['name'], 'model': run['model'], 'dataset': dataset,
                'rank1': _pct(cmc, 0), 'rank5': _pct(cmc, 4), 'rank10': _pct(cmc, 9),
                'mAP': 100 * res['mAP'] if 'mAP' in res else None,
                'attr_mA': 100 * attrs['mA'] if 'mA' in attrs else None,
                'params_M': run['params'] / 1e6, 'GFLOPs': run['gflops'],
                'sec_per_epoch': run.get('train_time_per_epoch'),
            })
    return table


def _pct(cmc, k):
    return 100 * cmc[k] if len(cmc) > k else None


def _cell(value):
    if value is None:
        return '-'
    return f'{value:.2f}' if isinstance(value, float) else str(value)


def _rounded(row):
    """A table row with floats rounded as the Markdown table shows them."""
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}


def markdown_table(table, columns=COLUMNS):
    """The rows (dicts) of ``table`` as a Markdown table of ``columns``."""
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(_cell(r[c]) for c in columns) + ' |' for r in table]
    return '\n'.join(lines) + '\n'


def csv_text(table, columns=COLUMNS):
    """The rows (dicts) of ``table`` as CSV text: a header line of ``columns``,
    then one line per row, floats rounded to 2 decimals as in the Markdown
    (CRLF line ends, as the csv module writes)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(_rounded(row) for row in table)
    return out.getvalue()


def plot_cmc(runs, path, max_rank=20):
    """CMC curves (matching rate in % against rank) of every run and dataset."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for run in runs:
        for dataset, res in run['results'].items():
            cmc = res.get('cmc', [])[:max_rank]
            if cmc:
                ax.plot(range(1, len(cmc) + 1), [100 * c for c in cmc], marker='o',
                        markersize=3, label=f'{run["name"]} ({dataset})')
    ax.set_xlabel('rank')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel('matching rate (%)')
    ax.set_title('CMC')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def attribute_series(runs):
    """(label, {attribute: balanced accuracy}) of every run and test dataset
    with attribute results. Balanced accuracy (the per-attribute term of mA,
    (TP/P + TN/N)/2) rather than accuracy, which reads 100 % for an attribute
    that is never positive in the test split and never predicted."""
    return [(label, attributes['balanced_accuracy'])
            for label, attributes in _attribute_results(runs)]


def _attribute_results(runs):
    """(label, attribute results of ``metrics.json``) of every run and test
    dataset with attribute results."""
    return [(f'{run["name"]} ({dataset})', res['attributes'])
            for run in runs for dataset, res in run['results'].items()
            if res.get('attributes')]


@dataclass
class AttributePlot:
    """What ``attributes.png`` shows.

    Attributes:
        names: the attributes, along the x axis.
        series: ``(legend label with its mA, {name: balanced accuracy})`` per
            run and test dataset.
        chance: ``{name: 1 / classes}``, a uniform random guess's balanced
            accuracy (0.5 for a binary attribute, 0.25 for Market's 4-class age).
        flagged: ``[{names}]`` per series: the attributes its mA leaves out
            (one class only in the test labels), drawn hatched.
    """
    names: list
    series: list
    chance: dict
    flagged: list


def attribute_plot(runs):
    """The :class:`AttributePlot` of ``runs``' attribute results (a
    ``metrics.json`` written before ``num_classes`` and ``mA_excluded`` were:
    binary attributes, none flagged). The attributes are those of every
    series, in first-seen order (a Duke run beside a Market run keeps its
    own); a series without one shows no bar there."""
    results = _attribute_results(runs)
    names = list(dict.fromkeys(name for _, attributes in results
                               for name in attributes['balanced_accuracy']))
    classes = {}
    for _, attributes in results:
        classes.update(attributes.get('num_classes', {}))
    return AttributePlot(
        names=names,
        series=[(f'{label}: mA {100 * attributes["mA"]:.1f}%', attributes['balanced_accuracy'])
                for label, attributes in results],
        chance={name: 1 / classes.get(name, 2) for name in names},
        flagged=[set(attributes.get('mA_excluded', [])) for _, attributes in results])


def plot_attributes(runs, path):
    """Grouped bars: per-attribute balanced accuracy (%) of the runs that predict
    attributes (:func:`attribute_plot`): each run's mA in its legend label, each
    attribute's chance level as a dashed line over its bars, the attributes left
    out of a run's mA hatched.

    Returns:
        False (and writes an empty-notice figure) when no run has attribute results.
    """
    plot = attribute_plot(runs)
    names, series = plot.names, plot.series
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(names) * max(1, len(series))), 4.5))
    if not series:
        ax.text(0.5, 0.5, 'no run predicts attributes', ha='center', va='center')
        ax.set_axis_off()
    width = 0.8 / max(1, len(series))
    for i, ((label, balanced), flagged) in enumerate(zip(series, plot.flagged)):
        xs = [j + i * width for j in range(len(names))]
        bars = ax.bar(xs, [100 * balanced.get(n, float('nan')) for n in names], width,
                      label=label)
        for bar, name in zip(bars, names):
            if name in flagged:
                bar.set_hatch('///')
                bar.set_edgecolor('black')
    if series:
        for j, name in enumerate(names):
            ax.hlines(100 * plot.chance[name], j - width / 2, j + 0.8 - width / 2,
                      color='black', linewidth=1, linestyle='--', zorder=3,
                      label='chance: 1 / classes' if j == 0 else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=70, fontsize=8)
        ax.set_ylabel('balanced accuracy (%): (TP/P + TN/N) / 2')
        ax.set_ylim(0, 100)
        ax.set_title('Attribute recognition on the gallery (mA = mean of the plain bars)')
        handles, labels = ax.get_legend_handles_labels()
        if any(plot.flagged):
            handles.append(Patch(facecolor='white', edgecolor='black', hatch='///'))
            labels.append('one class only in the test labels: not in mA')
        ax.legend(handles, labels, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return bool(series)


def write_report(run_dirs, out_dir):
    """Writes the :data:`REPORT_FILES` (comparison.md, comparison.csv, cmc.png,
    attributes.png) into ``out_dir``.

    Returns:
        The Markdown table (also printed by ``tools/compare.py``).
    """
    runs = [load_run(d) for d in run_dirs]
    check_names(runs, run_dirs)
    table = rows(runs)
    os.makedirs(out_dir, exist_ok=True)
    text = markdown_table(table)
    md, table_csv, cmc, attributes = (osp.join(out_dir, name) for name in REPORT_FILES)
    write_file(md, (
        '# Comparison\n\nRank-k, mAP and attribute mA in %; params: all trained parameters, '
        'in millions; GFLOPs per image at inference; training seconds per epoch.\n\n'
        + text).encode())
    write_file(table_csv, csv_text(table).encode())
    plot_cmc(runs, cmc)
    plot_attributes(runs, attributes)
    return text
