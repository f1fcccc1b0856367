"""Fixtures shared by the test suite.

``toy_root``: a tiny toy Market-1501 and DukeMTMC-reID, built once per session::

    toy_root/market1501/Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}/
    toy_root/market1501/market_attribute.mat
    toy_root/dukemtmc-reid/DukeMTMC-reID/{bounding_box_train,bounding_box_test,query}/
    toy_root/dukemtmc-reid/duke_attribute.mat

``toy_datasets`` gives what was written (labels per pid, image counts) for
both, keyed ``'market1501'`` / ``'dukemtmcreid'``. Tests must not modify the
tree; copy it (``shutil.copytree``) to damage it.

``market_mat`` / ``duke_mat``: the real annotation files in ``../shared/data``,
or a skip when they are absent.

``module_tmp``: folders for a module's shared fixtures, removed once the
module's tests have passed. With pytest.ini's retention policy (the folders of
passed tests go at once) the suite never holds more than about one module's
checkpoints on disk: each training run leaves a few hundred MB (ResNet-50 and
its optimizer state). ``remove_resume_states`` frees what a module keeps but
does not read.
"""
import shutil
from pathlib import Path

import pytest

from alfo_torchreid.data.toy import make_toy_dataset

# Small enough to build in about a second; >= 8 ids per split so that every
# camera (6 on Market, 8 on Duke) appears in train, query and gallery.
TOY_SETTINGS = {
    'market1501': dict(num_train_ids=8, num_test_ids=8, images_per_id=4, queries_per_id=2,
                       cams_per_id=3, num_distractor_images=4, num_junk_images=3, seed=0),
    'dukemtmcreid': dict(num_train_ids=8, num_test_ids=8, images_per_id=4, queries_per_id=2,
                         cams_per_id=3, num_distractor_ids=2, seed=0),
}

REAL_DATA = Path(__file__).resolve().parents[2] / 'shared' / 'data'


@pytest.fixture(scope='session')
def toy_datasets(tmp_path_factory):
    """{'market1501': ToyDataset, 'dukemtmcreid': ToyDataset}, sharing one root."""
    root = tmp_path_factory.mktemp('toy-reid-data')
    return {name: make_toy_dataset(root, name, **kwargs)
            for name, kwargs in TOY_SETTINGS.items()}


@pytest.fixture(scope='session')
def toy_root(toy_datasets):
    """pathlib.Path: the root holding ``market1501/`` and ``dukemtmc-reid/``."""
    return toy_datasets['market1501'].root


@pytest.fixture(scope='module')
def module_tmp(tmp_path_factory, request):
    """``make(name) -> pathlib.Path``: a new folder, kept until the end of the
    module, and after it only if one of the module's tests failed (to look into)."""
    failed_before = request.session.testsfailed
    made = []

    def make(name):
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


def remove_resume_states(folder, keep=()):
    """Removes the ``model/latest.pth.tar`` (3/4 of a finished toy run's bytes)
    of every run under ``folder`` but those whose folder, relative to
    ``folder``, is in ``keep``."""
    for latest in Path(folder).glob('**/model/latest.pth.tar'):
        if str(latest.parent.parent.relative_to(folder)) not in keep:
            latest.unlink()


def _real_attribute_file(name):
    path = REAL_DATA / name
    if not path.is_file():
        pytest.skip(f'real annotation {path} is absent (the repository\'s ../shared/data); '
                    'this check compares against it')
    return path


@pytest.fixture
def market_mat():
    """Path of the real market_attribute.mat, or skip."""
    return _real_attribute_file('market_attribute.mat')


@pytest.fixture
def duke_mat():
    """Path of the real duke_attribute.mat, or skip."""
    return _real_attribute_file('duke_attribute.mat')


@pytest.fixture(scope='session')
def alfo_weights(toy_root, tmp_path_factory):
    """Checkpoint of an untrained ALFO in a run folder as tools/main.py writes it
    (see alfo_run.write_run), for the tests of predict, search and export."""
    from alfo_run import write_run
    return write_run(tmp_path_factory.mktemp('alfo-run'), toy_root)


@pytest.fixture(scope='session')
def trained_alfo(alfo_weights):
    """``alfo_weights`` loaded as the tools load it (``inference.load_trained_alfo``, CPU)."""
    from alfo_torchreid.serving import inference
    return inference.load_trained_alfo(alfo_weights, device='cpu')


@pytest.fixture(scope='session')
def alfo_model(alfo_weights):
    """The eval-mode ALFO of ``alfo_weights``, built by the tests' own code
    (``alfo_run.checkpoint_model``): a reference independent of inference.py."""
    from alfo_run import checkpoint_model
    return checkpoint_model(alfo_weights)
