"""What differs on a GPU: training steps, evaluation, checkpoints, torchrun with
NCCL, DataParallel and the tools, each against the same computation on the CPU.

Every test here carries the ``cuda`` marker and is skipped where
``torch.cuda.is_available()`` is False; ``python3 -m pytest -m cuda tests``
runs them (``benchmarks/gpu_check.py`` does, on a lent GPU machine).

fp32 comparisons run with TF32 off (torch's default for matrix products, not for
cuDNN's convolutions): what remains between the devices is the order of the
float32 sums, a relative error of ~1e-6 per layer, ~1e-5 through ResNet-50.
"""
import contextlib
import io
import json
from unittest import mock

import numpy as np
import pytest
import torch
import torchreid
from alfo_run import REPO, load_tool, market_split, toy_config, toy_engine
from test_distributed import OPTS, torchrun
from test_engine import make_datamanager

from alfo_torchreid import run as run_lib
from alfo_torchreid.engine.engine import BaselineEngine, ImageFocalVoteEngine
from alfo_torchreid.engine.precision import MixedPrecision
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils import checkpoints

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason='no CUDA device (torch.cuda.is_available() is False)')]

TOY_CONFIG = REPO / 'configs' / 'alfo_toy.yaml'
LR = 0.1  # SGD without momentum: a step's update is -LR x the gradient

# A GPU step against the CPU step from the same weights and batch.
# Loss, relative: fp32 differs in the order of sums only (module docstring), 1e-4
# is 10x that; bf16 keeps 8 significant bits, fp16 11: within 1 % (as
# tests/test_precision.py's BF16_TOLERANCE).
LOSS_TOLERANCE = {'off': 1e-4, 'bf16': 1e-2, 'fp16': 1e-2}
# The update (SGD: -LR x the gradient) is far less stable: the gradient passes
# 53 BatchNorm backward passes, each a difference of near-equal sums. Measured on
# the CPU, fp32 channels-last against contiguous (the order of sums only):
# ||delta_a - delta_b|| / ||delta_b|| = 1.7-4.0 % (ALFO), 2.2-2.5 % (pcb_p6); bf16
# and fp16 against fp32: 69-124 %, with an update 1.07-1.14 x the fp32 one in size.
# So fp32 updates must agree within 25 % (a lost loss term or a step on stale
# weights is 100 % off), and a half-precision update must have the fp32 update's
# size within a factor of 2 (an unscaled fp16 gradient would be 256 x, a skipped
# step 0).
FP32_UPDATE_TOLERANCE = 0.25
HALF_UPDATE_SIZE = (0.5, 2.0)


