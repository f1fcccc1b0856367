"""The paper's Table 1 rows, each one config file, build and train a step."""
from pathlib import Path

import pytest
import torch
import torchreid

from alfo_torchreid import config
from alfo_torchreid import run as run_lib

REPO = Path(__file__).resolve().parents[1]
TOY = ['data.height', '128', 'data.width', '64', 'data.workers', '0', 'train.batch_size', '8',
       'model.pretrained', '', 'data.transforms', '[]']


@pytest.fixture(scope='module')
def datamanager(toy_root):
    cfg = config.load_config(REPO / 'configs' / 'alfo_market.yaml',
                             ['data.root', str(toy_root), 'use_gpu', 'False', *TOY])
    return run_lib.build_datamanager(cfg)


# config -> (has identity loss, has attribute loss, retrieval feature size)
ROWS = {
    'local_only': (False, True, 6 * 2048),
    'global_only': (True, False, 2048),
    'no_focal': (True, True, 2048),
    'alfo': (True, True, 2048),
}


@pytest.mark.parametrize('row', ROWS)
def test_table1_row_trains_a_step(row, datamanager, toy_root):
    cfg = config.load_config(REPO / 'configs' / 'ablation' / f'{row}.yaml',
                             ['data.root', str(toy_root), 'use_gpu', 'False', *TOY])
    has_id, has_attr, feature_dim = ROWS[row]
    torch.manual_seed(0)
    model = run_lib.build_model(cfg, datamanager)
    optimizer = torchreid.optim.build_optimizer(model, **config.optimizer_kwargs(cfg))
    engine = run_lib.build_engine(cfg, datamanager, model, optimizer, None)
    engine.epoch, engine.batch_idx, engine.num_batches = 0, 0, 1
    summary = engine.forward_backward(next(iter(datamanager.train_loader)))
    assert ('loss_id' in summary) == has_id and ('loss_attr' in summary) == has_attr
    assert (model.vote_counts.sum() > 0).item() == has_attr if has_attr else True
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 128, 64)).shape == (2, feature_dim)


def test_no_focal_is_half_cross_entropy_and_alfo_is_focal(datamanager, toy_root):
    def loss_of(row):
        cfg = config.load_config(REPO / 'configs' / 'ablation' / f'{row}.yaml',
                                 ['data.root', str(toy_root), 'use_gpu', 'False', *TOY])
        torch.manual_seed(0)
        model = run_lib.build_model(cfg, datamanager)
        engine = run_lib.build_engine(cfg, datamanager, model, torch.optim.SGD(
            model.parameters(), lr=0.0), None)
        return engine.criterion.alpha, engine.criterion.gamma

    assert loss_of('no_focal') == (0.5, 0.0)
    assert loss_of('alfo') == (0.5, 2.0)
