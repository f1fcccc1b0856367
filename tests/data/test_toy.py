"""The toy dataset: torchreid reads it as the real sets, its .mat is shaped like
the real annotation, and it is deterministic.

Expected counts below are worked out by hand from ``conftest.TOY_SETTINGS``:
8 train and 8 test ids, 4 images per id, 2 queries per test id.
"""
import dataclasses
import hashlib
import re
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA
from alfo_torchreid.data.toy import (DUKE_FIELD_ORDER, MARKET_FIELD_ORDER, Camera, make_toy_dataset,
                                     render_image, sample_look, write_attribute_mat)
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.errors import ConfigError, DatasetError

MARKET_NAME = re.compile(r'^(\d{4}|-1)_c[1-6]s[1-6]_\d{6}_\d{2}\.jpg$')
DUKE_NAME = re.compile(r'^\d{4}_c[1-8]_f\d{7}\.jpg$')


def _folder_pids(folder):
    return {int(p.name.split('_')[0]) for p in folder.glob('*.jpg')}


def _assert_every_query_matches_another_camera(dataset):
    gallery = {(pid, cam) for _, pid, cam, _ in dataset.gallery}
    for path, pid, cam, _ in dataset.query:
        assert any(p == pid and c != cam for p, c in gallery), path


def test_market_parsed_by_torchreid(toy_root):
    data_dir = toy_root / 'market1501' / 'Market-1501-v15.09.15'
    market = compat.Market1501(root=str(toy_root))

    assert (len(market.train), market.num_train_pids, market.num_train_cams) == (32, 8, 6)
    assert len(market.query) == 8 * 2
    assert market.get_num_pids(market.query) == 8
    assert market.get_num_cams(market.query) == 6
    # 8 ids x 4 images + 4 pid-0 distractors; torchreid drops the 3 pid -1 images
    # and counts pid 0 as one more id.
    assert len(list((data_dir / 'bounding_box_test').glob('*.jpg'))) == 32 + 4 + 3
    assert len(market.gallery) == 36
    assert market.get_num_pids(market.gallery) == 9
    assert sorted(pid for _, pid, _, _ in market.gallery if pid < 1) == [0] * 4
    assert market.get_num_cams(market.gallery) == 6
    _assert_every_query_matches_another_camera(market)

    train_pids = _folder_pids(data_dir / 'bounding_box_train')
    query_pids = {pid for _, pid, _, _ in market.query}
    assert len(train_pids) == 8 and not train_pids & query_pids
    assert query_pids == _folder_pids(data_dir / 'bounding_box_test') - {0, -1}
    assert all(1 <= pid <= 1501 for pid in train_pids | query_pids)


def test_market_junk_and_distractors_under_combineall(toy_root):
    # combineall trains on test ids too, skipping torchreid's _junk_pids [0, -1].
    market = compat.Market1501(root=str(toy_root), combineall=True, verbose=False)
    assert market.num_train_pids == 16
    assert len(market.train) == 32 + 16 + 32


def test_duke_parsed_by_torchreid(toy_root, toy_datasets):
    data_dir = toy_root / 'dukemtmc-reid' / 'DukeMTMC-reID'
    duke = compat.DukeMTMCreID(root=str(toy_root))

    assert (len(duke.train), duke.num_train_pids, duke.num_train_cams) == (32, 8, 8)
    assert len(duke.query) == 16
    assert duke.get_num_pids(duke.query) == 8
    assert duke.get_num_cams(duke.query) == 8
    # 8 test ids x 4 + 2 gallery-only distractor ids x 4; no pid 0 / -1 at all.
    assert len(duke.gallery) == 40
    assert duke.get_num_pids(duke.gallery) == 10
    _assert_every_query_matches_another_camera(duke)

    query_pids = {pid for _, pid, _, _ in duke.query}
    gallery_only = {pid for _, pid, _, _ in duke.gallery} - query_pids
    assert len(gallery_only) == 2 and min(gallery_only) >= 1
    for pid in gallery_only:  # seen by one camera, as Duke's 408 distractor ids
        assert len({cam for _, p, cam, _ in duke.gallery if p == pid}) == 1
    assert not _folder_pids(data_dir / 'bounding_box_train') & (query_pids | gallery_only)
    assert set(toy_datasets['dukemtmcreid'].test_labels) == query_pids | gallery_only


@pytest.mark.parametrize('dataset,data_dir,pattern', [
    ('market1501', 'market1501/Market-1501-v15.09.15', MARKET_NAME),
    ('dukemtmcreid', 'dukemtmc-reid/DukeMTMC-reID', DUKE_NAME),
])
def test_file_names_follow_the_real_sets(toy_root, toy_datasets, dataset, data_dir, pattern):
    files = [p for p in (toy_root / data_dir).rglob('*') if p.is_file()]
    assert len(files) == 32 + 16 + toy_datasets[dataset].num_gallery
    assert [p.name for p in files if not pattern.match(p.name)] == []
    assert sorted(p.name for p in (toy_root / data_dir).iterdir()) == [
        'bounding_box_test', 'bounding_box_train', 'query']
    for path in files:
        with Image.open(path) as img:
            assert (img.format, img.mode, img.size) == ('JPEG', 'RGB', (64, 128))


