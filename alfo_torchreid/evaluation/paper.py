"""The figures the paper reports, as data: Rank-1 and mAP (%) on Market-1501 and
DukeMTMC-reID, each row with its source.

Table 1 of the paper holds the ablations (local only, global only, no focal
loss, ALFO); Table 2 compares ALFO with other methods, among them PCB as the
paper reports it. torchreid's ResNet-50 softmax baseline is not in the paper:
its row holds the figures of torchreid's model zoo, the reference for the
``resnet50`` run. ``tools/reproduce.py`` sets its results beside these rows;
``docs/reproduce.md`` shows them (:func:`markdown_table`).
"""
from typing import NamedTuple, Tuple

DATASETS = ('market1501', 'dukemtmcreid')
DATASET_TITLES = {'market1501': 'Market-1501', 'dukemtmcreid': 'DukeMTMC-reID'}


class PaperResult(NamedTuple):
    """One method's published figures.

    Attributes:
        key: the name of the method (a ``tools/reproduce.py`` row where there is one).
        method: the method as the paper names it.
        source: where the figures come from (``'Table 1'``, ``'Table 2'``, ...).
        market1501: (Rank-1, mAP) in % on Market-1501.
        dukemtmcreid: (Rank-1, mAP) in % on DukeMTMC-reID.
    """
    key: str
    method: str
    source: str
    market1501: Tuple[float, float]
    dukemtmcreid: Tuple[float, float]


RESULTS = {row.key: row for row in (
    PaperResult('local_only', 'local only', 'Table 1', (70.44, 58.91), (76.31, 52.43)),
    PaperResult('global_only', 'global only', 'Table 1', (74.46, 66.67), (73.23, 62.44)),
    PaperResult('no_focal', 'no focal loss', 'Table 1', (86.52, 77.42), (74.69, 70.53)),
    PaperResult('alfo', 'ALFO', 'Tables 1 and 2', (91.25, 77.83), (78.86, 74.12)),
    PaperResult('trihard', 'TriHard', 'Table 2', (83.4, 71.23), (78.55, 69.74)),
    PaperResult('par', 'PAR', 'Table 2', (80.1, 65.32), (81.46, 58.15)),
    PaperResult('apr', 'APR', 'Table 2', (81.03, 66.59), (70.69, 61.74)),
    PaperResult('pcb', 'PCB', 'Table 2', (90.3, 70.40), (80.6, 66.1)),
    PaperResult('deepmar', 'DeepMar', 'Table 2', (88.75, 73.72), (82.6, 72.7)),
    PaperResult('resnet50', 'ResNet-50 softmax', "torchreid's model zoo (not in the paper)",
                (87.9, 70.4), (78.3, 58.9)),
)}


def markdown_table():
    """All rows as a Markdown table (Rank-1 / mAP in %), as in ``docs/reproduce.md``."""
    titles = [DATASET_TITLES[d] for d in DATASETS]
    lines = ['| method | ' + ' | '.join(titles) + ' | source |',
             '|---|' + '---|' * len(titles) + '---|']
    for row in RESULTS.values():
        figures = [f'{rank1:.2f} / {mAP:.2f}'
                   for rank1, mAP in (getattr(row, dataset) for dataset in DATASETS)]
        lines.append(f'| {row.method} | ' + ' | '.join(figures) + f' | {row.source} |')
    return '\n'.join(lines) + '\n'