@pytest.fixture(autouse=True)
def full_fp32():
    """TF32 off for the test (see the module docstring), restored after it."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.fixture(scope='module')
def step_inputs(toy_root):
    """(datamanager, one training batch, {model name: initial weights})."""
    datamanager = make_datamanager(toy_root)
    torch.manual_seed(0)
    batch = next(iter(datamanager.train_loader))
    weights = {name: build_model(name, datamanager).state_dict() for name in ('alfo', 'pcb_p6')}
    return datamanager, batch, weights


def build_model(name, datamanager):
    if name == 'alfo':
        return ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema)
    return torchreid.models.build_model(name, datamanager.num_train_pids, pretrained=False)


def engine_step(step_inputs, name, device, amp='off', channels_last=False, vote_mode='majority',
                grad_scale=None):
    """One training step through the engine of model ``name`` on ``device``.

    PCB's dropout is switched off (its random mask differs between devices).
    ``grad_scale`` sets an fp16 run's gradient scale, as a resumed checkpoint does.

    Returns:
        (logged summary, {parameter name: weights after the step (CPU)}, engine).
    """
    datamanager, batch, weights = step_inputs
    use_gpu = device == 'cuda'
    model = build_model(name, datamanager)
    model.load_state_dict(weights[name])
    model = model.to(device).train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    options = dict(use_gpu=use_gpu, channels_last=channels_last)
    if name == 'alfo':
        mixed = MixedPrecision(amp, use_gpu)
        if grad_scale is not None:
            mixed.load_state_dict({'scale': grad_scale, 'growth_factor': 2.0,
                                   'backoff_factor': 0.5, 'growth_interval': 2000,
                                   '_growth_tracker': 0})
        engine = ImageFocalVoteEngine(datamanager, model, optimizer, precision=mixed,
                                      vote_mode=vote_mode, **options)
    else:
        engine = BaselineEngine(datamanager, model, optimizer, **options)
    assert engine.use_gpu == use_gpu
    engine.epoch = engine.batch_idx = 0
    summary = engine.forward_backward({k: v.clone() if torch.is_tensor(v) else v
                                       for k, v in batch.items()})
    after = {k: p.detach().cpu() for k, p in model.named_parameters()}
    return summary, after, engine


def update_difference(before, gpu, cpu):
    """(||delta_gpu - delta_cpu|| / ||delta_cpu||, ||delta_gpu|| / ||delta_cpu||) over all
    parameters, the deltas taken from the weights ``before``."""
    def norm(tensors):
        return sum(float((t.double() ** 2).sum()) for t in tensors) ** 0.5

    update = norm(cpu[k] - before[k] for k in cpu)
    difference, size = norm(gpu[k] - cpu[k] for k in cpu), norm(gpu[k] - before[k] for k in cpu)
    return difference / update, size / update


@pytest.mark.parametrize('name, amp, channels_last', [
    ('alfo', 'off', False), ('alfo', 'off', True), ('alfo', 'bf16', False),
    ('alfo', 'bf16', True), ('alfo', 'fp16', False), ('pcb_p6', 'off', False),
    ('pcb_p6', 'off', True)])
def test_a_gpu_step_is_the_cpu_step(step_inputs, name, amp, channels_last):
    # the half-precision steps use the 'mean' vote: at initialisation the stripes'
    # losses differ by less than bf16's precision (tests/test_precision.py)
    vote_mode = 'majority' if amp == 'off' else 'mean'
    # fp16: a scale of 2^8 (the default 2^16 overflows ResNet-50's first gradients)
    scale = 256.0 if amp == 'fp16' else None
    cpu, cpu_weights, cpu_engine = engine_step(step_inputs, name, 'cpu', vote_mode=vote_mode)
    gpu, gpu_weights, gpu_engine = engine_step(step_inputs, name, 'cuda', amp, channels_last,
                                              vote_mode, scale)
    for part in cpu:
        if part != 'acc':
            assert gpu[part] == pytest.approx(cpu[part], rel=LOSS_TOLERANCE[amp]), (part, gpu, cpu)
    before = step_inputs[2][name]
    error, size = update_difference(before, gpu_weights, cpu_weights)
    if amp == 'off':
        assert error <= FP32_UPDATE_TOLERANCE, f'the update differs by {error:.2e} (in norm)'
    else:
        low, high = HALF_UPDATE_SIZE
        assert low <= size <= high, f'the update is {size:.2f} x the fp32 one (in norm)'
    assert any(not torch.equal(gpu_weights[k], before[k]) for k in gpu_weights)  # it stepped
    if name == 'alfo':
        tally, cpu_tally = gpu_engine.network.vote_counts, cpu_engine.network.vote_counts
        assert tally.device.type == 'cuda' and torch.equal(tally.cpu(), cpu_tally)
        if vote_mode == 'majority':  # one vote per attribute ('mean' records none)
            assert int(cpu_tally.sum()) == len(cpu_engine.schema.names)


def test_an_fp16_step_that_overflows_is_skipped_and_the_scale_halved(step_inputs):
    # at a scale of 2^40 the fp16 gradients overflow (fp16 ends at 65504)
    summary, after, engine = engine_step(step_inputs, 'alfo', 'cuda', 'fp16', vote_mode='mean',
                                         grad_scale=2.0 ** 40)
    before = step_inputs[2]['alfo']
    assert all(torch.equal(after[k], before[k]) for k in after)
    assert np.isfinite(summary['loss'])  # the loss itself is fp32 and finite
    assert engine.precision.scaler.get_scale() == 2.0 ** 39


def evaluate(toy_root, tmp_path, weights, use_gpu):
    """The toy test of checkpoint ``weights`` on one device.

    The attribute heads' biases move by 0.01: alfo_run centred them on this very
    gallery, which puts one image per head exactly on the decision boundary,
    where any rounding would flip its prediction.

    Returns:
        (results of the target, query Extracted, gallery Extracted).
    """
    engine = toy_engine(toy_config(toy_root, tmp_path), weights, use_gpu=use_gpu)
    with torch.no_grad():
        engine.network.attribute_heads.bias += 0.01
    with contextlib.redirect_stdout(io.StringIO()):
        engine.test()
        loaders = engine.test_loader['market1501_attr']
        query, gallery = (engine.extract(loaders[s], s) for s in ('query', 'gallery'))
    return engine.results['market1501_attr'], query, gallery


def test_gpu_evaluation_is_the_cpu_evaluation(toy_root, tmp_path, alfo_weights):
    cpu = evaluate(toy_root, tmp_path, alfo_weights, use_gpu=False)
    gpu = evaluate(toy_root, tmp_path, alfo_weights, use_gpu=True)
    for ours, theirs in zip(gpu[1:], cpu[1:]):
        scale = float(theirs.features.abs().max())
        assert torch.allclose(ours.features, theirs.features, rtol=1e-4, atol=1e-4 * scale)
        for a, b in zip(ours.attributes, theirs.attributes):
            assert torch.allclose(a, b, atol=1e-5)  # probabilities
    distances = [torchreid.metrics.compute_distance_matrix(q.features, g.features)
                 for _, q, g in (gpu, cpu)]
    # |q|² + |g|² - 2 q·g: features within 1e-4 of their scale move a distance by
    # at most 1e-4 (|q|² + |g|²) (2|q||g| <= |q|² + |g|²), and the expanded
    # formula's float32 cancellation is of that size too, not of the distance's
    query, gallery = cpu[1].features, cpu[2].features
    norms = query.pow(2).sum(1)[:, None] + gallery.pow(2).sum(1)[None]
    assert ((distances[0] - distances[1]).abs() <= 1e-4 * norms).all()
    # with features this close and no tie in the toy distances, the ranks are the same
    ours, theirs = gpu[0], cpu[0]
    assert ours['cmc'] == pytest.approx(theirs['cmc'], abs=1e-9)
    assert ours['mAP'] == pytest.approx(theirs['mAP'], abs=1e-9)
    assert ours['attributes']['mA'] == pytest.approx(theirs['attributes']['mA'], abs=1e-9)


# -- checkpoints across devices ------------------------------------------------

def trained_one_step(toy_root, tmp_path, use_gpu):
    """An engine after one Adam step on ``use_gpu``'s device, its latest.pth.tar written."""
    engine = toy_engine(toy_config(toy_root, tmp_path), use_gpu=use_gpu)
    engine.model.train()
    engine.epoch = engine.batch_idx = 0
    engine.forward_backward(next(iter(engine.train_loader)))
    return engine, engine.save_model(0, None, str(tmp_path), latest=True)


