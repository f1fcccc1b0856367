"""market1501_attr / dukemtmcreid_attr on the toy trees, through torchreid's ImageDataManager."""
import hashlib
import http.server
import os
import re
import shutil
import socket
import threading
from collections import Counter

import numpy as np
import pytest
import torch
import torchreid
from alfo_run import market_split
from hypothesis import given, settings, strategies as st

from alfo_torchreid.data import datasets
from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA, UNKNOWN
from alfo_torchreid.data.datasets import (DukeMTMCreIDAttr, Market1501Attr, attribute_files,
                                          parse_image_name)
from alfo_torchreid.data.toy import write_attribute_mat
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.errors import (AttributeFileError, ConfigError, DatasetError,
                                         DownloadError, ImageReadError)

datasets.register()

NAMES = {'market1501': 'market1501_attr', 'dukemtmcreid': 'dukemtmcreid_attr'}
SCHEMAS = {'market1501': MARKET_SCHEMA, 'dukemtmcreid': DUKE_SCHEMA}


def _manager(root, sources, **kwargs):
    options = dict(height=64, width=32, batch_size_train=8, batch_size_test=16, workers=0,
                   transforms=['random_flip'], use_gpu=False)
    options.update(kwargs)
    return torchreid.data.ImageDataManager(root=str(root), sources=sources, **options)


def _original_pid(impath):
    """The person id as written at the start of the file name (independent of the package)."""
    return int(os.path.basename(impath).split('_')[0])


def _expected(toy, impath):
    """What the toy generator wrote for this image: train split for bounding_box_train,
    test split for query/gallery, -1 for junk ids 0 and -1."""
    pid = _original_pid(impath)
    if os.path.basename(os.path.dirname(impath)) == 'bounding_box_train':
        return toy.train_labels[pid].tolist()
    if pid in (0, -1):
        return [UNKNOWN] * len(SCHEMAS[toy.dataset])
    return toy.test_labels[pid].tolist()


def _check_batch(batch, toy, schema=None):
    """Each row of batch['attrs'] equals the toy annotation of the image's original id
    (laid out in ``schema``, -1 where the toy dataset lacks an attribute)."""
    own = SCHEMAS[toy.dataset]
    schema = schema or own
    assert batch['attrs'].dtype == torch.long and batch['attrs'].shape[1] == len(schema)
    for impath, attrs in zip(batch['impath'], batch['attrs'].tolist()):
        labels = _expected(toy, impath)
        expected = [labels[own.index(n)] if n in own.names else UNKNOWN for n in schema.names]
        assert attrs == expected, impath


def _toy_of(toy_datasets, impath):
    return toy_datasets['market1501' if '/market1501/' in impath else 'dukemtmcreid']


@pytest.mark.parametrize('dataset', ['market1501', 'dukemtmcreid'])
def test_batches_carry_the_attributes_of_the_original_id(toy_datasets, dataset):
    toy = toy_datasets[dataset]
    dm = _manager(toy.root, NAMES[dataset])
    assert dm.train_loader.dataset.schema is SCHEMAS[dataset]
    train_pids = {}
    seen = 0
    for batch in dm.train_loader:
        _check_batch(batch, toy)
        for impath, pid in zip(batch['impath'], batch['pid'].tolist()):
            # torchreid relabels: one label per original id, and the reverse.
            assert train_pids.setdefault(_original_pid(impath), pid) == pid
        seen += len(batch['impath'])
    assert seen == toy.num_train // 8 * 8
    assert len(set(train_pids.values())) == len(train_pids)
    junk_rows = 0
    for split in ('query', 'gallery'):
        for batch in dm.test_loader[NAMES[dataset]][split]:
            _check_batch(batch, toy)
            junk_rows += sum(p in (0, -1) for p in map(_original_pid, batch['impath']))
    if dataset == 'market1501':
        # pid 0 images stay in the gallery with unknown attributes; torchreid drops pid -1.
        assert junk_rows == toy.settings['num_distractor_images'] > 0
    else:  # Duke's gallery-only distractor ids are annotated in the test split
        queried = {_original_pid(p) for p, *_ in dm.train_loader.dataset.query}
        distractors = set(toy.test_labels) - queried
        assert len(distractors) == toy.settings['num_distractor_ids'] > 0


