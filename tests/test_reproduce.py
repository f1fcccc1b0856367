"""tools/reproduce.py: the runs of the paper's tables, continuing where they
stopped, and the tables beside the paper's figures."""
import csv
import io
import json
import re
from pathlib import Path

import pytest
from alfo_run import REPO, load_tool, run_tool
import torch

from alfo_torchreid import config, reproduce
from alfo_torchreid.engine.engine import ResumableEngineMixin
from alfo_torchreid.evaluation import paper, report

PAPER_TEXT = REPO.parent / 'shared' / 'paper' / 'alfo_paper.txt'
# two epochs of one step (32 training images) at 32x16 (a 2x1 map, 2 stripes):
# 2/3 of the time at 64x32
TINY = ['train.max_epoch', '2', 'train.batch_size', '32', 'test.batch_size', '64',
        'data.height', '32', 'data.width', '16', 'alfo.num_parts', '2']
ORDER = ['local_only', 'global_only', 'no_focal', 'alfo', 'pcb', 'resnet50']


TOOL = load_tool('reproduce')


def snapshot(folder):
    """{relative path: (inode, size, mtime_ns)} of every file under ``folder``: a
    file written again, in place or replaced, differs."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_size,
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob('*')) if p.is_file()}


def interrupt_after(method, save_dir):
    """``method`` of the engines, raising KeyboardInterrupt (Ctrl-C) once it
    has run in the run writing to ``save_dir``."""
    def interrupted(self, *args, **kwargs):
        result = method(self, *args, **kwargs)
        if Path(self.save_dir) == save_dir:
            raise KeyboardInterrupt
        return result
    return interrupted


@pytest.fixture(scope='module')
def reproduction(toy_root, module_tmp):
    """A quick reproduction on the toy tree, run four times: (1) stopped by
    Ctrl-C after the first of the two epochs of its ALFO run, (2) stopped in the
    final test of its PCB run, (3) to its end, (4) once more."""
    out = module_tmp('reproduce') / 'market'
    args = ['--dataset', 'market1501', '--quick', '--root', toy_root, '--out', out, *TINY]
    runs = {name: out / name / 'seed1' for name in ORDER}
    invocations, files = [], []
    threads = torch.get_num_threads()
    # one thread: on a CPU shared with other jobs, 3x faster than two here
    torch.set_num_threads(1)
    try:
        for method, row in (('train', 'alfo'), ('_evaluate', 'pcb'), (None, None)):
            with pytest.MonkeyPatch.context() as patch:
                if method:
                    patch.setattr(ResumableEngineMixin, method, interrupt_after(
                        getattr(ResumableEngineMixin, method), runs[row]))
                invocations.append(run_tool('reproduce', *args))
            files.append({name: sorted(str(p.relative_to(run)) for p in run.rglob('*'))
                          for name, run in runs.items() if run.exists()})
        before = {name: snapshot(run) for name, run in runs.items()}
        tables = {name: (out / name).read_bytes()
                  for name in ('reproduction.md', 'reproduction.csv')}
        invocations.append(run_tool('reproduce', *args))
    finally:
        torch.set_num_threads(threads)
    after = {name: snapshot(run) for name, run in runs.items()}
    return {'out': out, 'args': args, 'runs': runs, 'invocations': invocations,
            'files': files, 'before': before, 'after': after, 'tables': tables}


def test_ctrl_c_stops_the_reproduction_in_its_alfo_run(reproduction):
    status, stdout, stderr = reproduction['invocations'][0]
    assert status == 130 and 'the same command continues' in stderr
    files = reproduction['files'][0]
    assert list(files) == ORDER[:4]  # no PCB and ResNet-50 run yet
    assert all('metrics.json' in files[name] for name in ORDER[:3])
    assert 'model/latest.pth.tar' in files['alfo'] and 'metrics.json' not in files['alfo']
    assert '[1/6] local_only seed 1 — ETA unknown' in stdout
    assert re.search(r'\[2/6\] global_only seed 1 — ETA \d+:\d\d:\d\d', stdout)


def test_the_next_invocation_continues_the_interrupted_run(reproduction):
    status, stdout, _ = reproduction['invocations'][1]
    assert status == 130
    for index, name in enumerate(ORDER[:3], 1):
        assert f'[{index}/6] {name} seed 1: skipped, metrics.json exists' in stdout
    assert '[4/6] alfo seed 1, resumed — ETA unknown' in stdout
    assert 'continuing at epoch 2' in stdout
    alfo = reproduction['runs']['alfo']
    assert [json.loads(line)['epoch'] for line in
            (alfo / 'history.jsonl').read_text().splitlines()] == [1, 2]
    assert 'metrics.json' in reproduction['files'][1]['alfo']
    assert re.search(r'\[5/6\] pcb seed 1 — ETA \d+:\d\d:\d\d', stdout)


def test_the_console_gets_progress_and_summaries_the_log_the_rest(reproduction):
    status, stdout, _ = reproduction['invocations'][2]
    assert status == 0
    lines = stdout.split("# The paper's tables reproduced")[0].strip().splitlines()
    said = (r'\[\d/6\] .* seed 1(: skipped, metrics.json exists|(, resumed)? — ETA \S+)',
            r'Done: market1501_attr Rank-1 [\d.]+%, mAP [\d.]+%(, mA [\d.]+%)?; 2 epochs, '
            r'\d+:\d\d:\d\d; ".*"',
            r'The run in ".*" was stopped in its final test: testing its epoch-2 weights now',
            r'Removed \d+ unfinished file\(s\) of an interrupted save: .*')
    for line in lines:
        assert any(re.fullmatch(pattern, line) for pattern in said), line
    runs = reproduction['runs']
    done = [line for line in lines if line.startswith('Done: ')]
    assert [line.rsplit('"', 2)[1] for line in done] == [str(runs['pcb']), str(runs['resnet50'])]
    for name in ('pcb', 'resnet50'):  # what the console did not get, the log did
        log = (runs[name] / 'train.log').read_text()
        assert 'Config:' in log and '=> Final test' in log and done[0 if name == 'pcb' else 1] \
            in log


def test_a_run_stopped_in_its_final_test_gets_its_last_checkpoint_tested(reproduction):
    status, stdout, _ = reproduction['invocations'][2]
    assert status == 0
    assert 'metrics.json' not in reproduction['files'][1]['pcb']
    assert '[5/6] pcb seed 1, resumed — ETA unknown' in stdout
    pcb = reproduction['runs']['pcb']
    assert 'was stopped in its final test: testing its epoch-2 weights now' in stdout
    tested = json.loads((pcb / 'metrics.json').read_text())
    assert tested['epochs'] == 2 and tested['model'] == 'pcb_p6'
    assert tested['results']['market1501_attr']['epoch'] == 2
    assert [json.loads(line)['epoch'] for line in
            (pcb / 'history.jsonl').read_text().splitlines()] == [1, 2]


def test_a_finished_run_keeps_its_weights_and_drops_its_resume_state(reproduction):
    assert 'model/latest.pth.tar' not in reproduction['files'][0]['local_only']
    for run in reproduction['runs'].values():
        assert sorted(p.name for p in (run / 'model').iterdir()) == ['model.pth.tar-2']


def test_a_finished_reproduction_trains_nothing(reproduction):
    status, stdout, _ = reproduction['invocations'][3]
    assert status == 0
    assert stdout.count('skipped, metrics.json exists') == 6 and 'ETA' not in stdout
    assert reproduction['after'] == reproduction['before']
    for name, content in reproduction['tables'].items():
        assert (reproduction['out'] / name).read_bytes() == content


def percent(run, key):
    """Figure ``key`` of ``run`` in %, from its metrics.json, rounded as in the tables."""
    result = json.loads((run / 'metrics.json').read_text())['results']['market1501_attr']
    value = {'rank1': result['cmc'][0], 'rank5': result['cmc'][4], 'mAP': result['mAP'],
             'attr_mA': result.get('attributes', {}).get('mA')}[key]
    return None if value is None else round(100 * value, 2)


def test_csv_holds_our_figures_beside_the_papers(reproduction):
    text = (reproduction['out'] / 'reproduction.csv').read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r['table'], r['row']) for r in rows] == [
        ('table1', 'local_only'), ('table1', 'global_only'), ('table1', 'no_focal'),
        ('table1', 'alfo'), ('comparison', 'alfo'), ('comparison', 'pcb'),
        ('comparison', 'resnet50')]
    for row in rows:
        run = reproduction['runs'][row['row']]
        for key in reproduce.METRIC_KEYS:
            ours = percent(run, key)
            assert row[key] == ('' if ours is None else str(ours)), (row['row'], key)
            assert row[f'{key}_std'] == ''  # one seed
        rank1, mAP = paper.RESULTS[row['row']].market1501
        assert (float(row['paper_rank1']), float(row['paper_mAP'])) == (rank1, mAP)
        assert float(row['delta_rank1']) == pytest.approx(percent(run, 'rank1') - rank1, abs=0.006)
        assert float(row['delta_mAP']) == pytest.approx(percent(run, 'mAP') - mAP, abs=0.006)
        assert row['seeds'] == '1' and row['paper_source'] == paper.RESULTS[row['row']].source
    # attribute heads: ALFO and the ablations with a local branch
    assert [r['row'] for r in rows if r['attr_mA']] == ['local_only', 'no_focal', 'alfo', 'alfo']


def test_markdown_has_both_tables_and_the_paper_column(reproduction):
    text = (reproduction['out'] / 'reproduction.md').read_text()
    assert '**Quick mode: a smoke test' in text
    table1, comparison = text.split('## Table 1')[1].split('## Comparison')
    assert table1.count('\n| ') == 5 and comparison.count('\n| ') == 4  # header + rows
    run = reproduction['runs']['pcb']
    ours, paper_rank1 = percent(run, 'rank1'), paper.RESULTS['pcb'].market1501[0]
    assert (f'| PCB | {ours:.2f} | {percent(run, "rank5"):.2f} | {percent(run, "mAP"):.2f} | - '
            f'| 90.30 | 70.40 | {ours - paper_rank1:+.2f} |') in comparison
    assert '| ALFO |' in table1 and '| 91.25 | 77.83 |' in table1
    assert 'Δ = ours − paper' in text


def test_a_changed_config_is_refused_before_any_training(reproduction):
    before = snapshot(reproduction['out'])
    status, _, stderr = run_tool('reproduce', *reproduction['args'], 'train.max_epoch', '3')
    assert status == 2 and len(stderr.strip().splitlines()) == 1
    assert stderr.startswith(f'error: run local_only/seed1 of "{reproduction["out"]}" was started '
                             'with another config (train.max_epoch 2 there, 3 now)')
    assert snapshot(reproduction['out']) == before


@pytest.mark.parametrize('args, message', [
    (['--dataset', 'market'],
     'error: unknown dataset "market"; expected one of market1501, dukemtmcreid'),
    (['--dataset', 'market1501', '--seeds', '1', '2', '1'],
     'error: seed 1 is given twice in --seeds 1 2 1'),
    (['--dataset', 'market1501', '--seeds', '2', '-1'],
     'error: seeds must be >= 0, got --seeds 2 -1'),
    (['--dataset', 'market1501', 'train.seed', '3'],
     'error: override train.seed is set by tools/reproduce.py itself (use --seeds)'),
    (['--dataset', 'market1501', '--root', '/nonexistent-root'],
     'error: dataset folder "/nonexistent-root/market1501" for market1501_attr does not exist'),
])
def test_bad_input_is_one_line_and_status_2(args, message, tmp_path):
    status, _, stderr = run_tool('reproduce', *args, '--out', tmp_path / 'out')
    assert status == 2
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith(message), stderr
    assert not (tmp_path / 'out').exists()


def test_runs_go_seed_by_seed_with_their_overrides():
    runs = reproduce.plan('dukemtmcreid', 'out', seeds=[4, 7], opts=['train.lr', '0.01'])
    assert [(r.row, r.seed) for r in runs] == [(n, 4) for n in ORDER] + [(n, 7) for n in ORDER]
    local = config.load_config(runs[0].config_file, runs[0].opts)
    assert Path(runs[0].config_file).name == 'alfo_duke.yaml'
    assert (local.alfo.global_branch, local.alfo.feature, local.train.lr) == (False, 'local', 0.01)
    assert (local.train.seed, local.train.resume, local.data.save_dir) == (
        4, True, 'out/local_only/seed4')
    resnet = config.load_config(runs[-1].config_file, runs[-1].opts)
    assert (resnet.model.name, list(resnet.data.sources), resnet.train.seed) == (
        'resnet50', ['dukemtmcreid_attr'], 7)
    quick = reproduce.plan('dukemtmcreid', 'out', quick=True)
    cfg = config.load_config(quick[4].config_file, quick[4].opts)
    assert (cfg.model.name, cfg.data.height, cfg.train.max_epoch) == ('pcb_p6', 128, 1)
    assert list(cfg.data.targets) == ['dukemtmcreid_attr']


@pytest.mark.parametrize('row', ['local_only', 'global_only', 'no_focal', 'alfo'])
def test_ablation_configs_are_the_reproduce_rows(row):
    ablation = config.load_config(REPO / 'configs' / 'ablation' / f'{row}.yaml')
    overrides = reproduce.ROWS[row].overrides
    assert reproduce.ROWS[row].model == 'alfo'
    ours = config.load_config(REPO / 'configs' / 'alfo_market.yaml', overrides)
    ours.data.save_dir = ablation.data.save_dir
    assert ours == ablation


def test_mean_and_sample_std_over_seeds():
    mean, std = reproduce.mean_std([1.0, 2.0, 4.0])
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, over n - 1 = 2
    assert mean == pytest.approx(7 / 3) and std == pytest.approx((42 / 9 / 2) ** 0.5)
    assert reproduce.mean_std([5.0]) == (5.0, None)
    assert reproduce.mean_std([None, None]) == (None, None)


def test_table_rows_round_means_and_differences():
    seeds = [{'rank1': 90.0, 'rank5': 95.0, 'mAP': 70.0, 'attr_mA': None},
             {'rank1': 92.0, 'rank5': 96.0, 'mAP': 71.0, 'attr_mA': None},
             {'rank1': 91.0, 'rank5': 97.0, 'mAP': 75.0, 'attr_mA': None}]
    table = reproduce.table_rows({name: seeds for name in ORDER}, 'dukemtmcreid')
    assert len(table) == 7
    pcb = table[5]
    assert pcb['row'] == 'pcb' and pcb['seeds'] == 3
    assert (pcb['rank1'], pcb['rank1_std']) == (91.0, 1.0)
    assert (pcb['mAP'], pcb['mAP_std']) == (72.0, pytest.approx(7 ** 0.5))  # 4 + 1 + 9 over 2
    assert (pcb['attr_mA'], pcb['attr_mA_std']) == (None, None)
    assert (pcb['paper_rank1'], pcb['paper_mAP']) == (80.6, 66.1)
    assert pcb['delta_rank1'] == pytest.approx(10.4) and pcb['delta_mAP'] == pytest.approx(5.9)
    cells = reproduce.markdown_cells(pcb)
    assert (cells['Rank-1'], cells['mAP'], cells['attr mA'], cells['ΔmAP']) == (
        '91.00 ± 1.00', '72.00 ± 2.65', '-', '+5.90')
    line = report.csv_text([pcb], reproduce.CSV_COLUMNS).splitlines()[1]
    assert line == 'comparison,pcb,3,91.0,1.0,96.0,1.0,72.0,2.65,,,80.6,66.1,10.4,5.9,Table 2'



def test_eta_is_runs_left_times_the_mean_run():
    assert reproduce.eta([], 3) == 'unknown'
    assert reproduce.eta([60.0, 120.0], 3) == '0:04:30'


def test_seeds_end_where_the_overrides_begin():
    assert TOOL.split_seeds(['1', '2', 'train.lr', '0.1']) == ([1, 2], ['train.lr', '0.1'])
    assert TOOL.split_seeds(['3']) == ([3], [])


def test_docs_show_the_papers_figures():
    assert paper.markdown_table() in (REPO / 'docs' / 'reproduce.md').read_text()


# how the paper's text names each row of its Tables 1 and 2
PAPER_NAMES = {'local_only': '局部分支', 'global_only': '全局分支', 'no_focal': '无Focal loss',
               'alfo': 'ALFO', 'trihard': 'TriHard[9]', 'par': 'PAR[13]', 'apr': 'APR[8]',
               'pcb': 'PCB[12]', 'deepmar': 'DeepMar[4]'}


def test_paper_figures_are_the_papers():
    if not PAPER_TEXT.is_file():
        pytest.skip(f'the paper {PAPER_TEXT} is absent (the repository\'s ../shared/paper)')
    lines = PAPER_TEXT.read_text().replace('\xa0', ' ').splitlines()  # no-break spaces
    for key, name in PAPER_NAMES.items():
        line = next(line for line in lines if line.startswith(name + ' '))
        figures = [float(x) for x in line[len(name):].split()]
        row = paper.RESULTS[key]
        assert figures == [*row.market1501, *row.dukemtmcreid], key


def test_strong_table_runs_the_strong_configs():
    runs = reproduce.plan('dukemtmcreid', 'out', seeds=[2], table='strong')
    assert [(r.row, Path(r.config_file).relative_to(REPO / 'configs').as_posix()) for r in runs] \
        == [('strong_baseline', 'strong/resnet50_bnneck_duke.yaml'),
            ('strong_alfo', 'strong/alfo_duke.yaml'),
            ('strong_global_only', 'strong/alfo_duke.yaml')]
    assert runs[2].opts[:2] == ('alfo.local_branch', 'False')
    quick = reproduce.plan('market1501', 'out', quick=True, table='strong')
    assert Path(quick[0].config_file).name == 'resnet50_bnneck_toy.yaml'


def test_strong_table_sets_bot_beside_our_rows():
    ours = {'rank1': 95.5, 'rank5': 98.0, 'mAP': 87.0, 'attr_mA': None}
    rows = reproduce.table_rows({name: [ours] for name in reproduce.STRONG_ROWS}, 'market1501',
                                'strong')
    baseline, alfo, _ = rows
    assert (baseline['paper_rank1'], baseline['paper_mAP']) == (94.5, 85.9)
    assert baseline['delta_mAP'] == pytest.approx(87.0 - 85.9)
    assert alfo['paper_mAP'] is None and alfo['delta_mAP'] is None
    assert paper.STRONG_RESULTS['strong_baseline'].dukemtmcreid == (86.4, 76.4)
    assert 'Luo et al.' in reproduce.markdown_cells(baseline, 'strong')['paper source']
