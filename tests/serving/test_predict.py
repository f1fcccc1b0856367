"""tools/predict.py and alfo_torchreid.serving.inference: a trained ALFO's features and
named attributes for a folder of images."""
import csv
import json
import shutil

import numpy as np
import pytest
import torch
from alfo_run import market_split, run_tool, toy_images

from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA
from alfo_torchreid.serving import inference
from alfo_torchreid.utils.checkpoints import load_checkpoint, state_dict_of
from alfo_torchreid.utils.errors import CheckpointError, ConfigError, DatasetError


@pytest.fixture(scope='module')
def predicted(alfo_weights, toy_root, module_tmp):
    """tools/predict.py on a copy of the toy query folder plus a corrupt image:
    (CompletedProcess, images folder, output folder)."""
    folder = module_tmp('images')
    shutil.copytree(market_split(toy_root, 'query'), folder / 'q')
    (folder / 'q' / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not the rest of a JPEG')
    out = folder / 'out'
    proc = run_tool('predict', '--weights', alfo_weights, folder / 'q', '--out', out, process=True)
    return proc, folder / 'q', out


def test_class_names_follow_the_annotators_conventions():
    assert MARKET_SCHEMA.class_names('gender') == ('male', 'female')  # male(1), female(2)
    assert MARKET_SCHEMA.class_names('age') == ('young', 'teenager', 'adult', 'old')
    assert MARKET_SCHEMA.class_names('clothes') == ('dress', 'pants')
    assert MARKET_SCHEMA.class_names('backpack') == ('no', 'yes')
    assert DUKE_SCHEMA.class_names('top') == ('short', 'long')
    assert MARKET_SCHEMA.colour_forms()['upcolour']['red'] == 'upred'
    assert DUKE_SCHEMA.colour_forms()['downcolour']['brown'] == 'downbrown'


def test_corrupt_image_is_skipped_and_named(predicted):
    proc, images, out = predicted
    assert proc.returncode == 2, proc.stderr
    broken = images / 'broken.jpg'
    assert f'warning: skipped: image "{broken}" cannot be read' in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == (f'error: 1 of 17 images could not be read and were skipped ("{broken}"); '
                    f'the other 16 are in "{out}"')
    assert 'Traceback' not in proc.stderr


def test_features_and_rows_are_the_models(predicted, alfo_model):
    _, images, out = predicted
    features = np.load(out / 'features.npy')
    rows = list(csv.DictReader((out / 'index.csv').open()))
    paths = sorted(str(p) for p in images.glob('*.jpg') if p.name != 'broken.jpg')
    assert features.shape == (16, 2048) and features.dtype == np.float32
    assert [r['path'] for r in rows] == paths
    with torch.no_grad():
        expected = alfo_model(toy_images(paths[:2]))
    np.testing.assert_allclose(features[:2], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_attributes_are_named_with_their_probabilities(predicted, alfo_model):
    proc, images, out = predicted
    records = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    rows = list(csv.DictReader((out / 'index.csv').open()))
    assert len(records) == 16
    with torch.no_grad():
        probs = alfo_model.attribute_probabilities(toy_images([records[0]['path']]))
    first = records[0]
    for name, p in zip(MARKET_SCHEMA.names, probs):
        classes = MARKET_SCHEMA.class_names(name)
        assert list(first['probabilities'][name]) == list(classes)
        np.testing.assert_allclose(list(first['probabilities'][name].values()), p[0].numpy(),
                                   atol=1e-4)
        best = int(p[0].argmax())
        assert first['predicted'][name] == [classes[best], pytest.approx(float(p[0, best]),
                                                                         abs=1e-4)]
        assert rows[0][name] == classes[best]
    colours = MARKET_SCHEMA.colour_forms()['upcolour']
    p_yes = {c: float(probs[MARKET_SCHEMA.index(m)][0, 1]) for c, m in colours.items()}
    assert first['predicted']['upcolour'][0] == rows[0]['upcolour'] == max(p_yes, key=p_yes.get)
    genders = {r['gender'] for r in rows}
    assert genders <= {'male', 'female'} and len(genders) == 2
    # the printed table: one row per attribute, "female 0.93"-like cells
    gender_row = next(line for line in proc.stdout.splitlines() if line.startswith('gender '))
    assert gender_row.split()[1:3] == [rows[0]['gender'],
                                       f'{first["predicted"]["gender"][1]:.2f}']


def test_load_refuses_what_is_not_an_alfo_run(alfo_weights, tmp_path):
    with pytest.raises(ConfigError, match=r'config ".*nowhere.yaml" of checkpoint .* does not '
                                          r'exist: pass --config'):
        inference.load_trained_alfo(alfo_weights, tmp_path / 'nowhere.yaml')
    bare = tmp_path / 'model' / 'bare.pth'
    bare.parent.mkdir()
    torch.save({'state_dict': state_dict_of(load_checkpoint(alfo_weights))}, bare)
    with pytest.raises(CheckpointError, match='has no attribute schema in its signature'):
        inference.load_trained_alfo(bare)


def test_find_images_walks_folders_and_names_a_missing_input(toy_root, tmp_path):
    query = market_split(toy_root, 'query')
    found = inference.find_images([query.parent])
    assert len(found) == len(list(query.parent.rglob('*.jpg'))) and found[0].endswith('.jpg')
    with pytest.raises(DatasetError, match=f'"{tmp_path}/nope" is neither an image file nor'):
        inference.find_images([tmp_path / 'nope'])
    with pytest.raises(DatasetError, match='no images'):
        inference.find_images([tmp_path])