def test_two_sources_combined_keep_attributes_in_the_union_schema(toy_datasets, toy_root):
    dm = _manager(toy_root, ['market1501_attr', 'dukemtmcreid_attr'], combineall=True,
                  train_sampler='RandomIdentitySampler', num_instances=2)
    trainset = dm.train_loader.dataset
    union = MARKET_SCHEMA.union(DUKE_SCHEMA)
    assert trainset.schema == union and len(union) == 32
    market, duke = toy_datasets['market1501'], toy_datasets['dukemtmcreid']
    # combineall: train + query + gallery of both, without Market's junk ids (torchreid's rule)
    market_gallery = market.num_gallery - market.settings['num_distractor_images'] \
        - market.settings['num_junk_images']
    assert len(trainset.train) == (market.num_train + market.num_query + market_gallery
                                   + duke.num_train + duke.num_query + duke.num_gallery)
    for i in range(len(trainset)):  # every image, not only those the sampler draws
        item = trainset[i]
        batch = {'impath': [item['impath']], 'attrs': item['attrs'][None]}
        _check_batch(batch, _toy_of(toy_datasets, item['impath']), union)
    # RandomIdentitySampler: 4 identities x 2 images per batch, attrs equal within an identity
    batches = 0
    for batch in dm.train_loader:
        counts = Counter(batch['pid'].tolist())
        assert sorted(counts.values()) == [2, 2, 2, 2]
        for pid in counts:
            rows = batch['attrs'][batch['pid'] == pid]
            assert torch.equal(rows[0], rows[1])
        batches += 1
    assert batches >= 10


def test_sum_of_datasets(toy_datasets, toy_root):
    market = Market1501Attr(root=str(toy_root), verbose=False)
    duke = DukeMTMCreIDAttr(root=str(toy_root), verbose=False)
    assert sum([market]) is market
    summed = sum([market, duke])
    assert isinstance(summed, datasets.AttributeImageDataset)
    assert summed.num_train_pids == 16 and summed.num_datasets == 2
    duke_first = duke + market
    assert duke_first.schema.names[:23] == DUKE_SCHEMA.names
    for dataset in (summed, duke_first):
        for i in (0, len(dataset) - 1):
            item = dataset[i]
            _check_batch({'impath': [item['impath']], 'attrs': item['attrs'][None]},
                         _toy_of(toy_datasets, item['impath']), dataset.schema)
    # A source without attributes (torchreid's own Market1501) gets -1 everywhere.
    plain = compat.DukeMTMCreID(root=str(toy_root), verbose=False)
    mixed = market + plain
    assert mixed.schema is MARKET_SCHEMA
    last = mixed[len(mixed) - 1]
    assert '/dukemtmc-reid/' in last['impath'] and (last['attrs'] == UNKNOWN).all()


def test_attribute_files_block_chooses_the_annotation(toy_datasets, toy_root, tmp_path):
    toy = toy_datasets['market1501']
    binary = list(MARKET_SCHEMA.binary)
    flipped = {}
    for pid, labels in toy.train_labels.items():
        flipped[pid] = labels.copy()
        flipped[pid][binary] = 1 - labels[binary]
    custom = tmp_path / 'custom.mat'
    write_attribute_mat(custom, MARKET_SCHEMA, flipped, toy.test_labels)
    with attribute_files(market1501_attr=str(custom), dukemtmcreid_attr=None):
        dm = _manager(toy_root, 'market1501_attr')
    assert dm.train_loader.dataset.attribute_file == str(custom)
    batch = next(iter(dm.train_loader))
    for impath, attrs in zip(batch['impath'], batch['attrs'].tolist()):
        assert attrs == flipped[_original_pid(impath)].tolist()
    # outside the block: the default file again
    default = Market1501Attr(root=str(toy_root), verbose=False)
    assert default.attribute_file == str(toy.attribute_file)
    with pytest.raises(ConfigError, match=r"given for unknown datasets \['market'\]"):
        with attribute_files(market=str(custom)):
            pass


def test_register_is_idempotent_and_torchreid_builds_the_dataset(toy_root):
    datasets.register()
    datasets.register()
    dataset = torchreid.data.datasets.init_image_dataset(
        'dukemtmcreid_attr', root=str(toy_root), mode='query', verbose=False)
    assert isinstance(dataset, DukeMTMCreIDAttr) and dataset.schema is DUKE_SCHEMA


# ------------------------------------------------------------ rejections

