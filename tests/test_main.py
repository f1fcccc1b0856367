"""tools/main.py and tools/compare.py end to end, as a user runs them."""
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from alfo_run import REPO, load_tool, market_split, run_tool

from alfo_torchreid import config
from alfo_torchreid.utils.errors import ConfigError

MAIN = load_tool('main').main
COMPARE = load_tool('compare').main
TINY = ['train.max_epoch', '1', 'train.batch_size', '16', 'test.batch_size', '64',
        'train.print_freq', '1']


def train(config, root, save_dir, *extra):
    proc = run_tool('main', '--config-file', REPO / 'configs' / config, '--root', root,
                    *TINY, 'data.save_dir', save_dir, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def metrics(save_dir):
    return json.loads((Path(save_dir) / 'metrics.json').read_text())


@pytest.fixture(scope='module')
def trainings(toy_root, module_tmp):
    """One-epoch ALFO and PCB runs on the toy tree: {'alfo': (dir, CompletedProcess), ...}."""
    base = module_tmp('runs')
    return {name: (base / name, train(f'{name}_toy.yaml', toy_root, base / name))
            for name in ('alfo', 'pcb')}


@pytest.fixture(scope='module')
def runs(trainings):
    """The run folders of :func:`trainings`: {'alfo': dir, 'pcb': dir}."""
    return {name: run for name, (run, _) in trainings.items()}


@pytest.mark.parametrize('name', ['alfo', 'pcb'])
def test_run_writes_metrics_checkpoint_and_logs(runs, name):
    run = runs[name]
    result = metrics(run)
    assert result['model'] == {'alfo': 'alfo', 'pcb': 'pcb_p6'}[name]
    reid = result['results']['market1501_attr']
    assert 0 <= reid['mAP'] <= 1 and reid['rank1'] == reid['cmc'][0]
    assert result['params'] > 20e6 and result['gflops'] > 0
    assert (run / 'model' / 'model.pth.tar-1').is_file()
    assert (run / 'model' / 'latest.pth.tar').is_file()
    assert 'Rank-1' in (run / 'train.log').read_text()
    assert any(p.name.startswith('events.out.tfevents') for p in run.iterdir())
    assert ('attributes' in reid) == (name == 'alfo')


@pytest.mark.parametrize('name', ['alfo', 'pcb'])
def test_a_run_prints_no_config_and_ends_with_its_summary(trainings, name, toy_root):
    run, proc = trainings[name]
    log = (run / 'train.log').read_text()
    for noisy in ('Config:\n', 'subset   | # ids', 'Building train transforms'):
        assert noisy not in proc.stdout and noisy in log
    images = list(market_split(toy_root, 'bounding_box_train').glob('*.jpg'))
    identities = {image.name.split('_')[0] for image in images}
    assert proc.stdout.splitlines()[0] == (
        f'Data: market1501_attr, {len(identities)} identities, {len(images)} training images; '
        'testing on market1501_attr (config and dataset tables in the log; --verbose prints '
        'them)')
    reid = metrics(run)['results']['market1501_attr']
    figures = f'Rank-1 {100 * reid["rank1"]:.1f}%, mAP {100 * reid["mAP"]:.1f}%' + (
        f', mA {100 * reid["attributes"]["mA"]:.1f}%' if name == 'alfo' else '')
    last = proc.stdout.splitlines()[-1]
    assert re.fullmatch(rf'Done: market1501_attr {re.escape(figures)}; 1 epoch, '
                        rf'\d+:\d\d:\d\d; "{re.escape(str(run))}"', last), last
    assert log.splitlines()[-1] == last


def test_default_workers_do_not_exceed_the_cores(monkeypatch):
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1}, raising=False)
    assert config.get_default_config().data.workers == 2
    monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: set(range(64)), raising=False)
    assert config.get_default_config().data.workers == 4
    for name in ('alfo_market', 'alfo_duke', 'pcb_market', 'pcb_duke'):  # none overrides it
        assert 'workers' not in (REPO / 'configs' / f'{name}.yaml').read_text()


