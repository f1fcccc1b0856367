"""tools/download.py: layout report, attribute files, weights and image mirrors.

No internet: sources point at a server on 127.0.0.1 (or at a closed port, so
that any download attempt fails), and gdown.download is replaced by a fake.
"""
import glob
import hashlib
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import gdown
import pytest
from alfo_run import REPO
import torch
from http_server import closed_port_url, serve

from alfo_torchreid.data.datasets import DukeMTMCreIDAttr, Market1501Attr

_spec = importlib.util.spec_from_file_location('download_tool', REPO / 'tools' / 'download.py')
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

SPLITS = ('bounding_box_train', 'bounding_box_test', 'query')
MARKET_IMAGES = 'market1501/Market-1501-v15.09.15'
DUKE_IMAGES = 'dukemtmc-reid/DukeMTMC-reID'
ATTRIBUTE_FILES = {Market1501Attr: 'market1501/market_attribute.mat',
                   DukeMTMCreIDAttr: 'dukemtmc-reid/duke_attribute.mat'}


def _market_zip():
    """A tiny archive laid out as torchreid's Market-1501 mirror is."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as z:
        for split in SPLITS:
            z.writestr(f'Market-1501-v15.09.15/{split}/0002_c1s1_000451_03.jpg', b'jpeg')
    return buffer.getvalue()


FILES = {'/market_attribute.mat': b'market annotation', '/duke_attribute.mat': b'duke annotation',
         '/Market-1501-v15.09.15.zip': _market_zip()}


@pytest.fixture(scope='module')
def server():
    with serve(FILES) as url:
        yield url


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Every source at a closed port, and a fresh TORCH_HOME; returns the cache dir."""
    for cls, relative in ATTRIBUTE_FILES.items():
        monkeypatch.setattr(cls, 'attribute_url', closed_port_url(os.path.basename(relative)))
    monkeypatch.setattr(Market1501Attr, 'dataset_url', closed_port_url('Market.zip'))

    def no_gdown(url, output, quiet=False):
        raise ConnectionError('offline')

    monkeypatch.setattr(gdown, 'download', no_gdown)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    return tmp_path / 'torch-home' / 'hub' / 'checkpoints'


def _serve_attributes(monkeypatch, server):
    for cls, relative in ATTRIBUTE_FILES.items():
        name = '/' + os.path.basename(relative)
        monkeypatch.setattr(cls, 'attribute_url', server + name)
        monkeypatch.setattr(cls, 'attribute_sha256', hashlib.sha256(FILES[name]).hexdigest())


def _error_line(err):
    """The one-line error that ends stderr (progress bars may come before it)."""
    assert 'Traceback' not in err
    last = err.rstrip('\n').split('\n')[-1]
    assert last.startswith('error: '), err
    return last


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob('*'))


def test_layout_of_an_empty_root_lists_every_path_missing(tmp_path, offline, capsys):
    root = tmp_path / 'data'
    assert tool.main(['--root', str(root), '--layout']) == 0
    out = capsys.readouterr().out
    for images in (MARKET_IMAGES, DUKE_IMAGES):
        for split in SPLITS:
            assert f'  [missing] {root}/{images}/{split}/\n' in out
    for relative in ATTRIBUTE_FILES.values():
        assert f'  [missing] {root}/{relative}  (from http://127.0.0.1:' in out
    assert f'  [missing] {offline}/resnet50-19c8e357.pth  (imagenet, from ' in out
    assert out.count('[present]') == 0 and out.count('[missing]') == 2 * 4 + 4
    assert not root.exists()  # --layout fetches nothing


def test_layout_reports_what_is_present(toy_root, offline, capsys):
    offline.mkdir(parents=True)
    (offline / 'resnet50_market1501.pt').write_bytes(b'weights')
    assert tool.main(['--root', str(toy_root), '--layout']) == 0
    out = capsys.readouterr().out
    for images in (MARKET_IMAGES, DUKE_IMAGES):
        for split in SPLITS:
            count = len(glob.glob(str(toy_root / images / split / '*.jpg')))
            assert count > 0
            assert f'  [present] {toy_root}/{images}/{split}/  ({count} images)\n' in out
    for relative in ATTRIBUTE_FILES.values():  # the toy's own annotation, not the published one
        assert (f'  [present] {toy_root}/{relative}  (its sha256 differs from the published '
                'annotation') in out
    assert f'  [present] {offline}/resnet50_market1501.pt  (resnet50_market1501, ' in out
    assert f'  [missing] {offline}/resnet50-19c8e357.pth' in out


def test_nothing_is_done_when_the_attribute_files_are_present(tmp_path, offline, monkeypatch,
                                                              capsys):
    root = tmp_path / 'data'
    for cls, relative in ATTRIBUTE_FILES.items():
        (root / relative).parent.mkdir(parents=True)
        (root / relative).write_bytes(relative.encode())
        monkeypatch.setattr(cls, 'attribute_sha256', hashlib.sha256(relative.encode()).hexdigest())
    before = _tree(root)
    assert tool.main(['--root', str(root)]) == 0  # the sources are unreachable: no download tried
    out = capsys.readouterr().out
    for relative in ATTRIBUTE_FILES.values():
        assert f'attribute file "{root}/{relative}" already present (sha256 verified)' in out
    assert 'Nothing to download: everything asked for is present.' in out
    assert 'The images are placed by hand' in out
    assert _tree(root) == before