@pytest.mark.parametrize('written_on, loaded_on', [('cuda', 'cpu'), ('cpu', 'cuda')])
def test_a_checkpoint_resumes_and_loads_on_the_other_device(toy_root, tmp_path, written_on,
                                                            loaded_on):
    writer, path = trained_one_step(toy_root, tmp_path / 'w', written_on == 'cuda')
    reader = toy_engine(toy_config(toy_root, tmp_path / 'r'), use_gpu=loaded_on == 'cuda')
    num_classes = reader.datamanager.num_train_pids
    epoch, _ = checkpoints.load_training_state(path, reader.network, num_classes,
                                               reader.optimizer)
    assert epoch == 1
    for name, tensor in writer.network.state_dict().items():
        loaded = reader.network.state_dict()[name]
        assert loaded.device.type == loaded_on and torch.equal(loaded.cpu(), tensor.cpu()), name
    moments = [s['exp_avg'] for s in reader.optimizer.state.values()]
    assert moments and all(m.device.type == loaded_on for m in moments)
    reader.model.train()
    reader.epoch = reader.batch_idx = 0
    reader.forward_backward(next(iter(reader.train_loader)))  # and it trains on
    # model.load_weights of the other device's checkpoint
    cfg = toy_config(toy_root, tmp_path / 'l', 'model.load_weights', str(path))
    model = ALFO(num_classes, schema=reader.schema).to(loaded_on)
    assert run_lib.load_trained_weights(cfg, model, num_classes) == 1
    for name, tensor in writer.network.state_dict().items():
        assert torch.equal(model.state_dict()[name].cpu(), tensor.cpu()), name