@pytest.fixture(scope='module')
def evaluation(runs, toy_root, module_tmp):
    """The README's eval-only command on a copy of the ALFO run, with visrank:
    (run folder, its files before, CompletedProcess, {PNG path: the
    :class:`~alfo_torchreid.evaluation.rank_grid.Layout` drawn})."""
    from alfo_torchreid.evaluation import rank_grid
    run = module_tmp('evaluated') / 'alfo'
    shutil.copytree(runs['alfo'], run, ignore=shutil.ignore_patterns('latest.pth.tar'))
    before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
    layouts, draw_grid = {}, rank_grid.draw_grid
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rank_grid, 'draw_grid', lambda layout, out: layouts.update({out: layout})
                      or draw_grid(layout, out))
        proc = run_tool('main', '--config-file', REPO / 'configs' / 'alfo_toy.yaml', '--root',
                         toy_root, *TINY, 'data.save_dir', run, 'test.evaluate', 'True',
                         'model.load_weights', run / 'model' / 'model.pth.tar-1',
                         'test.visrank', 'True', 'test.visrank_topk', '3')
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, before, proc, layouts


def test_eval_only_reproduces_the_final_test_in_its_own_folder(runs, evaluation):
    run, before, _, _ = evaluation
    trained = metrics(runs['alfo'])['results']['market1501_attr']
    result = metrics(run / 'eval-model.pth.tar-1')
    again = result['results']['market1501_attr']
    assert again['rank1'] == pytest.approx(trained['rank1'], abs=1e-6)
    assert again['mAP'] == pytest.approx(trained['mAP'], abs=1e-6)
    assert result['epochs'] == 1 and again['epoch'] == 1
    assert 'evaluate: true' in (run / 'eval-model.pth.tar-1' / 'config.yaml').read_text()
    assert (run / 'eval-model.pth.tar-1' / 'test.log').is_file()
    # what training wrote is untouched
    assert {p: p.read_bytes() for p in before} == before
    assert 'evaluate: false' in (run / 'config.yaml').read_text()


def test_an_evaluation_of_untrained_weights_names_epoch_0(toy_root, tmp_path):
    proc = run_tool('main', '--config-file', REPO / 'configs' / 'alfo_toy.yaml', '--root',
                    toy_root, *TINY, 'data.save_dir', tmp_path, 'test.evaluate', 'True')
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = metrics(tmp_path / 'eval-random-init')
    assert result['epochs'] == 0 and result['results']['market1501_attr']['epoch'] == 0


def test_visrank_keeps_the_attribute_metrics_and_captions_every_crop(runs, evaluation, toy_root):
    from PIL import Image

    from alfo_torchreid.evaluation import rank_grid
    run, _, proc, _ = evaluation
    trained = metrics(runs['alfo'])['results']['market1501_attr']
    again = metrics(run / 'eval-model.pth.tar-1')['results']['market1501_attr']
    assert again['attributes']['mA'] == pytest.approx(trained['attributes']['mA'], abs=1e-6)
    assert '** Attribute results on market1501_attr' in proc.stdout
    queries = sorted(market_split(toy_root, 'query').glob('*.jpg'))
    drawn = sorted((run / 'eval-model.pth.tar-1' / 'visrank_market1501_attr').glob('*.png'))
    assert [p.stem for p in drawn] == [q.stem for q in queries]
    with Image.open(drawn[0]) as grid:  # the query and its top 3, each above its caption
        assert grid.size[0] == 4 * rank_grid.CELL_WIDTH
        assert grid.size[1] > rank_grid.IMAGE_SIZE[1] + 2 * rank_grid.FRAME + \
            2 * rank_grid.LINE_HEIGHT


def test_visrank_shows_the_true_attributes_beside_the_predicted_ones(evaluation):
    from alfo_torchreid.evaluation import rank_grid
    _, _, _, layouts = evaluation
    assert layouts
    marks = {'=': rank_grid.GREEN, 'x': rank_grid.RED}
    seen = set()
    for layout in layouts.values():
        assert ' '.join(t for t, _ in layout.title).split() == rank_grid.TRUTH_LEGEND.split()
        for cell in layout.cells[1:]:
            predicted = ' '.join(text for text, colour in cell.lines if colour == rank_grid.BLACK)
            truth = []  # (mark, words, colour) of each truth line, its wrapped pieces joined
            for text, colour in cell.lines:
                if colour == rank_grid.BLACK or text == 'true:':
                    continue
                if text[:2] in ('= ', 'x ') or text == rank_grid.NO_TRUTH:
                    truth.append([text[0], text[2:], colour])
                else:  # a wrapped line goes on
                    assert colour == truth[-1][2]
                    truth[-1][1] += ' ' + text
            assert truth, cell.lines  # every crop shows its truth (or says it has none)
            for mark, words, colour in truth:
                if colour == rank_grid.GREY:
                    assert rank_grid.person_id(cell.path) is None  # a distractor or junk
                    continue
                assert marks[mark] == colour
                if mark == '=':  # agrees: the words of a predicted line
                    assert words in predicted
                seen.add(mark)
    assert 'x' in seen  # a one-epoch model gets things wrong (the marks: test_search.py)