def _load(path, variable):
    mat = scipy.io.loadmat(str(path))
    assert [k for k in mat if not k.startswith('__')] == [variable]
    return mat[variable]


def _structure(annotation):
    """{split: [(field, dtype, shape rows, element type)]} in file order."""
    out = {}
    for split in annotation.dtype.names:
        struct = annotation[split][0, 0]
        out[split] = [(f, struct[f][0, 0].dtype.str, struct[f][0, 0].shape[0],
                       type(struct[f][0, 0].flat[0]).__name__) for f in struct.dtype.names]
    return out


@pytest.mark.parametrize('dataset,subdir,filename,variable,schema,orders,splits', [
    ('market1501', 'market1501', 'market_attribute.mat', 'market_attribute',
     MARKET_SCHEMA, MARKET_FIELD_ORDER, ('test', 'train')),
    ('dukemtmcreid', 'dukemtmc-reid', 'duke_attribute.mat', 'duke_attribute',
     DUKE_SCHEMA, DUKE_FIELD_ORDER, ('train', 'test')),
])
def test_attribute_file_structure(toy_root, toy_datasets, dataset, subdir, filename,
                                  variable, schema, orders, splits):
    annotation = _load(toy_root / subdir / filename, variable)
    assert annotation.shape == (1, 1) and annotation.dtype.names == splits
    written = toy_datasets[dataset]
    folder_pids = {
        'train': _folder_pids(written.data_dir / 'bounding_box_train'),
        'test': _folder_pids(written.data_dir / 'bounding_box_test') - {0, -1},
    }
    for split, labels in (('train', written.train_labels), ('test', written.test_labels)):
        struct = annotation[split][0, 0]
        assert struct.dtype.names == orders[split]
        assert set(struct.dtype.names) == set(schema.names) | {'image_index'}
        ids = [cell[0] for cell in struct['image_index'][0, 0][0]]
        assert all(isinstance(i, str) and re.fullmatch(r'\d{4}', i) for i in ids)
        assert ids == sorted(ids) and [int(i) for i in ids] == sorted(folder_pids[split])
        for name, classes in zip(schema.names, schema.num_classes):
            values = struct[name][0, 0]
            assert values.dtype == np.uint8 and values.shape == (1, len(ids))
            assert set(np.unique(values)) <= set(range(1, classes + 1)), name
        for k, pid in enumerate(int(i) for i in ids):
            stored = [struct[n][0, 0][0, k] for n in schema.names]
            assert stored == list(labels[pid] + 1)


@pytest.mark.parametrize('fixture,subdir,filename,variable', [
    ('market_mat', 'market1501', 'market_attribute.mat', 'market_attribute'),
    ('duke_mat', 'dukemtmc-reid', 'duke_attribute.mat', 'duke_attribute'),
])
def test_attribute_file_matches_real_structure(request, toy_root, fixture, subdir,
                                               filename, variable):
    real = _load(request.getfixturevalue(fixture), variable)
    toy = _load(toy_root / subdir / filename, variable)
    assert _structure(toy) == _structure(real)
    assert real['train'][0, 0]['image_index'][0, 0][0, 0].dtype == \
        toy['train'][0, 0]['image_index'][0, 0][0, 0].dtype


def test_colour_groups_are_flagged_as_in_the_real_files():
    # Market: at most one upper and one lower colour (none = a colour outside the
    # list); Duke: one upper colour, sometimes two or three lower ones.
    rng = np.random.default_rng(1)
    for dataset, schema, max_lower in (('market1501', MARKET_SCHEMA, 1),
                                       ('dukemtmcreid', DUKE_SCHEMA, 3)):
        labels = np.stack([sample_look(rng, dataset).labels(schema) for _ in range(400)])
        for group, most in (('upper_colour', 1), ('lower_colour', max_lower)):
            idx = [schema.index(n) for n in schema.colour_groups[group]]
            counts = labels[:, idx].sum(1)
            assert counts.max() <= most and np.mean(counts == 1) > 0.85, (dataset, group)


def test_look_labels_by_hand():
    look = sample_look(np.random.default_rng(0), 'market1501')
    look = dataclasses.replace(
        look, female=True, age=2, long_hair=True, short_sleeves=False, dress=True,
        short_lower=True, hat=False, backpack=True, bag=False, handbag=True,
        upper=('red',), lower=())
    labels = dict(zip(MARKET_SCHEMA.names, look.labels(MARKET_SCHEMA)))
    expected = dict.fromkeys(MARKET_SCHEMA.names, 0)
    # clothes 0 = dress (the file's 1), up 0 = long sleeves, down 1 = short
    expected.update(age=2, gender=1, hair=1, down=1, backpack=1, handbag=1, upred=1)
    assert labels == expected


def _neutral_camera():
    grey = np.full(3, 120.0)
    return Camera(wall=grey, ground=grey, horizon=0.9, gain=np.ones(3), noise=0.0,
                  low_res=False)


