"""Crash safety: atomic checkpoints, exact resume after SIGKILL, bad inputs."""
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import torch
import paused_main
from alfo_run import REPO, assert_same_weights, history_without_times, load_tool, market_split

from alfo_torchreid.data.attributes import DUKE_SCHEMA
from alfo_torchreid.data.toy import write_attribute_mat
from alfo_torchreid.utils import atomic, checkpoints, compat
from alfo_torchreid.utils.errors import CheckpointError, TrainingError
from alfo_torchreid.utils.run_folder import restore_history, resumed_history

MAIN = load_tool('main').main


# -- atomic checkpoints -----------------------------------------------------

class _FailingFile(io.RawIOBase):
    """A file object that accepts ``limit`` bytes, then fails like a full disk."""

    def __init__(self, real, limit):
        self.real, self.left = real, limit

    def writable(self):
        return True

    def write(self, data):
        if len(data) > self.left:
            raise OSError(28, 'No space left on device')
        self.left -= len(data)
        return self.real.write(data)


def test_a_save_failing_half_way_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / 'model' / 'latest.pth.tar'
    good = {'state_dict': {'w': torch.arange(1000.)}, 'epoch': 3}
    checkpoints.atomic_save(good, path)
    before = path.read_bytes()
    real_open = open

    def failing_open(file, mode='r', *args, **kwargs):
        return _FailingFile(real_open(file, mode, *args, **kwargs), limit=500)

    newer = {'state_dict': {'w': torch.zeros(1000)}, 'epoch': 4}
    # atomic_save's temporary file is opened by alfo_torchreid.utils.atomic; torch's zip
    # writer may turn the OSError into a RuntimeError on its way out
    with mock.patch.object(atomic, 'open', failing_open, create=True), \
            pytest.raises((OSError, RuntimeError)):
        checkpoints.atomic_save(newer, path)
    assert path.read_bytes() == before
    assert checkpoints.load_checkpoint(path)['epoch'] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ['latest.pth.tar']  # no temp left


# -- exact resume after a real SIGKILL --------------------------------------

# the learning rate drops after the first epoch: the resumed second epoch must
# take the restored scheduler's rate
RESUME_OPTS = ['train.max_epoch', '2', 'train.batch_size', '16', 'train.deterministic', 'True',
               'test.batch_size', '64', 'train.stepsize', '[1]', 'train.print_freq', '100']

# a toy run takes seconds quiet and minutes under load: past this it is stuck
HANG_S = 900