@pytest.fixture
def market_copy(toy_root, tmp_path_factory):
    """A private copy of the toy Market tree, root/market1501/..., in a folder whose
    name holds no "<digits>_c<digit>" (tmp_path holds the test's parameters)."""
    root = tmp_path_factory.mktemp('market')
    shutil.copytree(toy_root / 'market1501', root / 'market1501')
    return root


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=rf'dataset folder "{tmp_path}/nowhere/market1501" '
                                           'does not exist; expected market1501/Market-1501-'):
        Market1501Attr(root=str(tmp_path / 'nowhere'))


def test_missing_split_folder(market_copy):
    shutil.rmtree(market_split(market_copy, 'query'))
    query = market_split(market_copy, 'query')
    with pytest.raises(DatasetError, match=rf'folder "{query}" does not exist'):
        Market1501Attr(root=str(market_copy))


def test_empty_split(market_copy):
    for image in market_split(market_copy, 'bounding_box_test').iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=rf'"{market_split(market_copy, "bounding_box_test")}" '
                                           r'holds no .jpg images'):
        Market1501Attr(root=str(market_copy))


@pytest.mark.parametrize('name,message', [
    ('holiday.jpg', r'the name does not contain "<person id>_c<camera>"'),
    ('0002_c7s1_000001_01.jpg', r'camera 7 is outside 1..6'),
    ('1502_c1s1_000001_01.jpg', r'person id 1502 is outside -1..1501'),
    ('1-2_c1s1_000001_01.jpg', r'person id "1-2" is not a number'),
])
def test_bad_image_name(market_copy, name, message):
    path = market_split(market_copy, 'bounding_box_train') / name
    shutil.copy(next(market_split(market_copy, 'query').iterdir()), path)
    with pytest.raises(DatasetError, match=rf'image "{path}": {message}'):
        Market1501Attr(root=str(market_copy))


def test_folder_path_that_torchreid_would_misread(toy_root, tmp_path):
    root = tmp_path / 'run-1_c3'
    shutil.copytree(toy_root / 'market1501', root / 'market1501')
    with pytest.raises(DatasetError, match=r'folder path contains "-1_c3", which torchreid would'):
        Market1501Attr(root=str(root))


def test_training_ids_without_attributes(toy_datasets, market_copy):
    toy = toy_datasets['market1501']
    dropped = sorted(toy.train_labels)[:3]
    kept = {p: v for p, v in toy.train_labels.items() if p not in dropped}
    write_attribute_mat(market_copy / 'market1501' / 'market_attribute.mat', MARKET_SCHEMA, kept,
                        toy.test_labels)
    ids = ', '.join(f'{p:04d}' for p in dropped)
    train = market_split(market_copy, 'bounding_box_train')
    message = (rf'has no labels for 3 of the training identities of "{train}" '
               rf'\(e.g. {ids}\); is it the annotation of this dataset\?')
    with pytest.raises(AttributeFileError, match=message):
        Market1501Attr(root=str(market_copy))


def test_test_ids_without_attributes_are_unknown(toy_datasets, market_copy):
    toy = toy_datasets['market1501']
    missing = sorted(toy.test_labels)[0]
    kept = {p: v for p, v in toy.test_labels.items() if p != missing}
    write_attribute_mat(market_copy / 'market1501' / 'market_attribute.mat', MARKET_SCHEMA,
                        toy.train_labels, kept)
    dataset = Market1501Attr(root=str(market_copy), mode='query', verbose=False)
    for impath, *_ in dataset.query:
        unknown = bool((dataset.image_attrs[impath] == UNKNOWN).all())
        assert unknown == (_original_pid(impath) == missing)


def test_explicit_annotation_must_exist(market_copy):
    absent = market_copy / 'mine.mat'
    with pytest.raises(AttributeFileError, match=rf'attribute file "{absent}" does not exist'):
        Market1501Attr(root=str(market_copy), attr_path=str(absent))


def test_annotation_of_the_other_dataset(toy_datasets, toy_root):
    duke_file = str(toy_datasets['dukemtmcreid'].attribute_file)
    with pytest.raises(AttributeFileError, match=r'is a dukemtmcreid annotation .* market1501'):
        Market1501Attr(root=str(toy_root), attr_path=duke_file)


def test_unreadable_image_fails_at_once_naming_it(market_copy):
    image = next(market_split(market_copy, 'bounding_box_train').iterdir())
    image.write_bytes(image.read_bytes()[:100])
    dataset = Market1501Attr(root=str(market_copy), verbose=False)
    index = [item[0] for item in dataset.train].index(str(image))
    with pytest.raises(ImageReadError, match=re.escape(str(image))):
        dataset[index]


# ------------------------------------------------------------ download of the annotation

