"""The paper's Table 1 rows, each one config file, build and train a step."""

import pytest
from alfo_run import REPO
import torch
import torchreid

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA
from alfo_torchreid.models import ALFO

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


@pytest.mark.parametrize('dataset', ['market', 'duke'])
def test_paper_geometry_configs_cut_a_7x7_map_into_rows_0_1_to_5_6(dataset):
    cfg = config.load_config(REPO / 'configs' / f'alfo_{dataset}_paper.yaml')
    base = config.load_config(REPO / 'configs' / f'alfo_{dataset}.yaml')
    changed = {(section, key) for section in ('data', 'alfo', 'model', 'train', 'test')
               for key in cfg[section] if cfg[section][key] != base[section][key]}
    assert changed == {('data', 'height'), ('data', 'width'), ('data', 'save_dir'),
                       ('alfo', 'last_stride'), ('alfo', 'stripe_height'),
                       ('alfo', 'stripe_stride')}
    assert (cfg.data.height, cfg.data.width) == (224, 224)
    torch.manual_seed(0)
    model = ALFO(5, schema=MARKET_SCHEMA if dataset == 'market' else DUKE_SCHEMA,
                 **config.alfo_model_kwargs(cfg)).eval()
    with torch.no_grad():
        fmap = model.featuremaps(torch.randn(2, 3, cfg.data.height, cfg.data.width))
        whole, stripes = model.pool(fmap)
    assert fmap.shape == (2, 2048, 7, 7)
    for i in range(6):  # stripe i is the mean of rows i and i + 1
        assert torch.allclose(stripes[:, i], fmap[:, :, i:i + 2].mean((2, 3)), atol=1e-5)
    assert torch.allclose(whole, fmap.mean((2, 3)), atol=1e-5)
