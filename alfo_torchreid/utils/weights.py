"""Pretrained weights as data: where each comes from and how it is loaded.

``model.pretrained`` takes one of:

* ``'imagenet'`` — torchreid's ImageNet ResNet-50 (``resnet50-19c8e357.pth``,
  the file torchreid's own ``init_pretrained_weights`` fetches into torch's
  cache, ``$TORCH_HOME/hub/checkpoints``: a file torchreid already downloaded
  is reused). Verified against the sha256 prefix in its name, torch's hub
  convention and the only checksum published for it.
* a torchreid model-zoo name, e.g. ``'resnet50_market1501'`` — fetched from
  Google Drive with ``gdown`` into the same cache. The zoo publishes no
  checksum, so these files cannot be verified (a warning says so).
* a path to a local weights file or checkpoint;
* ``''`` — random initialisation (nothing is loaded).

Downloads are atomic: a file appears under its cache name only once complete,
so an interrupted download is never used. Every file is read by
:func:`alfo_torchreid.utils.checkpoints.load_checkpoint` (no unpickling of code unless
trusted) and loaded by name and shape; the heads, which depend on the training
set's identities and attributes, are never taken from pretrained weights, and
what does not fit is skipped and reported.
"""
import logging
import os
from dataclasses import dataclass
from typing import Optional

import torch

from alfo_torchreid.utils import checkpoints, compat
from alfo_torchreid.utils.atomic import PartialFile
from alfo_torchreid.utils.download import download, sha256_of
from alfo_torchreid.utils.errors import CheckpointError, DownloadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSource:
    """A downloadable weights file.

    Attributes:
        url: where the file is published.
        filename: its name in torch's checkpoint cache.
        sha256: the expected hex digest or its leading digits; None where the
            publisher gives none.
        via: ``'http'`` (:func:`alfo_torchreid.utils.download.download`) or
            ``'gdown'`` (Google Drive).
    """
    url: str
    filename: str
    sha256: Optional[str] = None
    via: str = 'http'


def _torch_hub_source(url):
    """A file named as torch's hub names them: ``<name>-<sha256 prefix>.<ext>``."""
    filename = os.path.basename(url)
    return WeightsSource(url, filename, sha256=torch.hub.HASH_REGEX.search(filename).group(1))


IMAGENET = {'imagenet': _torch_hub_source(compat.resnet_model_urls['resnet50'])}

# torchreid's model zoo (softmax-trained ResNet-50, 256x128), as listed in its
# MODEL_ZOO.md; cached under the names torchreid's feature extractor gives them.
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

# Parameters that depend on the training set (its identities, its attribute
# schema, the vote tally), so never taken from pretrained weights even when
# their shapes happen to match: the classifier of torchreid's ResNet, PCB and
# ALFO, and ALFO's attribute heads and votes.
HEADS = ('classifier.', 'attribute_heads.', 'vote_counts')

# First bytes of a file torch.save wrote: a zip archive, or (before torch 1.6)
# a pickle. Anything else (e.g. an HTML page from Google Drive) is rejected.
TORCH_FILE_MAGIC = (b'PK\x03\x04', b'\x80')


def cache_dir():
    """torch's checkpoint cache (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), 'checkpoints')


def cached_path(source):
    """Where ``source`` is (or will be) in the cache."""
    return os.path.join(cache_dir(), source.filename)


def resolve(spec):
    """The local file for ``spec`` (a source name or a path), fetching it if needed.

    Raises:
        CheckpointError: ``spec`` is neither a known name nor an existing file.
        DownloadError: the file could not be fetched or failed its checksum
            (the message says which URL to download and where to put it).
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


def fetch(source, progress=True):
    """The cached file of ``source``, downloaded first unless already there.

    The file is verified (where a checksum is known) every time, so that a
    corrupted or foreign file in the cache is never loaded; one downloaded by
    this call and failing the check is removed.

    Args:
        source (WeightsSource): what to fetch.
        progress (bool): draw a progress bar while downloading.

    Returns:
        str: the path of the cached file.

    Raises:
        DownloadError: offline, interrupted, not a torch file, or wrong checksum.
    """
    dest = cached_path(source)
    downloaded = not os.path.isfile(dest)
    if downloaded:
        if source.via == 'gdown':
            _download_from_drive(source, dest, progress)
        else:
            download(source.url, dest, progress=progress)
    _verify(dest, source, remove=downloaded)
    return dest