@pytest.fixture
def served(toy_datasets):
    """The toy Market annotation served on 127.0.0.1: (url, sha256)."""
    payload = toy_datasets['market1501'].attribute_file.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header('Content-Length', str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}/market_attribute.mat', \
        hashlib.sha256(payload).hexdigest()
    httpd.shutdown()
    httpd.server_close()


def test_absent_annotation_is_downloaded_and_verified(market_copy, served, monkeypatch, capsys):
    url, sha = served
    default = market_copy / 'market1501' / 'market_attribute.mat'
    default.unlink()
    monkeypatch.setattr(Market1501Attr, 'attribute_url', url)
    monkeypatch.setattr(Market1501Attr, 'attribute_sha256', '0' * 64)
    with pytest.raises(DownloadError, match=rf'sha256 {sha}, expected 0+; not saved to "{default}'):
        Market1501Attr(root=str(market_copy))
    assert sorted(os.listdir(default.parent)) == ['Market-1501-v15.09.15', 'toy_dataset.json']
    monkeypatch.setattr(Market1501Attr, 'attribute_sha256', sha)
    dataset = Market1501Attr(root=str(market_copy), verbose=False)
    assert dataset.attribute_file == str(default) and default.is_file()
    assert '100%' in capsys.readouterr().err


def test_absent_annotation_offline(market_copy, monkeypatch):
    (market_copy / 'market1501' / 'market_attribute.mat').unlink()
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{s.getsockname()[1]}/market_attribute.mat'
    monkeypatch.setattr(Market1501Attr, 'attribute_url', url)
    default = market_copy / 'market1501' / 'market_attribute.mat'
    with pytest.raises(DownloadError, match=rf'could not download {url} .*put it at "{default}"'):
        Market1501Attr(root=str(market_copy))
    assert not default.exists()


def test_the_real_annotation_urls_and_checksums():
    assert Market1501Attr.attribute_url == \
        'https://github.com/vana77/Market-1501_Attribute/raw/master/market_attribute.mat'
    assert DukeMTMCreIDAttr.attribute_url == \
        'https://github.com/vana77/DukeMTMC-attribute/raw/master/duke_attribute.mat'
    assert Market1501Attr.attribute_sha256.startswith('d9fdbdd2')
    assert DukeMTMCreIDAttr.attribute_sha256.startswith('06b9833b')


# ------------------------------------------------------------ command line

def test_command_line_summary(toy_datasets, toy_root, capsys):
    assert datasets.main(['--root', str(toy_root), '--name', 'market1501_attr']) == 0
    out = capsys.readouterr().out
    toy = toy_datasets['market1501']
    train = market_split(toy_root, 'bounding_box_train')
    labels = np.stack([toy.train_labels[_original_pid(p.name)] for p in train.iterdir()])
    gender = labels[:, MARKET_SCHEMA.index('gender')].mean()
    ages = np.bincount(labels[:, 0], minlength=4) / len(labels)
    assert re.search(rf'gender +{gender:.3f} ', out)
    assert re.search(r'age +' + '/'.join(f'{a:.2f}' for a in ages) + ' ', out)
    assert 'train    |     8 |       32' in out  # torchreid's split table


def test_command_line_error_is_one_line(tmp_path, capsys):
    assert datasets.main(['--root', str(tmp_path), '--name', 'dukemtmcreid_attr']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: DukeMTMCreIDAttr: dataset folder') and err.count('\n') == 1


# ------------------------------------------------------------ file-name parsing fuzz

_NAME_CHARS = '0123456789-_cs.jpgx٣'  # includes a non-ASCII digit (regex \d matches it)


@settings(max_examples=400, deadline=None)
@given(folder=st.sampled_from(['/data/market1501/query', '/data/a_c/b', '/d/run-1_c3']),
       name=st.text(alphabet=_NAME_CHARS, max_size=16))
def test_fuzz_file_names_parse_as_torchreid_or_raise_our_error(folder, name):
    path = f'{folder}/{name}'
    try:
        pid, camid = parse_image_name(path, num_cams=6, max_pid=1501)
    except DatasetError as exc:
        assert path in str(exc)
        return
    # Accepted: exactly what torchreid reads, within its asserted ranges, from the file name.
    match = datasets.IMAGE_NAME_PATTERN.search(path)
    assert (pid, camid) == tuple(map(int, match.groups()))
    assert -1 <= pid <= 1501 and 1 <= camid <= 6
    assert match.start() >= len(folder) + 1