def test_a_run_alternates_gpu_and_cpu_through_resume(toy_root, tmp_path):
    main = load_tool('main').main
    folder = tmp_path / 'run'
    common = ['--config-file', str(TOY_CONFIG), '--root', str(toy_root), *OPTS,
              'data.save_dir', str(folder)]
    for epochs, use_gpu in (('1', 'True'), ('2', 'False'), ('3', 'True')):
        resume = ['train.resume', 'True'] if epochs != '1' else []
        status = main([*common, 'train.max_epoch', epochs, 'use_gpu', use_gpu, *resume])
        assert status == 0, (epochs, use_gpu)
    history = [json.loads(line) for line in (folder / 'history.jsonl').read_text().splitlines()]
    assert [h['epoch'] for h in history] == [1, 2, 3]
    final = checkpoints.load_checkpoint(folder / 'model' / 'model.pth.tar-3')
    assert int(final['state_dict']['vote_counts'].sum()) > 0
    assert json.loads((folder / 'metrics.json').read_text())['epochs'] == 3


# -- several processes, several GPUs ---------------------------------------------

def test_torchrun_with_nccl_sums_the_vote_over_the_processes(toy_root, tmp_path):
    # one process per visible GPU; the same checks as the gloo job of
    # tests/test_distributed.py (which runs on the CPU)
    processes = torch.cuda.device_count()
    proc, folder, records = torchrun(tmp_path, 'nccl', toy_root, processes, 'use_gpu', 'True')
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [records[(rank, 0)]['steps'] for rank in range(processes)]
    assert all(len(s) == 4 for s in steps)  # 2 epochs of 2 global batches of 16
    for rank_steps in steps[1:]:  # weights and tallies identical across processes
        assert [s['digest'] for s in rank_steps] == [s['digest'] for s in steps[0]]
    assert all(len(s['images']) == 16 // processes for s in steps[0])
    losses = [s['summary']['loss'] for s in steps[0]]
    assert all(np.isfinite(losses)) and losses[0] != losses[-1]
    tally = checkpoints.load_checkpoint(folder / 'model' / 'model.pth.tar-2')[
        'state_dict']['vote_counts']
    # one vote per attribute and global step, summed over the processes
    assert tally.sum(1).tolist() == [4] * len(tally)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='nn.DataParallel needs 2 or more GPUs')
def test_data_parallel_trains_over_the_visible_gpus(toy_root, tmp_path, capsys):
    status = load_tool('main').main(['--config-file', str(TOY_CONFIG), '--root', str(toy_root),
                                     *OPTS, 'train.max_epoch', '1',
                                     'data.save_dir', str(tmp_path / 'run'), 'use_gpu', 'True'])
    assert status == 0
    assert f'Using nn.DataParallel over {torch.cuda.device_count()} GPUs' in capsys.readouterr().out


# -- the tools ---------------------------------------------------------------------

def on_each_device(tool_run):
    """``{device: tool_run(device)}`` with the tool on CUDA and, with
    ``torch.cuda.is_available`` answering False, on the CPU."""
    results = {'cuda': tool_run('cuda')}
    with mock.patch.object(torch.cuda, 'is_available', return_value=False):
        results['cpu'] = tool_run('cpu')
    return results