@pytest.mark.parametrize('args, message', [
    (['alfo.nope', '1'], 'error: unknown config key: alfo.nope'),
    (['train.max_epochs', '3'],
     'error: unknown config key: train.max_epochs; did you mean train.max_epoch? (in the '
     'command line)'),
    (['alfo.focal_gamma', '-0.5'], 'error: alfo.focal_gamma must be >= 0, got -0.5'),
    (['train.start_epoch', '3'],
     'error: train.start_epoch 3: a run starts at epoch 0, or where the checkpoint it resumes '
     'ended; to continue a run, resume it with train.resume True (its model/latest.pth.tar) or '
     'model.resume <checkpoint>, and set train.start_epoch 0'),
    (['data.root', '/nonexistent-root'],
     'error: dataset folder "/nonexistent-root/market1501" for market1501_attr does not exist'),
    (['model.pretrained', '/nonexistent/weights.pth'],
     'error: weights file "/nonexistent/weights.pth" does not exist'),
])
def test_bad_input_ends_with_one_line_and_status_2(toy_root, tmp_path, capsys, args, message):
    status = MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root',
                   str(toy_root), 'data.save_dir', str(tmp_path), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert 'Traceback' not in err
    assert err.strip().splitlines()[-1].startswith(message), err


def test_a_config_yaml_holding_a_resumed_start_epoch_still_loads(tmp_path):
    # earlier versions wrote a resumed run's start epoch into its config.yaml;
    # only a training run refuses it
    path = tmp_path / 'config.yaml'
    path.write_text('train:\n  start_epoch: 6\n')
    assert config.load_config(path).train.start_epoch == 6


def test_an_unknown_key_names_the_nearest_known_ones(tmp_path):
    config_file = tmp_path / 'typo.yaml'
    config_file.write_text('train:\n  max_epochs: 3\n')
    with pytest.raises(ConfigError) as error:
        config.load_config(config_file)
    assert str(error.value) == ('unknown config key: train.max_epochs; did you mean '
                                f'train.max_epoch? (in "{config_file}")')
    for key, meant in (('max_epoch', 'train.max_epoch'), ('trian.lr', 'train.lr or loss.center.lr'),
                       ('batch_sizes', 'test.batch_size or train.batch_size'),
                       ('alfo.num_part', 'alfo.num_parts')):
        with pytest.raises(ConfigError, match=rf'^unknown config key: {key}; did you mean '
                                              rf'{meant}\? \(in the command line\)$'):
            config.load_config('', [key, '1'])
    # nothing near enough: no guess ("nope" is not "vote")
    assert config.nearest_keys('alfo.nope', config.flatten(config.get_config())) == []


def test_a_process_with_bad_input_exits_2_with_one_line(tmp_path):
    proc = run_tool('main', '--config-file', REPO / 'configs' / 'alfo_toy.yaml', 'alfo.nope', '1',
                    'data.save_dir', tmp_path, process=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        'error: unknown config key: alfo.nope (in the command line)'], proc.stderr


def test_debug_shows_the_traceback(toy_root, tmp_path):
    # --debug re-raises: the interpreter then prints the traceback and exits 1
    with pytest.raises(ConfigError, match='unknown config key: alfo.nope'):
        MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), 'alfo.nope', '1',
              '--debug'])


def test_compare_writes_table_and_plots(runs, tmp_path, capsys):
    out = tmp_path / 'comparison'
    status = COMPARE([str(runs['alfo']), str(runs['pcb']), '--out', str(out)])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    table = (out / 'comparison.md').read_text()
    alfo = metrics(runs['alfo'])['results']['market1501_attr']
    assert f'| alfo | alfo | market1501_attr | {100 * alfo["rank1"]:.2f} |' in table
    assert '| pcb | pcb_p6 |' in table
    rows = (out / 'comparison.csv').read_text().splitlines()
    assert rows[0].startswith('run,model,dataset,rank1') and len(rows) == 3
    for png in ('cmc.png', 'attributes.png'):
        assert (out / png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert printed.out.count('|') > 20


def test_compare_names_a_run_without_metrics(tmp_path, capsys):
    assert COMPARE([str(tmp_path)]) == 2
    assert f'run folder "{tmp_path}" has no metrics.json' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