def _start(toy_root, save_dir, *extra, pause_after=None):
    """tools/main.py on the toy config in a new process; with ``pause_after``
    it stops after that epoch's checkpoint and history line and waits for a
    signal (tests/paused_main.py: see :func:`_wait_until_paused`)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH',
                                                                                 '')]))
    main = [sys.executable, str(REPO / 'tools' / 'main.py')]
    if pause_after is not None:
        env.update(TEST_PAUSE_AFTER_EPOCH=str(pause_after),
                   TEST_PAUSED_FILE=str(save_dir.with_name(save_dir.name + '.paused')))
        main = paused_main.command()
    # output to a file: a full pipe would stop the run before its pause
    with open(save_dir.with_name(save_dir.name + '.out'), 'w') as out:
        return subprocess.Popen(
            [*main, '--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root',
             str(toy_root), *RESUME_OPTS, 'data.save_dir', str(save_dir), *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env)


def _output(proc, save_dir):
    """Waits for ``proc`` (of :func:`_start`) to end; its stdout and stderr.
    A run that has not ended after ``HANG_S`` fails the test instead of
    hanging the suite (a toy run takes seconds, minutes on a loaded machine)."""
    out = save_dir.with_name(save_dir.name + '.out')
    try:
        proc.wait(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f'run still going after {HANG_S} s: {out.read_text()[-2000:]}')
    return out.read_text()


def _wait_until_paused(proc, save_dir):
    """Waits until ``proc`` (started with ``pause_after``) has paused: an event
    of the run, not a guess of how long it takes. Fails if it ends first."""
    paused, deadline = save_dir.with_name(save_dir.name + '.paused'), time.monotonic() + HANG_S
    while not paused.exists():
        if proc.poll() is not None:
            pytest.fail(f'run ended before its pause: {_output(proc, save_dir)[-2000:]}')
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f'run not paused after {HANG_S} s: {_output(proc, save_dir)[-2000:]}')
        time.sleep(0.05)


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(toy_root, tmp_path):
    whole, killed = tmp_path / 'whole', tmp_path / 'killed'
    first = _start(toy_root, whole)
    second = _start(toy_root, killed, pause_after=1)
    _wait_until_paused(second, killed)
    second.send_signal(signal.SIGKILL)
    assert second.wait() == -signal.SIGKILL
    output = _output(first, whole)
    assert first.returncode == 0, output[-2000:]
    assert not (killed / 'metrics.json').exists()

    resumed = _start(toy_root, killed, 'train.resume', 'True')
    output = _output(resumed, killed)
    assert resumed.returncode == 0, output[-2000:]
    assert 'continuing at epoch 2' in output

    a, _ = assert_same_weights(*(d / 'model' / 'model.pth.tar-2' for d in (whole, killed)))
    assert a['state_dict']['vote_counts'].sum() > 0
    assert history_without_times(whole) == history_without_times(killed)
    results = [json.loads((d / 'metrics.json').read_text())['results'] for d in (whole, killed)]
    assert results[0] == results[1]


# -- non-finite loss --------------------------------------------------------

def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(toy_root, tmp_path, capsys):
    import alfo_torchreid.engine.engine as engine_module
    original = engine_module.ImageFocalVoteEngine.forward_backward

    def nan_in_epoch_2(self, data):
        if self.epoch == 1:
            data['img'][:] = float('nan')
        return original(self, data)

    with mock.patch.object(engine_module.ImageFocalVoteEngine, 'forward_backward',
                           nan_in_epoch_2):
        status = MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root',
                       str(toy_root), 'data.save_dir', str(tmp_path), *RESUME_OPTS])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('error: loss part "loss" is nan at epoch 2, iteration 1')
    latest = checkpoints.load_checkpoint(tmp_path / 'model' / 'latest.pth.tar')
    assert latest['epoch'] == 1
    assert not (tmp_path / 'model' / 'model.pth.tar-2').exists()


# -- bad inputs: one line naming the file or value, status 2 ----------------

def _copy_tree(toy_root, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(toy_root / 'market1501', root / 'market1501')
    return root


def _first_image(root):
    return sorted(market_split(root, 'bounding_box_train').iterdir())[0]


def _truncate_image(root):
    image = _first_image(root)
    image.write_bytes(image.read_bytes()[:300])
    return str(image)


def _not_an_image(root):
    image = _first_image(root)
    image.write_text('not a jpeg')
    return str(image)


def _remove_split(root):
    shutil.rmtree(market_split(root, 'query'))
    return 'query" does not exist'


def _empty_split(root):
    for image in market_split(root, 'bounding_box_train').iterdir():
        image.unlink()
    return 'holds no .jpg images'


def _corrupt_attributes(root):
    (root / 'market1501' / 'market_attribute.mat').write_bytes(b'MATLAB 5.0 garbage' * 10)
    return 'market_attribute.mat'


def _truncated_attributes(root):
    path = root / 'market1501' / 'market_attribute.mat'
    path.write_bytes(path.read_bytes()[:400])
    return 'market_attribute.mat'


def _duke_attributes_for_market(root):
    labels = {pid: [0] * len(DUKE_SCHEMA) for pid in (1, 2)}
    write_attribute_mat(root / 'market1501' / 'market_attribute.mat', DUKE_SCHEMA, labels, labels)
    return 'market_attribute.mat'


def _attributes_missing_training_ids(root):
    from alfo_torchreid.data.attributes import MARKET_SCHEMA, load_attribute_file
    path = root / 'market1501' / 'market_attribute.mat'
    annotation = load_attribute_file(path)
    train = dict(list(annotation.train.items())[:3])
    write_attribute_mat(path, MARKET_SCHEMA, train, annotation.test)
    return 'has no labels for 5 of the training identities'


BAD_TREES = {
    'truncated image': _truncate_image,
    'not an image': _not_an_image,
    'missing split folder': _remove_split,
    'empty split': _empty_split,
    'corrupt attribute file': _corrupt_attributes,
    'truncated attribute file': _truncated_attributes,
    'attribute file of the other dataset': _duke_attributes_for_market,
    'attribute file missing training ids': _attributes_missing_training_ids,
}


def _run_main(capsys, root, save_dir, *opts):
    status = MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root', str(root),
                   'data.save_dir', str(save_dir), 'train.max_epoch', '1',
                   'train.batch_size', '16', *map(str, opts)])
    err = capsys.readouterr().err.strip().splitlines()
    return status, err


@pytest.mark.parametrize('case', BAD_TREES)
def test_bad_data_is_one_line_naming_it(case, toy_root, tmp_path, capsys):
    root = _copy_tree(toy_root, tmp_path)
    expected = BAD_TREES[case](root)
    status, err = _run_main(capsys, root, tmp_path / 'run')
    assert status == 2
    assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], err


def _checkpoint(tmp_path, **content):
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': {}, 'epoch': 1, **content}, path)
    return path


class _Payload:
    def __reduce__(self):
        return (print, ('this ran while loading',))


@pytest.mark.parametrize('content, expected', [
    (dict(signature=checkpoints.model_signature(5)),
     'was trained with 5 identities, the model has 8'),
    (dict(signature=checkpoints.model_signature(8, DUKE_SCHEMA)),
     'has the dukemtmcreid attribute schema (23 attributes), the model has the market1501'),
    (dict(extra=_Payload()), 'loading it means unpickling'),
])
def test_a_checkpoint_that_does_not_fit_is_refused(content, expected, toy_root, tmp_path,
                                                    capsys):
    path = _checkpoint(tmp_path, **content)
    status, err = _run_main(capsys, toy_root, tmp_path / 'run', 'model.load_weights', path)
    assert status == 2
    assert len(err) == 1 and expected in err[0] and str(path) in err[0], err


def test_trusting_a_checkpoint_is_explicit(tmp_path, capsys):
    path = _checkpoint(tmp_path, extra=_Payload())
    with pytest.raises(CheckpointError, match='trust_checkpoint=True'):
        checkpoints.load_checkpoint(path)
    assert 'this ran while loading' not in capsys.readouterr().out
    assert checkpoints.load_checkpoint(path, trust=True)['epoch'] == 1
    assert 'this ran while loading' in capsys.readouterr().out


@pytest.mark.parametrize('opts, expected', [
    (['alfo.num_parts', '9'], 'the feature map has 8 rows (H=8), too few for num_parts=9'),
    (['alfo.focal_gamma', '-1'], 'alfo.focal_gamma must be >= 0, got -1.0'),
    (['alfo.focal_alpha', '1.5'], 'alfo.focal_alpha must be in [0, 1], got 1.5'),
    (['alfo.vote', 'best'], "alfo.vote must be one of ['majority', 'min', 'mean'], got 'best'"),
])
def test_a_config_value_out_of_range_is_one_line(opts, expected, toy_root, tmp_path, capsys):
    status, err = _run_main(capsys, toy_root, tmp_path, *opts)
    assert status == 2
    assert len(err) == 1 and expected in err[0], err


# -- a finished run, and what resuming it may and may not do ---------------------

TINY = ['train.max_epoch', '1', 'train.batch_size', '16', 'test.batch_size', '64',
        'train.print_freq', '100']


@pytest.fixture(scope='module')
def finished_run(toy_root, module_tmp):
    """A one-epoch toy ALFO run, trained in-process."""
    run = module_tmp('finished') / 'run'
    status = MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root',
                   str(toy_root), 'data.save_dir', str(run), *TINY])
    assert status == 0
    return run


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob('*') if p.is_file()}


def _copy_run(finished_run, tmp_path):
    run = tmp_path / 'run'
    shutil.copytree(finished_run, run)
    return run


def _main(capsys, toy_root, run, *opts):
    status = MAIN(['--config-file', str(REPO / 'configs' / 'alfo_toy.yaml'), '--root',
                   str(toy_root), 'data.save_dir', str(run), *TINY, *map(str, opts)])
    out = capsys.readouterr()
    return status, out.out, out.err.strip().splitlines()


def test_a_checkpoint_with_non_finite_buffers_is_never_written(tmp_path):
    path = tmp_path / 'model' / 'latest.pth.tar'
    model = torch.nn.BatchNorm1d(4)
    checkpoints.save_training_state({'state_dict': model.state_dict(), 'epoch': 1}, path)
    before = path.read_bytes()
    model.running_var[2] = float('nan')  # what a diverging SGD step leaves in BatchNorm
    with pytest.raises(TrainingError, match=r"model's running_var became NaN or infinite at "
                                            r'epoch 2: training stopped without writing'):
        checkpoints.save_training_state({'state_dict': model.state_dict(), 'epoch': 2}, path)
    assert path.read_bytes() == before


def test_a_disk_that_fails_while_saving_is_one_error_and_keeps_the_old_file(tmp_path):
    path = tmp_path / 'latest.pth.tar'
    checkpoints.save_training_state({'state_dict': {'w': torch.ones(3)}, 'epoch': 1}, path)
    with mock.patch.object(checkpoints, 'atomic_save',
                           side_effect=RuntimeError('PytorchStreamWriter failed writing file')), \
            pytest.raises(CheckpointError, match=r'could not write checkpoint ".*latest.pth.tar" '
                                                 r'\(PytorchStreamWriter failed writing file\); '
                                                 r'the previous file'):
        checkpoints.save_training_state({'state_dict': {'w': torch.zeros(3)}, 'epoch': 2}, path)
    assert checkpoints.load_checkpoint(path)['epoch'] == 1


def test_resuming_with_nothing_to_train_says_so_and_changes_no_file(finished_run, toy_root,
                                                                    tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = _snapshot(run)
    status, out, err = _main(capsys, toy_root, run, 'train.resume', 'True')
    assert status == 0 and not err
    assert ('Nothing to train: the run in' in out and 'is at epoch 1 and train.max_epoch is 1; '
            'no file was changed' in out)
    # one thing said about the epoch (not "continuing at epoch 2" first); no config dump
    assert [line for line in out.splitlines() if 'epoch' in line] == \
        [line for line in out.splitlines() if line.startswith('Nothing to train')]
    assert 'Config:' not in out and '# ids' not in out
    assert _snapshot(run) == before


def test_verbose_prints_the_config_and_the_dataset_tables(finished_run, toy_root, tmp_path,
                                                          capsys):
    run = _copy_run(finished_run, tmp_path)
    status, out, err = _main(capsys, toy_root, run, 'train.resume', 'True', '--verbose')
    assert status == 0 and not err
    assert 'Config:\n' in out and 'max_epoch: 1' in out
    assert out.count('subset   | # ids | # images | # cameras') == 2  # torchreid's tables


def test_a_run_killed_between_its_last_checkpoint_and_history_line_ends_as_it_would(
        finished_run, toy_root, tmp_path, capsys):
    # found by benchmarks/kill_resume.py: killed after latest.pth.tar of the last
    # epoch was written, before its history line, its final test and snapshot
    run = _copy_run(finished_run, tmp_path)
    (run / 'history.jsonl').write_text('')
    for written_later in ('metrics.json', 'model/model.pth.tar-1'):
        (run / written_later).unlink()
    status, out, err = _main(capsys, toy_root, run, 'train.resume', 'True')
    assert status == 0, err
    assert 'put back the line of epoch 1, kept in its checkpoint' in out
    assert 'was stopped in its final test: testing its epoch-1 weights now' in out
    assert 'continuing at epoch' not in out
    assert (run / 'history.jsonl').read_bytes() == (finished_run / 'history.jsonl').read_bytes()
    snapshots = assert_same_weights(*(r / 'model' / 'model.pth.tar-1'
                                      for r in (finished_run, run)))
    assert snapshots[0]['rank1'] == snapshots[1]['rank1'] is not None
    results = [json.loads((r / 'metrics.json').read_text())['results'] for r in (finished_run, run)]
    assert results[0] == results[1]


def test_restoring_the_history_keeps_whole_lines_up_to_the_checkpoint(tmp_path):
    lines = [json.dumps({'epoch': e, 'loss': 1.0 / e}) + '\n' for e in (1, 2, 3)]
    history = tmp_path / 'history.jsonl'
    history.write_text(lines[0] + lines[1][:9])  # epoch 2's line torn
    with pytest.warns(UserWarning, match='dropped its last line'):
        restore_history(str(tmp_path), resumed_history(str(tmp_path), 2, json.loads(lines[1])))
    assert history.read_text() == lines[0] + lines[1]
    assert resumed_history(str(tmp_path), 2, json.loads(lines[1])) is None  # nothing missing
    history.unlink()
    assert resumed_history(str(tmp_path), 1, json.loads(lines[0])) == \
        lines[0].encode()  # killed before the first line


def test_resuming_an_earlier_checkpoint_drops_the_history_of_the_later_epochs(tmp_path, capsys):
    # model.resume of the snapshot of epoch 1 (no history line in it) in a run at epoch 3
    lines = [json.dumps({'epoch': e, 'loss': 1.0 / e}) + '\n' for e in (1, 2, 3)]
    history = tmp_path / 'history.jsonl'
    history.write_text(''.join(lines))
    content = resumed_history(str(tmp_path), 1)
    assert history.read_text() == ''.join(lines)  # read only
    assert 'dropped the lines of the epochs after 1' in capsys.readouterr().out
    restore_history(str(tmp_path), content)
    assert history.read_text() == lines[0]


def _stale_partial_file(folder, name='.latest.pth.tar.0123456789ab.part'):
    """A temporary file of a save killed a minute ago (atomic.PartialFile's name)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b'half a file')
    os.utime(path, (time.time() - 60, time.time() - 60))
    return path


def test_a_new_run_in_a_folder_holding_a_run_is_refused(finished_run, toy_root, tmp_path,
                                                       capsys):
    run = _copy_run(finished_run, tmp_path)
    _stale_partial_file(run / 'model')  # a refused run removes nothing, not even these
    before = _snapshot(run)
    status, _, err = _main(capsys, toy_root, run)
    assert status == 2 and len(err) == 1
    assert f'run folder "{run}" already holds a run' in err[0] and 'train.resume True' in err[0]
    assert _snapshot(run) == before


def test_resume_takes_the_configs_learning_rate_drops_a_torn_line_and_cleans_partial_files(
        finished_run, toy_root, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    assert (run / '.lock').read_text().isdigit()  # left by a process that has ended: no block
    with open(run / 'history.jsonl', 'a') as f:
        f.write('{"epoch": 2, "lr": 0.0')  # a write cut short by a crash
    stale = _stale_partial_file(run / 'model')
    with pytest.warns(UserWarning, match='dropped its last line'):
        status, out, err = _main(capsys, toy_root, run, 'train.resume', 'True',
                                 'train.max_epoch', '2', 'train.lr', '0.0001')
    assert status == 0, err
    assert ("Resume: the config's learning rate 0.0001 replaces the checkpoint's 0.001 for "
            'parameter group 0' in out)
    latest = checkpoints.load_checkpoint(run / 'model' / 'latest.pth.tar')
    assert latest['epoch'] == 2
    assert latest['optimizer']['param_groups'][0]['initial_lr'] == pytest.approx(1e-4)
    lines = (run / 'history.jsonl').read_text().splitlines()
    assert [json.loads(line)['epoch'] for line in lines] == [1, 2]
    assert not stale.exists() and 'Removed 1 unfinished file' in out
    assert json.loads((run / 'metrics.json').read_text())['epochs'] == 2


@pytest.mark.parametrize('opts, expected', [
    (['train.optim', 'sgd'], 'was saved by another optimizer setup'),
    (['train.staged_lr', 'True'], 'was saved by another optimizer setup'),
])
def test_resuming_with_another_optimizer_setup_is_one_line(finished_run, toy_root, tmp_path,
                                                           capsys, opts, expected):
    run = _copy_run(finished_run, tmp_path)
    before = _snapshot(run)
    status, _, err = _main(capsys, toy_root, run, 'train.resume', 'True', 'train.max_epoch', '2',
                           *opts)
    assert status == 2 and len(err) == 1 and expected in err[0], err
    assert 'model.load_weights' in err[0]
    assert _snapshot(run) == before


def test_only_the_partial_files_of_this_package_are_removed_and_never_through_a_link(
        tmp_path):
    from alfo_torchreid.utils.run_folder import RunFolder
    run, outside = tmp_path / 'run', tmp_path / 'outside'
    stale = _stale_partial_file(run / 'model')
    kept = [_stale_partial_file(run, '.notes.part'),  # the user's, not PartialFile's name
            _stale_partial_file(run, '.a.0123456789AB.part'),
            _stale_partial_file(outside),  # reached through a link to its folder
            _stale_partial_file(run / 'model' / 'eval-x'),  # a folder locked on its own
            _stale_partial_file(run / 'notes' / 'deep')]  # no folder the run writes
    (run / 'model' / 'eval-x' / '.lock').write_text('')
    (run / 'linked').symlink_to(outside, target_is_directory=True)
    (run / '.b.0123456789ab.part').symlink_to(kept[0])  # a link of that name: not a file
    with RunFolder(run) as folder:
        assert stale.exists()  # not on taking the lock: the run's checks come first
        fresh = _stale_partial_file(run, '.c.0123456789ab.part')
        os.utime(fresh, (time.time() + 60, time.time() + 60))  # written after the lock
        assert folder.remove_stale_partial_files(('model', 'linked', 'model/eval-*'),
                                                 before=time.time()) == [str(stale)]
    assert all(p.exists() for p in kept) and fresh.exists()
    assert (run / '.b.0123456789ab.part').is_symlink()


def test_a_second_evaluation_into_a_finished_evaluation_folder_is_refused(
        finished_run, toy_root, tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    evaluated = run / 'eval-model.pth.tar-1'
    evaluated.mkdir()
    (evaluated / 'metrics.json').write_text('{"results": "of the first evaluation"}')
    (evaluated / 'config.yaml').write_text('test:\n  rerank: true\n')
    before = _snapshot(run)
    status, _, err = _main(capsys, toy_root, run, 'test.evaluate', 'True',
                           'model.load_weights', run / 'model' / 'model.pth.tar-1')
    assert status == 2 and len(err) == 1, err
    assert f'evaluation folder "{evaluated}" already holds an evaluation' in err[0]
    after = _snapshot(run)
    after.pop(Path('eval-model.pth.tar-1/.lock'), None)  # no content of a run
    assert after == before


def test_a_damaged_history_is_refused_before_any_file_changes(finished_run, toy_root, tmp_path,
                                                               capsys):
    run = _copy_run(finished_run, tmp_path)
    history = run / 'history.jsonl'
    history.write_text('{"epoch": 1, "lo\n' + history.read_text())  # damaged, not the last line
    _stale_partial_file(run / 'model')  # a refused run removes nothing, not even these
    before = _snapshot(run)
    status, _, err = _main(capsys, toy_root, run, 'train.resume', 'True', 'train.max_epoch', '2')
    assert status == 2 and len(err) == 1, err
    assert f'"{history}" line 1 is not a history record' in err[0] and 'damaged' in err[0]
    assert _snapshot(run) == before


def test_resuming_adam_as_amsgrad_is_refused_before_any_file_changes(finished_run, toy_root,
                                                                     tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    before = _snapshot(run)
    status, _, err = _main(capsys, toy_root, run, 'train.resume', 'True', 'train.max_epoch', '2',
                           'train.optim', 'amsgrad')
    assert status == 2 and len(err) == 1, err
    assert 'was saved by an optimizer that keeps other state (max_exp_avg_sq kept by one' in err[0]
    assert _snapshot(run) == before  # config.yaml and the lock included


def test_resuming_from_a_weights_only_snapshot_points_to_latest(finished_run, toy_root, tmp_path,
                                                               capsys):
    snapshot = finished_run / 'model' / 'model.pth.tar-1'
    status, _, err = _main(capsys, toy_root, tmp_path / 'new', 'model.resume', snapshot,
                           'train.max_epoch', '2')
    assert status == 2 and len(err) == 1, err
    assert (f'checkpoint "{snapshot}" holds the weights alone' in err[0] and
            "resume from the run's model/latest.pth.tar (train.resume True)" in err[0] and
            f'model.load_weights "{snapshot}"' in err[0])
    assert not (tmp_path / 'new').exists()


def test_nothing_to_train_leaves_even_a_torn_history_line_as_it_was(finished_run, toy_root,
                                                                    tmp_path, capsys):
    run = _copy_run(finished_run, tmp_path)
    with open(run / 'history.jsonl', 'a') as f:
        f.write('{"epoch": 2, "lr": 0.0')
    before = _snapshot(run)
    status, out, err = _main(capsys, toy_root, run, 'train.resume', 'True')
    assert status == 0 and not err
    assert 'no file was changed' in out
    assert _snapshot(run) == before


def test_resuming_from_a_bare_state_dict_is_one_line(finished_run, toy_root, tmp_path, capsys):
    weights = tmp_path / 'weights.pth'
    torch.save(checkpoints.load_checkpoint(finished_run / 'model' / 'latest.pth.tar')
               ['state_dict'], weights)
    status, _, err = _main(capsys, toy_root, tmp_path / 'new', 'model.resume', weights)
    assert status == 2 and len(err) == 1
    assert f'checkpoint "{weights}" is not a training checkpoint' in err[0]
    assert f'use model.load_weights "{weights}"' in err[0]


def test_a_second_run_on_a_locked_folder_names_the_holder(finished_run, toy_root, tmp_path,
                                                         capsys):
    from alfo_torchreid.utils.run_folder import RunFolder
    run = _copy_run(finished_run, tmp_path)
    with RunFolder(run):
        status, _, err = _main(capsys, toy_root, run, 'train.resume', 'True',
                               'train.max_epoch', '2')
    assert status == 2 and len(err) == 1
    assert err[0] == (f'error: run folder "{run}" is in use by another run (pid {os.getpid()}): '
                      'wait for it to end, or give this run another data.save_dir')


@pytest.mark.parametrize('save_dir, expected', [
    (lambda tmp: '', 'data.save_dir is empty'),
    (lambda tmp: tmp / 'a_file', 'cannot use'),
    (lambda tmp: tmp / 'a_file' / 'under', 'cannot use'),
    (lambda tmp: Path('/proc/alfo-run'), 'cannot use'),  # a file system that refuses
])
def test_a_run_folder_that_cannot_be_written_is_one_line(toy_root, tmp_path, capsys, save_dir,
                                                        expected):
    (tmp_path / 'a_file').write_text('x')
    status, _, err = _main(capsys, toy_root, save_dir(tmp_path))
    assert status == 2 and len(err) == 1 and expected in err[0], err


def test_an_image_too_large_for_pillow_is_one_error(tmp_path):
    from PIL import Image

    from alfo_torchreid.utils.errors import ImageReadError
    path = tmp_path / '0001_c1s1_000001_00.jpg'
    Image.new('RGB', (64, 128)).save(path)
    with mock.patch.object(Image, 'MAX_IMAGE_PIXELS', 1000), \
            pytest.raises(ImageReadError, match=f'image "{path}" cannot be read'):
        compat.read_image(str(path))


def test_an_error_in_a_dataloader_worker_is_one_line(toy_root, tmp_path, capsys):
    root = _copy_tree(toy_root, tmp_path)
    image = _not_an_image(root)
    status, out, err = _main(capsys, root, tmp_path / 'run', 'data.workers', '1')
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith('error: image "') and image in err[0]
    assert 'Traceback' not in out + '\n'.join(err)


@pytest.mark.parametrize('signum, status', [(signal.SIGINT, 130), (signal.SIGTERM, 143),
                                            (signal.SIGKILL, -signal.SIGKILL)])
def test_a_signal_during_training_keeps_the_checkpoint_and_the_log(toy_root, tmp_path, signum,
                                                                   status):
    run = tmp_path / 'run'
    proc = _start(toy_root, run, 'train.print_freq', '1', pause_after=1)  # of 2 epochs
    _wait_until_paused(proc, run)
    proc.send_signal(signum)
    output = _output(proc, run)
    assert proc.returncode == status, output[-2000:]
    if signum != signal.SIGKILL:
        assert 'interrupted: what was saved is kept' in output and 'Traceback' not in output
    assert checkpoints.load_checkpoint(run / 'model' / 'latest.pth.tar')['epoch'] == 1
    assert not (run / 'metrics.json').exists()
    # every line printed before the epoch's history line is in the log, whole
    log = (run / 'train.log').read_text()
    steps = re.findall(r'^epoch: \[1/2\]\[(\d+)/(\d+)\]', log, re.MULTILINE)
    assert steps and steps[-1][0] == steps[-1][1], log[-2000:]
    assert log.endswith('\n')


def test_snapshots_hold_the_weights_alone_and_latest_the_whole_state(finished_run):
    snapshot_path = finished_run / 'model' / 'model.pth.tar-1'
    latest_path = finished_run / 'model' / 'latest.pth.tar'
    snapshot, latest = (checkpoints.load_checkpoint(p) for p in (snapshot_path, latest_path))
    assert set(snapshot) == {'state_dict', 'epoch', 'rank1', 'signature', 'description'}
    assert {'optimizer', 'scheduler', 'rng'} <= set(latest)
    for name, tensor in snapshot['state_dict'].items():
        assert torch.equal(tensor, latest['state_dict'][name]), name
    # Adam keeps two moments per parameter: the snapshot is about a third of latest
    assert snapshot_path.stat().st_size < 0.4 * latest_path.stat().st_size