def test_predict_on_cuda_equals_the_cpu(alfo_weights, toy_root, tmp_path):
    def predict(device):
        out = tmp_path / device
        assert load_tool('predict').main(['--weights', str(alfo_weights),
                                          str(market_split(toy_root, 'query')),
                                          '--out', str(out)]) == 0
        return np.load(out / 'features.npy'), (out / 'index.csv').read_text()

    found = on_each_device(predict)
    (gpu_features, gpu_index), (cpu_features, cpu_index) = found['cuda'], found['cpu']
    scale = np.abs(cpu_features).max()
    assert np.allclose(gpu_features, cpu_features, rtol=1e-4, atol=1e-4 * scale)
    assert gpu_index == cpu_index  # the query images lie off the centred decision boundary


def test_search_on_cuda_equals_the_cpu(alfo_weights, toy_root, tmp_path):
    query = sorted(market_split(toy_root, 'bounding_box_test').glob('*.jpg'))[0]

    def search(device):
        index, out = tmp_path / f'index-{device}', tmp_path / device
        tool = load_tool('search')
        assert tool.main(['index', str(market_split(toy_root, 'query')), '--weights',
                          str(alfo_weights), '--out', str(index), '--backend', 'torch']) == 0
        assert tool.main(['query', str(index), str(query), '--top', '10',
                          '--out', str(out)]) == 0
        return json.loads((out / f'{query.stem}.json').read_text())['hits']

    found = on_each_device(search)
    assert [h['path'] for h in found['cuda']] == [h['path'] for h in found['cpu']]
    assert [h['distance'] for h in found['cuda']] == pytest.approx(
        [h['distance'] for h in found['cpu']], rel=1e-4)


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
@pytest.mark.filterwarnings('ignore::FutureWarning')
@pytest.mark.filterwarnings('ignore:You are using the legacy TorchScript-based ONNX export')
def test_export_runs_on_cuda_as_pytorch_does_on_the_cpu(alfo_weights, alfo_model, tmp_path):
    onnxruntime = pytest.importorskip('onnxruntime', reason='the export extra is not installed')
    out = tmp_path / 'alfo.onnx'
    assert load_tool('export').main(['--weights', str(alfo_weights), '--out', str(out)]) == 0
    session = onnx_session(onnxruntime, out)
    images = torch.randn(4, 3, 128, 64, generator=torch.Generator().manual_seed(1))
    feature, attributes = session.run(['feature', 'attributes'], {'images': images.numpy()})
    with torch.no_grad():
        want_feature, want_probs = alfo_model.features_and_attributes(images)
        gpu_feature, gpu_probs = alfo_model.cuda().features_and_attributes(images.cuda())
    alfo_model.cpu()  # a session fixture
    want_probs, gpu_probs = torch.cat(want_probs, 1), torch.cat(gpu_probs, 1).cpu()
    # within 1e-4 of each output's scale (features reach ~40; probabilities 1), as
    # the evaluation's features: another device's kernels sum in another order
    for got, expected in ((feature, want_feature), (attributes, want_probs),
                          (gpu_feature.cpu(), want_feature), (gpu_probs, want_probs)):
        scale = max(1.0, float(expected.abs().max()))
        assert np.abs(np.asarray(got) - expected.numpy()).max() <= 1e-4 * scale, \
            session.get_providers()


def onnx_session(onnxruntime, path):
    """An onnxruntime session of ``path`` on its CUDA provider when present (TF32
    off where the provider takes the option), else on the CPU."""
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        return onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    try:
        return onnxruntime.InferenceSession(str(path), providers=[
            ('CUDAExecutionProvider', {'use_tf32': '0'}), 'CPUExecutionProvider'])
    except Exception:  # an onnxruntime without the option
        return onnxruntime.InferenceSession(str(path), providers=[
            'CUDAExecutionProvider', 'CPUExecutionProvider'])
