"""alfo_torchreid.utils.weights: sources, cache, atomic verified downloads, safe loading.

No internet: http sources point at a server on 127.0.0.1, and gdown.download is
replaced by fakes that write into the file they are given or fail.
"""
import argparse
import hashlib
import io
import logging
import os
import re

import gdown
import numpy as np
import pytest
import torch
import torchreid
from http_server import closed_port_url, serve

from alfo_torchreid.models import ALFO
from alfo_torchreid.utils import weights
from alfo_torchreid.utils.errors import CheckpointError, DownloadError, UntrustedCheckpointError

PAYLOAD = bytes(range(256)) * 800  # 204,800 bytes: several chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
IMAGENET_FILE = 'resnet50-19c8e357.pth'
ZOO_FILE = 'resnet50_market1501.pt'
CLASSIFIER = {'classifier.weight', 'classifier.bias'}


def _torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


CKPT_BYTES = _torch_bytes({'state_dict': {'conv1.weight': torch.ones(2)}})


@pytest.fixture(scope='module')
def server():
    """/file: PAYLOAD; /truncated: announces PAYLOAD, sends half and closes."""
    with serve({'/file': PAYLOAD, '/truncated': PAYLOAD}, truncated={'/truncated'}) as url:
        yield url


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """torch's checkpoint cache under a fresh TORCH_HOME."""
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    return tmp_path / 'torch-home' / 'hub' / 'checkpoints'


def _serve_imagenet(monkeypatch, url, sha256=PAYLOAD_SHA[:8]):
    """Points 'imagenet' at ``url`` (same file name, so same cache path)."""
    source = weights.WeightsSource(url, IMAGENET_FILE, sha256)
    monkeypatch.setitem(weights.SOURCES, 'imagenet', source)


def _fake_gdown(monkeypatch, write=CKPT_BYTES, then=None):
    """Replaces gdown.download: writes ``write`` into the given file, then raises
    ``then`` if given. Returns the list of URLs it was called with."""
    calls = []

    def download(url, output, quiet=False):
        calls.append(url)
        output.write(write)
        if then is not None:
            raise then
        return output

    monkeypatch.setattr(gdown, 'download', download)
    return calls


def _files(folder):
    return sorted(os.listdir(folder)) if folder.is_dir() else []


# sources and cache -----------------------------------------------------------

def test_imagenet_is_torchreids_file_in_torchs_cache(cache):
    source = weights.SOURCES['imagenet']
    assert source.url == torchreid.models.resnet.model_urls['resnet50']
    assert source.filename == IMAGENET_FILE and source.sha256 == '19c8e357'
    assert weights.cached_path(source) == str(cache / IMAGENET_FILE)
    assert all(s.sha256 is None and s.via == 'gdown' for s in weights.MODEL_ZOO.values())


def test_cached_imagenet_file_is_used_without_download(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / IMAGENET_FILE).write_bytes(PAYLOAD)
    _serve_imagenet(monkeypatch, closed_port_url(IMAGENET_FILE))  # a download attempt would fail
    assert weights.resolve('imagenet') == str(cache / IMAGENET_FILE)


def test_imagenet_downloaded_and_verified_when_absent(cache, server, monkeypatch):
    _serve_imagenet(monkeypatch, f'{server}/file')
    path = weights.resolve('imagenet')
    assert path == str(cache / IMAGENET_FILE)
    assert (cache / IMAGENET_FILE).read_bytes() == PAYLOAD
    assert _files(cache) == [IMAGENET_FILE]  # no temporary file left


def test_download_with_wrong_checksum_leaves_no_file(cache, server, monkeypatch):
    _serve_imagenet(monkeypatch, f'{server}/file', sha256='deadbeef')
    with pytest.raises(DownloadError, match=f'sha256 {PAYLOAD_SHA}, expected one starting '
                                            'with deadbeef.*discarded'):
        weights.resolve('imagenet')
    assert _files(cache) == []


def test_cached_file_with_wrong_checksum_is_refused_and_kept(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / IMAGENET_FILE).write_bytes(b'not the weights')
    _serve_imagenet(monkeypatch, closed_port_url(IMAGENET_FILE))
    with pytest.raises(DownloadError, match=f'"{re.escape(str(cache / IMAGENET_FILE))}" has '
                                            'sha256 .* delete it and run again'):
        weights.resolve('imagenet')
    assert (cache / IMAGENET_FILE).read_bytes() == b'not the weights'  # the user's file


