"""A run folder as tools/main.py leaves it, holding an untrained ALFO: cheap
weights for the tests of the tools that use a trained model.

The attribute heads' biases are set so that each stripe's logit is at its
median over the toy gallery: an untrained ALFO would otherwise predict the same
attributes for every image, and a filter would keep all or nothing.
"""
import contextlib
import functools
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import torch
import torchreid

import alfo_torchreid  # noqa: F401  (registers market1501_attr)
from alfo_torchreid import config
from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.engine.engine import ImageFocalVoteEngine
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.checkpoints import load_checkpoint, state_dict_of

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / 'configs' / 'alfo_toy.yaml'


class ToolResult(NamedTuple):
    """What a tool run gave, named as in ``subprocess.CompletedProcess``; it
    unpacks as ``status, out, err``."""
    returncode: int
    stdout: str
    stderr: str


@functools.lru_cache(maxsize=None)
def load_tool(name):
    """The module of tools/<name>.py, to call its ``main(argv)`` in this process
    (loaded once per session; the tools keep no state between calls)."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(name, *args, process=False, **kwargs):
    """Runs tools/<name>.py with ``args`` (each ``str()``-ed): its ``main`` in this
    process, stdout and stderr captured (no interpreter start-up), or with
    ``process`` in a fresh interpreter, where the process itself is under test
    (signals, start-up, the exit status of ``sys.exit``); ``kwargs`` go to
    ``subprocess.run`` then. Returns a :class:`ToolResult`."""
    argv = [str(a) for a in args]
    if process:
        proc = subprocess.run([sys.executable, str(REPO / 'tools' / f'{name}.py'), *argv],
                              capture_output=True, text=True, **{'timeout': 600, **kwargs})
        return ToolResult(proc.returncode, proc.stdout, proc.stderr)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = load_tool(name).main(argv)
    return ToolResult(status, out.getvalue(), err.getvalue())


def refusal(name, *args):
    """Runs tools/<name>.py with ``args`` in this process and asserts that it
    refused: exit status 2, stderr one line starting ``error: ``, no traceback.
    Returns the line."""
    status, out, err = run_tool(name, *args)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith('error: '), (
        status, out[-2000:], err)
    assert 'Traceback' not in out
    return lines[0]


def refused_run(root, tmp_path, *opts, config_file=CONFIG):
    """tools/main.py on ``config_file`` (the toy config), the data ``root`` and
    ``opts``: asserts a :func:`refusal` that made no run folder; returns its line."""
    line = refusal('main', '--config-file', config_file, '--root', root,
                   'data.save_dir', tmp_path / 'run', *opts)
    assert not (tmp_path / 'run').exists()  # refused before the run folder is made
    return line


def assert_same_weights(path_a, path_b):
    """Asserts that two checkpoints hold the same tensors, bit for bit; returns both."""
    a, b = (load_checkpoint(p) for p in (path_a, path_b))
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for name, tensor in a['state_dict'].items():
        assert torch.equal(tensor, b['state_dict'][name]), name
    return a, b


def history_without_times(run):
    """The records of ``run/history.jsonl`` without their wall times, which no
    two runs share."""
    lines = (Path(run) / 'history.jsonl').read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != 'epoch_time'} for line in lines]


def market_split(root, split):
    """The toy Market-1501 folder ``split`` (``bounding_box_train``,
    ``bounding_box_test``, ``query``) under ``root``."""
    return Path(root) / 'market1501' / 'Market-1501-v15.09.15' / split


def toy_config(toy_root, save_dir, *opts):
    """configs/alfo_toy.yaml on ``toy_root``, on the CPU."""
    return config.load_config(str(CONFIG), ['data.root', str(toy_root), 'data.save_dir',
                                            str(save_dir), 'use_gpu', 'False', *opts])


def toy_engine(cfg, weights=None, use_gpu=False, **kwargs):
    """ImageFocalVoteEngine over the config's data, with the ALFO of the
    checkpoint ``weights`` or else an untrained one whose attribute logits are
    centred on the toy gallery; on the GPU with ``use_gpu``."""
    with contextlib.redirect_stdout(io.StringIO()):
        datamanager = torchreid.data.ImageDataManager(**config.imagedata_kwargs(cfg))
    if weights:
        model = checkpoint_model(weights)
    else:
        torch.manual_seed(0)
        model = ALFO(datamanager.num_train_pids, schema=datamanager.train_loader.dataset.schema,
                     **config.alfo_model_kwargs(cfg)).eval()
        centre_attribute_logits(model, cfg)
    if use_gpu:
        model = model.cuda()
    optimizer = torch.optim.Adam(model.parameters())
    return ImageFocalVoteEngine(datamanager, model, optimizer, use_gpu=use_gpu, **kwargs)


def write_run(folder, toy_root):
    """Writes ``folder/config.yaml`` and ``folder/model/model.pth.tar-1`` the way
    tools/main.py does (the engine's ``save_model``); returns the checkpoint path."""
    folder = Path(folder)
    cfg = toy_config(toy_root, folder)
    engine = toy_engine(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'config.yaml').write_text(cfg.dump())
    return Path(engine.save_model(0, rank1=None, save_dir=str(folder)))


def toy_images(paths):
    """Image files as the toy config's test transform gives them: ``[N, 3, 128, 64]``."""
    data = config.load_config(str(CONFIG)).data
    transform = compat.test_transform(data.height, data.width, data.norm_mean, data.norm_std)
    return torch.stack([transform(compat.read_image(str(p))) for p in paths])


@torch.no_grad()
def centre_attribute_logits(model, cfg):
    images = toy_images(sorted(market_split(cfg.data.root, 'bounding_box_test').glob('*.jpg')))
    logits = model.attribute_logits(images)  # [N, P, K]
    model.attribute_heads.bias -= logits.median(dim=0).values


def checkpoint_model(weights):
    """The checkpoint's eval-mode ALFO (Market schema), built here from its
    signature: a reference independent of alfo_torchreid.serving.inference."""
    checkpoint = load_checkpoint(weights)
    model = ALFO(checkpoint['signature']['num_classes'], schema=MARKET_SCHEMA)
    model.load_state_dict(state_dict_of(checkpoint))
    return model.eval()