def _verify(path, source, remove):
    """Checks ``path`` against ``source.sha256``; removes it on failure if
    ``remove`` (a fresh download), and only then warns when there is no checksum."""
    if source.sha256 is None:
        if remove:
            logger.warning('%s: no checksum is published for %s, so it is not verified',
                           path, source.url)
        return
    digest = sha256_of(path)
    if digest.startswith(source.sha256.lower()):
        return
    if remove:
        os.remove(path)
        fate = 'the download was discarded; try again'
    else:
        fate = f'delete it and run again to download it from {source.url}'
    raise DownloadError(f'"{path}" has sha256 {digest}, expected one starting with '
                        f'{source.sha256} (a corrupted or different file): {fate}')


def _download_from_drive(source, dest, progress):
    """Downloads a Google Drive file with gdown, atomically (temporary file,
    fsync, rename), as :func:`alfo_torchreid.utils.download.download` does over http."""
    import gdown
    try:
        with PartialFile(dest) as partial:
            # gdown writes into our open file, so that it leaves no temporary file of its own
            gdown.download(source.url, partial.file, quiet=not progress)
            partial.sync()
            _check_torch_file(partial.path, source, dest)
            partial.replace()
    except DownloadError:
        raise
    except Exception as exc:  # gdown raises requests', its own and OS errors
        raise DownloadError(
            f'could not download {source.url} ({type(exc).__name__}: {exc}). If this machine '
            f'is offline, download it elsewhere (e.g. `gdown {source.url}`) and put it at '
            f'"{dest}"') from None


def _check_torch_file(path, source, dest):
    """Rejects a download that is not a torch file (Drive sends an HTML page
    when a file is over its download quota or gone)."""
    with open(path, 'rb') as f:
        head = f.read(16)
    if not head.startswith(TORCH_FILE_MAGIC):
        raise DownloadError(
            f'{source.url} did not send a torch checkpoint (it starts with {head!r}; Google '
            'Drive sends a web page when a file is over its download quota or was moved). '
            f'Download it in a browser and put it at "{dest}"')


def load_weights(model, spec, trust=False):
    """Loads the pretrained weights named by ``spec`` into ``model``.

    Tensors are matched by name and shape. The heads (:data:`HEADS`) are left
    at their initialisation. ALFO subclasses torchreid's ResNet and PCB builds
    on it, so the backbone names of ImageNet files and torchreid checkpoints
    match all three.

    Args:
        model (nn.Module): ALFO or a torchreid model.
        spec (str): see the module docstring.
        trust (bool): allow full unpickling of a file that needs it.

    Returns:
        (loaded, skipped): names of the tensors loaded, and names in the file
        not loaded (heads, names the model lacks, other shapes), also logged
        with their reasons.

    Raises:
        CheckpointError, UntrustedCheckpointError, DownloadError.
    """
    path = resolve(spec)
    state = checkpoints.state_dict_of(checkpoints.load_checkpoint(path, trust))
    heads = [k for k in state if k.startswith(HEADS)]
    own = model.state_dict()
    loaded, unmatched = checkpoints.load_matching_weights(
        model, {k: v for k, v in state.items() if not k.startswith(HEADS)})
    if not loaded:
        raise CheckpointError(
            f'no weights in "{path}" match the model (by name and shape); '
            f'first keys in the file: {list(state)[:5]}')
    absent = [k for k in unmatched if k not in own]
    reshaped = [k for k in unmatched if k in own]
    logger.info('pretrained "%s" (%s): loaded %d tensors, %d of the model\'s left as '
                'initialised; skipped heads %s, names the model lacks %s, other shapes %s',
                spec, path, len(loaded), len(own) - len(loaded), heads, absent, reshaped)
    return loaded, heads + unmatched