def test_interrupted_download_leaves_no_file_and_next_call_downloads(cache, server, monkeypatch):
    _serve_imagenet(monkeypatch, f'{server}/truncated')
    with pytest.raises(DownloadError, match='interrupted'):
        weights.resolve('imagenet')
    assert _files(cache) == []
    _serve_imagenet(monkeypatch, f'{server}/file')
    assert open(weights.resolve('imagenet'), 'rb').read() == PAYLOAD


def test_offline_error_names_url_and_destination(cache, monkeypatch):
    url = closed_port_url(IMAGENET_FILE)
    _serve_imagenet(monkeypatch, url)
    with pytest.raises(DownloadError) as info:
        weights.resolve('imagenet')
    assert url in str(info.value)
    assert f'put it at "{cache / IMAGENET_FILE}"' in str(info.value)
    assert _files(cache) == []


def test_cached_zoo_file_is_used_without_download(cache, monkeypatch):
    cache.mkdir(parents=True)
    (cache / ZOO_FILE).write_bytes(CKPT_BYTES)
    calls = _fake_gdown(monkeypatch)
    assert weights.resolve('resnet50_market1501') == str(cache / ZOO_FILE)
    assert calls == []


def test_zoo_file_downloaded_with_gdown_and_reported_unverified(cache, monkeypatch, caplog):
    calls = _fake_gdown(monkeypatch)
    with caplog.at_level(logging.WARNING, logger='alfo_torchreid.utils.weights'):
        path = weights.resolve('resnet50_market1501')
    assert calls == [weights.MODEL_ZOO['resnet50_market1501'].url]
    assert path == str(cache / ZOO_FILE) and (cache / ZOO_FILE).read_bytes() == CKPT_BYTES
    assert _files(cache) == [ZOO_FILE]
    assert 'no checksum is published' in caplog.text


