"""Pretrained weights as data: where each comes from and how it is loaded.

``model.pretrained`` takes one of:

* ``'imagenet'`` — torchreid's ImageNet ResNet-50 (the file torchreid's own
  ``init_pretrained_weights`` fetches into torch's cache);
* a torchreid model-zoo name, e.g. ``'resnet50_market1501'`` — fetched from
  Google Drive with ``gdown`` into torch's cache, then loaded into the backbone;
* a path to a local weights file or checkpoint;
* ``''`` — random initialisation.

Every file goes through :func:`alfo_torchreid.compat.load_checkpoint` (no
unpickling of code) and is loaded by name and shape; what does not fit
(classifiers sized for another dataset) is skipped and reported.
"""
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

import torch

from alfo_torchreid import compat
from alfo_torchreid.errors import CheckpointError, DownloadError


@dataclass(frozen=True)
class WeightsSource:
    """A downloadable weights file.

    Attributes:
        url: where the file is published.
        filename: its name in torch's checkpoint cache.
        sha256: expected digest, or None where the publisher gives none.
        via: ``'http'`` (torch's downloader) or ``'gdown'`` (Google Drive).
    """
    url: str
    filename: str
    sha256: Optional[str] = None
    via: str = 'http'


IMAGENET = {
    'imagenet': WeightsSource(compat.resnet_model_urls['resnet50'],
                              os.path.basename(compat.resnet_model_urls['resnet50'])),
}

# torchreid's model zoo (softmax-trained ResNet-50, 256x128), as listed in its docs.
MODEL_ZOO = {
    'resnet50_market1501': WeightsSource(
        'https://drive.google.com/uc?id=1dUUZ4rHDWohmsQXCRe2C_HbYkzz94iBV',
        'resnet50_market1501.pt', via='gdown'),
    'resnet50_dukemtmcreid': WeightsSource(
        'https://drive.google.com/uc?id=17ymnLglnc64NRvGOitY3BqMRS9UWd1wg',
        'resnet50_dukemtmcreid.pt', via='gdown'),
    'resnet50_msmt17': WeightsSource(
        'https://drive.google.com/uc?id=1ep7RypVDOthCRIAqDnn4_N-UhkkFHJsj',
        'resnet50_msmt17.pt', via='gdown'),
}

SOURCES = {**IMAGENET, **MODEL_ZOO}


def cache_dir():
    """torch's checkpoint cache (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def resolve(spec):
    """The local file for ``spec`` (a source name or a path), fetching it if needed.

    Raises:
        CheckpointError: ``spec`` is neither a known name nor an existing file.
        DownloadError: the file could not be fetched (says where to place it).
    """
    spec = str(spec)
    if spec in SOURCES:
        return fetch(SOURCES[spec])
    path = os.path.abspath(os.path.expanduser(spec))
    if not os.path.isfile(path):
        raise CheckpointError(
            f'weights file "{path}" does not exist (model.pretrained takes "imagenet", '
            f'a model-zoo name {sorted(MODEL_ZOO)}, a file path, or "" for none)')
    return path


def fetch(source):
    """Downloads ``source`` into the cache unless it is there; returns its path.

    The file is written under a temporary name and renamed when complete, so
    an interrupted download never leaves a file that would later be used.
    """
    dest = os.path.join(cache_dir(), source.filename)
    if os.path.isfile(dest):
        return dest
    os.makedirs(cache_dir(), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir(), prefix='.' + source.filename, suffix='.part')
    os.close(fd)
    try:
        _download(source, tmp)
        if source.sha256:
            from alfo_torchreid.download import sha256_of
            digest = sha256_of(tmp)
            if digest != source.sha256:
                raise DownloadError(f'{source.url} has sha256 {digest}, expected {source.sha256}')
        os.replace(tmp, dest)
    except DownloadError:
        raise
    except Exception as exc:
        raise DownloadError(
            f'could not download {source.url} ({type(exc).__name__}: {exc}); download it '
            f'by hand and place it at "{dest}"') from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _download(source, path):
    if source.via == 'gdown':
        import gdown
        if gdown.download(source.url, path, quiet=False) is None:
            raise OSError('gdown returned no file')
    else:
        torch.hub.download_url_to_file(source.url, path, progress=True)


def load_weights(model, spec, trust=False):
    """Loads pretrained weights named by ``spec`` into ``model``'s backbone.

    The backbone is ``model.backbone`` when the model has one (ALFO), else the
    model itself (torchreid's models, whose layer names match the zoo files).

    Returns:
        (loaded, skipped): parameter names loaded, and names in the file that
        the model lacks or holds in another shape (e.g. the zoo's classifier).
    """
    target = getattr(model, 'backbone', model)
    path = resolve(spec)
    return compat.load_pretrained_weights(target, path, trust=trust)

