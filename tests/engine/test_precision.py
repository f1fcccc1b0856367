"""Mixed precision (train.amp) and channels-last (train.channels_last) of ALFO's steps."""
import pytest
import torch
from alfo_run import REPO, refused_run
from test_engine import make_datamanager

from alfo_torchreid import config, run as run_lib
from alfo_torchreid.engine.engine import ImageFocalVoteEngine
from alfo_torchreid.engine.precision import MixedPrecision
from alfo_torchreid.losses import ALFOLoss
from alfo_torchreid.models import ALFO
from alfo_torchreid.models.alfo import ALFOOutputs
from alfo_torchreid.utils import checkpoints

# bf16 keeps 8 significant bits (a relative rounding of up to 2^-9 = 0.2 %); through
# ResNet-50 and the heads the losses of a step move by 0.03-0.3 % (measured on two
# seeds; channels-last changes only the order of the sums). 1 % is bf16's precision
# with room, and far from what a loss computed in
# bf16 or a step without autocast would give. The steps compared use the 'mean' vote:
# at initialisation the stripes' losses differ by less than bf16's precision, so the
# majority vote may pick another stripe in bf16 and move the attribute loss by a few
# per cent (1.5-9 % on the batches tried) for reasons of the vote, not of precision.
BF16_TOLERANCE = 0.01


@pytest.fixture(scope='module')
def setup(toy_root):
    """(datamanager, one training batch, initial weights) on the toy tree."""
    datamanager = make_datamanager(toy_root)
    torch.manual_seed(0)
    batch = next(iter(datamanager.train_loader))
    model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema)
    return datamanager, batch, model.state_dict()


def one_step(setup, amp='off', channels_last=False):
    """One ALFO training step (vote 'mean') from the same weights and batch.

    Returns:
        (logged summary, {'input', 'output'} the model saw and gave, the engine).
    """
    datamanager, batch, weights = setup
    model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema)
    model.load_state_dict(weights)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    engine = ImageFocalVoteEngine(datamanager, model, torch.optim.Adam(model.parameters()),
                                  use_gpu=False, precision=MixedPrecision(amp),
                                  channels_last=channels_last, vote_mode='mean')
    engine.epoch = engine.batch_idx = 0
    seen = {}
    model.register_forward_hook(lambda m, args, out: seen.update(input=args[0], output=out))
    summary = engine.forward_backward({k: v.clone() if torch.is_tensor(v) else v
                                       for k, v in batch.items()})
    return summary, seen, engine


def test_a_bf16_channels_last_step_has_the_fp32_loss_within_bf16_precision(setup):
    fp32, seen_fp32, _ = one_step(setup)
    bf16, seen_bf16, engine = one_step(setup, 'bf16', channels_last=True)
    assert seen_fp32['output'].features.dtype == torch.float32
    assert seen_bf16['output'].features.dtype == torch.bfloat16  # the backbone ran in bf16
    assert seen_bf16['input'].is_contiguous(memory_format=torch.channels_last)  # on NHWC
    assert not seen_fp32['input'].is_contiguous(memory_format=torch.channels_last)
    # one_step converted the model; the engine keeps its memory format
    assert engine.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for part in ('loss', 'loss_id', 'loss_attr'):
        assert bf16[part] == pytest.approx(fp32[part], rel=BF16_TOLERANCE), part
    assert bf16['loss'] != fp32['loss']
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())  # fp32 weights


def test_the_loss_of_bf16_outputs_is_computed_in_fp32():
    generator = torch.Generator().manual_seed(0)
    widths = (1, 1, 4, 1)
    id_logits = torch.randn(8, 10, generator=generator).bfloat16()
    attr_logits = (3 * torch.randn(8, 6, sum(widths), generator=generator)).bfloat16()
    pids = torch.randint(10, (8,), generator=generator)
    attrs = torch.stack([torch.randint(2, (8,), generator=generator) for _ in range(2)]
                        + [torch.randint(4, (8,), generator=generator),
                           torch.randint(2, (8,), generator=generator)], dim=1)
    criterion = ALFOLoss(10, widths, use_gpu=False)
    low = criterion(ALFOOutputs(id_logits, attr_logits), pids, attrs)
    high = criterion(ALFOOutputs(id_logits.float(), attr_logits.float()), pids, attrs)
    for name in ('total', 'id', 'attr', 'per_attribute', 'winners'):
        assert torch.equal(getattr(low, name), getattr(high, name)), name
    assert low.total.dtype == low.per_attribute.dtype == torch.float32
    # (in bf16, log_softmax alone would move the identity loss)
    assert criterion.id_loss(id_logits, pids).item() != high.id.item()