def test_missing_attribute_files_are_downloaded_and_verified(tmp_path, server, offline,
                                                             monkeypatch, capsys):
    _serve_attributes(monkeypatch, server)
    root = tmp_path / 'data'
    assert tool.main(['--root', str(root)]) == 0
    assert (root / ATTRIBUTE_FILES[Market1501Attr]).read_bytes() == b'market annotation'
    assert (root / ATTRIBUTE_FILES[DukeMTMCreIDAttr]).read_bytes() == b'duke annotation'
    assert _tree(root) == ['dukemtmc-reid', 'dukemtmc-reid/duke_attribute.mat',
                           'market1501', 'market1501/market_attribute.mat']
    assert 'Done.' in capsys.readouterr().out


def test_checksum_mismatch_is_a_one_line_error_leaving_no_file(tmp_path, server, offline,
                                                               monkeypatch, capsys):
    _serve_attributes(monkeypatch, server)
    monkeypatch.setattr(Market1501Attr, 'attribute_sha256', '0' * 64)
    root = tmp_path / 'data'
    assert tool.main(['--root', str(root)]) == 2
    assert f'expected {"0" * 64}' in _error_line(capsys.readouterr().err)
    assert not (root / ATTRIBUTE_FILES[Market1501Attr]).exists()


def test_weights_fetched_by_name_once(offline, monkeypatch, capsys):
    checkpoint = io.BytesIO()
    torch.save({'state_dict': {}}, checkpoint)

    def fake_gdown(url, output, quiet=False):
        output.write(checkpoint.getvalue())

    monkeypatch.setattr(gdown, 'download', fake_gdown)
    assert tool.main(['--weights', 'resnet50_market1501']) == 0
    out = capsys.readouterr().out
    assert f'resnet50_market1501: downloaded "{offline}/resnet50_market1501.pt" (no checksum' in out
    monkeypatch.setattr(gdown, 'download', None)  # a second download would fail
    assert tool.main(['--weights', 'resnet50_market1501']) == 0
    out = capsys.readouterr().out
    assert 'resnet50_market1501: already present' in out and 'Nothing to download' in out


def test_offline_weights_error_names_url_and_destination(offline, capsys):
    assert tool.main(['--weights', 'resnet50_msmt17']) == 2
    err = _error_line(capsys.readouterr().err)
    assert 'https://drive.google.com/uc?id=1ep7RypVDOthCRIAqDnn4_N-UhkkFHJsj' in err
    assert f'put it at "{offline}/resnet50_msmt17.pt"' in err


def test_dataset_images_from_the_mirror_extracted_into_place(tmp_path, server, offline,
                                                             monkeypatch, capsys):
    _serve_attributes(monkeypatch, server)
    monkeypatch.setattr(Market1501Attr, 'dataset_url', server + '/Market-1501-v15.09.15.zip')
    root = tmp_path / 'data'
    assert tool.main(['--root', str(root), '--datasets', 'market1501']) == 0
    assert _tree(root / 'market1501') == sorted(
        ['market_attribute.mat', 'Market-1501-v15.09.15'] +
        [f'Market-1501-v15.09.15/{s}' for s in SPLITS] +
        [f'Market-1501-v15.09.15/{s}/0002_c1s1_000451_03.jpg' for s in SPLITS])  # archive removed
    capsys.readouterr()
    monkeypatch.setattr(Market1501Attr, 'dataset_url', closed_port_url('Market.zip'))
    assert tool.main(['--root', str(root), '--datasets', 'market1501']) == 0
    assert 'market1501: images already present' in capsys.readouterr().out


def test_incomplete_image_folder_is_not_overwritten(tmp_path, server, offline, monkeypatch,
                                                    capsys):
    _serve_attributes(monkeypatch, server)
    root = tmp_path / 'data'
    (root / MARKET_IMAGES / 'query').mkdir(parents=True)
    assert tool.main(['--root', str(root), '--datasets', 'market1501']) == 2
    err = _error_line(capsys.readouterr().err)
    assert "lacks ['bounding_box_train', 'bounding_box_test']" in err
    assert _tree(root / MARKET_IMAGES) == ['query']


def test_command_line_layout(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch-home'))
    assert tool.main(['--root', str(tmp_path), '--layout']) == 0
    out = capsys.readouterr().out
    assert f'  [missing] {tmp_path}/{MARKET_IMAGES}/bounding_box_train/\n' in out
    assert f'  [missing] {tmp_path}/{DUKE_IMAGES}/query/\n' in out


def test_nothing_asked_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        tool.main([])
    assert info.value.code == 2
    assert 'nothing to do' in capsys.readouterr().err