@pytest.mark.parametrize('failure, raised', [(ConnectionError('connection reset'), DownloadError),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_interrupted_zoo_download_leaves_no_file_and_next_call_downloads(cache, monkeypatch,
                                                                        failure, raised):
    _fake_gdown(monkeypatch, write=CKPT_BYTES[:100], then=failure)
    with pytest.raises(raised):
        weights.resolve('resnet50_market1501')
    assert _files(cache) == []
    _fake_gdown(monkeypatch)
    assert open(weights.resolve('resnet50_market1501'), 'rb').read() == CKPT_BYTES


def test_zoo_offline_error_names_url_and_destination(cache, monkeypatch):
    _fake_gdown(monkeypatch, write=b'', then=ConnectionError('Name or service not known'))
    url = weights.MODEL_ZOO['resnet50_dukemtmcreid'].url
    with pytest.raises(DownloadError, match=re.escape(url) + '.*offline.*' +
                       re.escape(f'put it at "{cache / "resnet50_dukemtmcreid.pt"}"')):
        weights.resolve('resnet50_dukemtmcreid')


def test_web_page_instead_of_checkpoint_is_rejected(cache, monkeypatch):
    _fake_gdown(monkeypatch, write=b'<!DOCTYPE html><html>Quota exceeded</html>')
    with pytest.raises(DownloadError, match='did not send a torch checkpoint'):
        weights.resolve('resnet50_msmt17')
    assert _files(cache) == []


def test_unknown_name_or_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='"[^"]*resnet50_market" does not exist.*'
                                              'resnet50_market1501'):
        weights.resolve('resnet50_market')
    with pytest.raises(CheckpointError, match='does not exist'):
        weights.resolve(str(tmp_path))  # a folder
    (tmp_path / 'w.pth').write_bytes(CKPT_BYTES)
    assert weights.resolve(tmp_path / 'w.pth') == str(tmp_path / 'w.pth')


# loading ---------------------------------------------------------------------

@pytest.fixture(scope='module')
def zoo_checkpoint(module_tmp):
    """(path, state): a torchreid model-zoo style checkpoint of a resnet50 with
    a 751-way classifier, as torchreid's save_checkpoint writes it."""
    torch.manual_seed(0)
    state = torchreid.models.build_model('resnet50', 751, pretrained=False).state_dict()
    path = module_tmp('zoo') / ZOO_FILE
    torch.save({'state_dict': state, 'epoch': 60, 'rank1': np.float64(0.879)}, path)
    return path, state


def _assert_backbone_equal(model, state):
    own = model.state_dict()
    for name, tensor in state.items():
        if name not in CLASSIFIER:
            assert torch.equal(own[name], tensor), name


def test_zoo_checkpoint_by_name_loads_into_alfo_backbone(cache, zoo_checkpoint, monkeypatch):
    path, state = zoo_checkpoint
    cache.mkdir(parents=True)
    os.symlink(path, cache / ZOO_FILE)
    _fake_gdown(monkeypatch, then=AssertionError('must not download'))
    model = ALFO(num_classes=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loaded, skipped = weights.load_weights(model, 'resnet50_market1501')
    assert sorted(skipped) == sorted(CLASSIFIER)
    assert set(loaded) == set(state) - CLASSIFIER
    _assert_backbone_equal(model, state)
    for name in ('classifier.weight', 'attribute_heads.weight', 'attribute_heads.bias'):
        assert torch.equal(model.state_dict()[name], before[name]), name


def test_zoo_checkpoint_loads_into_pcb(zoo_checkpoint):
    path, state = zoo_checkpoint
    model = torchreid.models.build_model('pcb_p6', 4, pretrained=False)
    conv5 = model.conv5.layers[0].weight.clone()
    loaded, skipped = weights.load_weights(model, str(path))
    assert sorted(skipped) == sorted(CLASSIFIER)  # PCB's are classifier.<i>.*
    assert len(loaded) == len(state) - 2
    _assert_backbone_equal(model, state)
    assert torch.equal(model.conv5.layers[0].weight, conv5)


def test_classifier_is_skipped_even_when_its_shape_matches(zoo_checkpoint):
    path, state = zoo_checkpoint
    model = torchreid.models.build_model('resnet50', 751, pretrained=False)
    classifier = model.classifier.weight.clone()
    _, skipped = weights.load_weights(model, str(path))
    assert sorted(skipped) == sorted(CLASSIFIER)
    assert torch.equal(model.classifier.weight, classifier)
    assert not torch.equal(model.classifier.weight, state['classifier.weight'])


def test_shape_mismatch_and_unknown_names_are_skipped_and_listed(tmp_path):
    model = ALFO(num_classes=4)
    conv1 = torch.randn(64, 3, 7, 7)
    torch.save({'conv1.weight': conv1, 'bn1.weight': torch.ones(3), 'fc.weight': torch.ones(2)},
               tmp_path / 'w.pth')
    loaded, skipped = weights.load_weights(model, str(tmp_path / 'w.pth'))
    assert loaded == ['conv1.weight'] and sorted(skipped) == ['bn1.weight', 'fc.weight']
    assert torch.equal(model.conv1.weight, conv1)


def test_file_matching_nothing_is_an_error(tmp_path):
    torch.save({'state_dict': {'head.weight': torch.ones(2)}}, tmp_path / 'w.pth')
    with pytest.raises(CheckpointError, match='no weights in .*w.pth" match the model'):
        weights.load_weights(ALFO(num_classes=4), str(tmp_path / 'w.pth'))


def test_pickle_needing_untrusted_globals_is_refused_unless_trusted(tmp_path):
    conv1 = torch.randn(64, 3, 7, 7)
    path = tmp_path / 'pickled.pth'
    torch.save({'state_dict': {'conv1.weight': conv1}, 'args': argparse.Namespace(lr=0.1)}, path)
    model = ALFO(num_classes=4)
    before = model.conv1.weight.clone()
    with pytest.raises(UntrustedCheckpointError, match='argparse.Namespace.*trust'):
        weights.load_weights(model, str(path))
    assert torch.equal(model.conv1.weight, before)
    loaded, _ = weights.load_weights(model, str(path), trust=True)
    assert loaded == ['conv1.weight'] and torch.equal(model.conv1.weight, conv1)


def test_checkpoint_pickled_under_numpy_1_loads(tmp_path):
    conv1 = torch.randn(64, 3, 7, 7)
    path = tmp_path / 'resnet50_market_xent.pth.tar'
    # The legacy format of the zoo's 2019 files; under numpy 1 torchreid's rank1
    # (a numpy scalar) is pickled as numpy.core.multiarray.scalar.
    torch.save({'state_dict': {'conv1.weight': conv1}, 'epoch': 60, 'rank1': np.float64(0.879)},
               path, _use_new_zipfile_serialization=False)
    data = path.read_bytes().replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
    assert b'numpy.core.multiarray\nscalar' in data
    path.write_bytes(data)
    model = ALFO(num_classes=4)
    loaded, _ = weights.load_weights(model, str(path))
    assert loaded == ['conv1.weight'] and torch.equal(model.conv1.weight, conv1)