def test_fp16_scales_the_gradients_and_skips_a_step_that_overflowed():
    # the scaler's path on the CPU's GradScaler (the config allows fp16 on CUDA only)
    layer = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    mixed = MixedPrecision('fp16')
    before = layer.weight.detach().clone()
    mixed.backward_and_step(layer(torch.ones(2, 3)).sum(), optimizer)
    assert mixed.scaler.get_scale() == 2.0 ** 16
    # the update is the unscaled gradient's: 0.1 * d(sum)/dw = 0.1 * 2 per weight
    assert torch.allclose(layer.weight.detach(), before - 0.2)
    optimizer.zero_grad()
    before = layer.weight.detach().clone()
    mixed.backward_and_step(layer(torch.full((2, 3), float('inf'))).sum(), optimizer)
    assert torch.equal(layer.weight.detach(), before)  # skipped
    assert mixed.scaler.get_scale() == 2.0 ** 15  # and the scale halved


def test_the_checkpoint_keeps_the_gradient_scale(setup, tmp_path):
    datamanager, _, _ = setup
    model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema)
    engine = ImageFocalVoteEngine(datamanager, model, torch.optim.Adam(model.parameters()),
                                  use_gpu=False, precision=MixedPrecision('fp16'))
    engine.precision.scaler.scale(torch.ones(()))  # the scaler starts at its first step
    engine.precision.scaler.update(1234.0)
    path = engine.save_model(0, None, str(tmp_path), latest=True)
    assert checkpoints.load_checkpoint(path)['grad_scaler']['scale'] == 1234.0
    resumed = MixedPrecision('fp16')
    checkpoints.load_training_state(path, model, datamanager.num_train_pids, precision=resumed)
    assert resumed.scaler.get_scale() == 1234.0


@pytest.mark.parametrize('setting, expected', [('auto', False), ('on', True), ('off', False)])
def test_the_run_puts_the_model_in_the_configured_memory_format(setup, toy_root, setting,
                                                                expected):
    cfg = config.load_config(REPO / 'configs' / 'alfo_toy.yaml',
                             ['data.root', str(toy_root), 'use_gpu', 'False',
                              'train.channels_last', setting])
    model = run_lib.place_on_device(cfg, ALFO(5))
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == expected
    engine = run_lib.build_engine(cfg, setup[0], model, torch.optim.Adam(model.parameters()),
                                  None)
    assert engine.channels_last == expected


@pytest.mark.parametrize('opts, message', [
    (['train.amp', 'fp16'], 'error: train.amp fp16 needs CUDA (use_gpu True on a machine with '
                            'a GPU): its gradient scaling is for GPUs; on the CPU use train.amp '
                            'bf16'),
    (['train.amp', 'fp8'], "error: train.amp must be one of ['off', 'bf16', 'fp16'], got 'fp8'"),
    (['train.channels_last', 'yes'],
     "error: train.channels_last must be one of ['auto', 'on', 'off'], got 'yes'"),
    (['model.name', 'pcb_p6', 'train.amp', 'bf16'],
     "error: train.amp bf16 is for ALFO models, whose engine computes the loss in fp32; "
     "torchreid's engine trains pcb_p6 in fp32: set train.amp off"),
])
def test_a_precision_the_run_cannot_use_is_one_line(opts, message, toy_root, tmp_path):
    assert refused_run(toy_root, tmp_path, 'use_gpu', 'False', *opts) == message


@pytest.mark.skipif(torch.cuda.is_available(), reason='a check for machines without CUDA')
def test_use_gpu_without_a_gpu_is_one_line(toy_root, tmp_path):
    assert refused_run(toy_root, tmp_path, 'use_gpu', 'True') == (
        'error: use_gpu True needs a CUDA device and torch sees none (torch.cuda.is_available() '
        'is False): set use_gpu False, or leave it out (it defaults to whether a GPU is visible)')


def test_yaml_and_command_line_booleans_name_the_settings(tmp_path):
    path = tmp_path / 'c.yaml'
    path.write_text('train:\n  amp: off\n  channels_last: on\n')  # YAML reads booleans
    cfg = config.load_config(path)
    assert (cfg.train.amp, cfg.train.channels_last) == ('off', 'on')
    cfg = config.load_config('', ['model.name', 'alfo', 'train.channels_last', 'False',
                                  'train.amp', 'bf16'])
    assert (cfg.train.amp, cfg.train.channels_last) == ('bf16', 'off')
    with pytest.raises(config.ConfigError, match="train.amp must be a string like its default "
                                                 "off, got 'True'"):
        config.load_config('', ['train.amp', 'True'])
