"""The strong recipe (configs/strong/*_toy.yaml) trained end to end on the
toy set: losses fall, the history's lr follows the warm-up epoch by epoch,
and a resumed run continues the schedule and the center loss."""
import contextlib
import io

import pytest
from alfo_run import REPO
import torch

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.serving import inference
from alfo_torchreid.utils.checkpoints import load_checkpoint
from alfo_torchreid.utils.errors import ConfigError
from alfo_torchreid.utils.run_folder import read_history

STRONG = REPO / 'configs' / 'strong'
LR, FACTOR, WARMUP, STEP, EPOCHS = 1e-3, 0.1, 2, 3, 4
# small and quick: 64x32 images (a 4x2 map: two stripes for ALFO), 4 epochs of
# one batch (the toy set's 8 identities x 4 images)
OPTS = ('use_gpu', 'False', 'data.height', '64', 'data.width', '32', 'alfo.num_parts', '2',
        'train.lr', str(LR), 'train.warmup_epochs', str(WARMUP), 'train.warmup_factor',
        str(FACTOR), 'train.stepsize', f'[{STEP}]', 'test.batch_size', '100')
# the weighted terms of each model's loss; of them the triplet and center terms
# must fall within 4 steps. The identity and voted attribute losses of 8 random-
# init identities move by less than their step-to-step noise in so few steps.
TERMS = {'resnet50_bnneck': ('loss_t', 'loss_x', 'loss_c'),
         'alfo': ('loss_id', 'loss_attr', 'loss_triplet', 'loss_center')}
FALLING = {'resnet50_bnneck': ('loss_t', 'loss_c'), 'alfo': ('loss_triplet', 'loss_center')}


@pytest.mark.parametrize('opts, message', [
    (('loss.name', 'softmax', 'sampler.train_sampler', 'RandomSampler'),
     'loss.center.weight 0.0005 needs loss.name triplet'),
    (('alfo.global_branch', 'False'), 'alfo.neck bnneck needs alfo.global_branch True'),
    (('train.warmup_factor', '0.0'), r'train.warmup_factor must be in \(0, 1\]'),
    (('alfo.neck', 'bn'), "alfo.neck must be one of \\['none', 'bnneck'\\]"),
    (('model.name', 'resnet50'), 'alfo.neck bnneck is for ALFO models; model.name resnet50 '
                                 'would ignore it: for the strong baseline use model.name '
                                 'resnet50_bnneck'),
])
def test_strong_keys_refuse_what_cannot_work(opts, message):
    with pytest.raises(ConfigError, match=message):
        config.load_config(str(STRONG / 'alfo_market.yaml'), opts)


def expected_lr(epoch):
    """Epoch ``epoch`` (1-based)'s lr: warm-up from FACTOR, x0.1 from epoch STEP + 1."""
    e = epoch - 1
    return LR * (FACTOR + (1 - FACTOR) * min(e, WARMUP) / WARMUP) * 0.1 ** (e >= STEP)


def train(toy_root, save_dir, model, max_epoch, *opts):
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):
        return run_lib.main(str(STRONG / f'{model}_toy.yaml'),
                            ['data.root', str(toy_root), 'data.save_dir', str(save_dir),
                             'train.max_epoch', str(max_epoch), *OPTS, *opts])


@pytest.mark.parametrize('model', ['resnet50_bnneck', 'alfo'])
def test_recipe_trains_and_resumes(toy_root, tmp_path, model):
    train(toy_root, tmp_path, model, EPOCHS - 2)
    saved = load_checkpoint(str(tmp_path / 'model' / 'latest.pth.tar'))
    assert saved['center_loss']['centers']['centers'].shape == (8, 2048)
    engine = train(toy_root, tmp_path, model, EPOCHS, 'train.resume', 'True')
    history = read_history(str(tmp_path))
    assert [h['epoch'] for h in history] == list(range(1, EPOCHS + 1))
    assert [h['lr'] for h in history] == pytest.approx(
        [expected_lr(e) for e in range(1, EPOCHS + 1)], rel=1e-12)
    total = [sum(h[k] for k in TERMS[model]) for h in history]
    assert total[-1] < 0.75 * total[0]
    for key in FALLING[model]:
        assert history[-1][key] < history[0][key], key
    results = engine.results['market1501_attr']
    assert 0 <= results['mAP'] <= 1
    if model == 'alfo':  # the tools rebuild the BNNeck from the run's config
        trained = inference.load_trained_alfo(tmp_path / 'model' / f'model.pth.tar-{EPOCHS}',
                                              device='cpu')
        images = torch.randn(2, 3, 64, 32)
        with torch.no_grad():
            features, _ = trained.network(images)
            torch.testing.assert_close(features, engine.network.eval()(images))
        assert trained.network.model.neck is not None
