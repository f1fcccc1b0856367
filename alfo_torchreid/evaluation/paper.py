"""The figures the paper reports, as data: Rank-1 and mAP (%) on Market-1501 and
DukeMTMC-reID, each row with its source.

Table 1 of the paper holds the ablations (local only, global only, no focal
loss, ALFO); Table 2 compares ALFO with other methods, among them PCB as the
paper reports it. torchreid's ResNet-50 softmax baseline is not in the paper:
its row holds the figures of torchreid's model zoo, the reference for the
``resnet50`` run. ``tools/reproduce.py`` sets its results beside these rows;
``docs/reproduce.md`` shows them (:func:`markdown_table`).

:data:`STRONG_RESULTS` are the rows of ``tools/reproduce.py --table strong``:
the strong baseline's published figures (BoT, Luo et al. 2019) and ALFO on it,
which nobody has published (its figures are None).
"""
from typing import NamedTuple, Optional, Tuple

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
    market1501: Tuple[Optional[float], Optional[float]]
    dukemtmcreid: Tuple[Optional[float], Optional[float]]


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


BOT_SOURCE = ('Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person '
              'Re-identification", CVPRW 2019 (all tricks, no re-ranking)')
UNPUBLISHED = (None, None)
STRONG_RESULTS = {row.key: row for row in (
    PaperResult('strong_baseline', 'strong baseline (BoT ResNet-50, BNNeck)', BOT_SOURCE,
                (94.5, 85.9), (86.4, 76.4)),
    PaperResult('strong_alfo', 'ALFO on the strong baseline', 'not published (this project)',
                UNPUBLISHED, UNPUBLISHED),
    PaperResult('strong_global_only', 'ALFO on the strong baseline, no local branch',
                'not published (this project)', UNPUBLISHED, UNPUBLISHED),
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