def test_images_follow_the_upper_and_lower_colours():
    base = dataclasses.replace(sample_look(np.random.default_rng(0), 'market1501'),
                               pattern=0, shade=1.0, dress=False, short_lower=False,
                               long_hair=False, backpack=False, bag=False, handbag=False)
    for upper, lower in (('red', 'blue'), ('blue', 'red')):
        look = dataclasses.replace(base, upper=(upper,), lower=(lower,))
        for seed in range(3):  # three poses
            image = np.asarray(render_image(look, _neutral_camera(), np.random.default_rng(seed),
                                            128, 64), dtype=int)
            red = image[..., 0] - image[..., 2] > 80
            blue = image[..., 2] - image[..., 0] > 80
            top, bottom = {'red': red, 'blue': blue}[upper], {'red': red, 'blue': blue}[lower]
            # each garment covers about 1/8 of the 128x64 image, the upper one
            # centred some 40 rows above the lower one
            assert top.sum() > 600 and bottom.sum() > 600
            rows = np.arange(128)[:, None]
            assert (rows * bottom).sum() / bottom.sum() - (rows * top).sum() / top.sum() > 30


def _tree_digest(root):
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob('*') if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


SMALL = dict(num_train_ids=3, num_test_ids=3, images_per_id=2, queries_per_id=1,
             cams_per_id=2, num_distractor_images=2, num_junk_images=1, height=96, width=48)


def test_same_seed_same_bytes(tmp_path):
    a = make_toy_dataset(tmp_path / 'a', **SMALL)
    b = make_toy_dataset(tmp_path / 'b', **SMALL)
    make_toy_dataset(tmp_path / "c", seed=1, **SMALL)
    assert _tree_digest(tmp_path / 'a') == _tree_digest(tmp_path / 'b')
    assert _tree_digest(tmp_path / 'a') != _tree_digest(tmp_path / 'c')
    assert (a.num_train, a.num_query, a.num_gallery) == (6, 3, 6 + 2 + 1)
    assert b.attribute_file.read_bytes() == a.attribute_file.read_bytes()
    for path in a.data_dir.rglob('*.jpg'):
        with Image.open(path) as img:
            assert (img.mode, img.size) == ('RGB', (48, 96))


def test_rebuild_replaces_a_toy_tree_but_never_other_data(tmp_path):
    first = make_toy_dataset(tmp_path, **SMALL)
    stale = first.data_dir / 'query' / '1234_c1s1_000001_01.jpg'
    shutil.copy(next(first.data_dir.glob('query/*.jpg')), stale)
    make_toy_dataset(tmp_path, **SMALL)
    assert not stale.exists()

    real = tmp_path / 'real' / 'dukemtmc-reid' / 'DukeMTMC-reID'
    real.mkdir(parents=True)
    with pytest.raises(DatasetError, match=r'dukemtmc-reid" exists and holds no toy_dataset.json'):
        make_toy_dataset(tmp_path / 'real', 'dukemtmcreid')
    assert real.is_dir()


@pytest.mark.parametrize('kwargs,message', [
    (dict(dataset='viper'), r"toy dataset 'viper' is unknown"),
    (dict(num_cams=7), r'num_cams=7, expected 2\.\.6'),
    (dict(cams_per_id=1), r'cams_per_id=1, expected 2\.\.num_cams=6'),
    (dict(queries_per_id=4), r'queries_per_id=4, expected 1\.\.cams_per_id=3'),
    (dict(images_per_id=2), r'images_per_id=2, expected >= cams_per_id=3'),
    (dict(num_train_ids=1500), r'1530 identities, expected at most 1501'),
    (dict(num_distractor_ids=3), r'num_distractor_ids is a Duke count'),
    (dict(dataset='dukemtmcreid', num_junk_images=1), r'DukeMTMC-reID has no pid 0 / -1'),
])
def test_bad_settings_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_toy_dataset(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())


def test_write_attribute_mat_for_custom_files(tmp_path):
    # What other tests use to make odd files: a label of -1 is stored as 0 (as
    # in a few entries of the real Duke file), a schema without an attribute
    # leaves its field out.
    schema = dataclasses.replace(
        DUKE_SCHEMA, names=DUKE_SCHEMA.names[1:], num_classes=DUKE_SCHEMA.num_classes[1:],
        classes=DUKE_SCHEMA.classes[1:])
    train = {7: np.r_[-1, np.zeros(len(schema) - 1, int)], 3: np.ones(len(schema), int)}
    write_attribute_mat(tmp_path / 'x.mat', schema, train, {12: np.zeros(len(schema), int)})
    annotation = _load(tmp_path / 'x.mat', 'duke_attribute')
    struct = annotation['train'][0, 0]
    assert struct.dtype.names == DUKE_FIELD_ORDER['train'][1:]
    assert [c[0] for c in struct['image_index'][0, 0][0]] == ['0003', '0007']
    assert struct['bag'][0, 0].tolist() == [[2, 0]]
    with pytest.raises(ValueError, match=r'labels must lie in -1\.\.254'):
        write_attribute_mat(tmp_path / 'y.mat', schema, {1: np.full(len(schema), 255)}, {})
