"""The one place that knows torchreid's and torch's quirks.

* Layout: PyPI's ``torchreid==0.2.5`` is upstream torchreid 1.4.0 moved under
  ``torchreid.reid.*``; ``from torchreid.data.datasets import X`` fails there,
  while attribute access through the top-level package works in both. Every
  torchreid class this package needs is looked up here.
* Checkpoints: torchreid's ``load_checkpoint`` fails on torch >= 2.6; the
  safe loader that replaces it is :func:`alfo_torchreid.utils.checkpoints.load_checkpoint`.
* Images: torchreid's ``read_image`` loops forever on an unreadable file;
  :func:`read_image` fails at once and names the file. :func:`test_transform`
  is torchreid's evaluation transform without the lines it prints.
"""
import contextlib
import io
import os

import torchreid
from PIL import Image

from alfo_torchreid.utils.errors import ImageReadError

Market1501 = torchreid.data.datasets.Market1501
DukeMTMCreID = torchreid.data.datasets.DukeMTMCreID
ImageDataset = torchreid.data.ImageDataset
RandomIdentitySampler = torchreid.data.sampler.RandomIdentitySampler
ImageSoftmaxEngine = torchreid.engine.ImageSoftmaxEngine
ImageTripletEngine = torchreid.engine.ImageTripletEngine
ResNet = torchreid.models.resnet.ResNet
Bottleneck = torchreid.models.resnet.Bottleneck
resnet_model_urls = torchreid.models.resnet.model_urls


def model_factory():
    """torchreid's model registry: the dict behind ``build_model`` and
    ``show_avai_models`` (``__model_factory`` in ``torchreid.models``)."""
    return vars(torchreid.models)['__model_factory']


def image_datasets():
    """torchreid's image dataset registry: the dict behind ``register_image_dataset``
    and ``ImageDataManager`` (``__image_datasets`` in ``torchreid.data.datasets``)."""
    return vars(torchreid.data.datasets)['__image_datasets']


def read_image(path):
    """Reads an image as RGB, failing at once instead of retrying.

    Raises:
        ImageReadError: naming ``path``, if it is missing, truncated or not an image.
    """
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block forever
        raise ImageReadError(f'image "{path}" is not a regular file')
    try:
        with Image.open(path) as img:
            return img.convert('RGB')
    except FileNotFoundError:
        raise ImageReadError(f'image "{path}" does not exist') from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            f'image "{path}" cannot be read ({exc}); expected a complete JPEG or PNG file'
        ) from None


def input_settings(datamanager):
    """A torchreid data manager's input, as config keys: ``data.height``,
    ``data.width`` and the ``data.norm_mean`` / ``data.norm_std`` of its
    evaluation transform's ``Normalize`` (torchreid keeps them nowhere else)."""
    normalize = next(t for t in datamanager.transform_te.transforms if hasattr(t, 'mean'))
    return {'data.height': datamanager.height, 'data.width': datamanager.width,
            'data.norm_mean': [float(v) for v in normalize.mean],
            'data.norm_std': [float(v) for v in normalize.std]}


def test_transform(height, width, norm_mean, norm_std):
    """torchreid's evaluation transform (``build_transforms``' second one):
    PIL image -> resized, normalised ``[3, height, width]`` float tensor."""
    with contextlib.redirect_stdout(io.StringIO()):  # it prints every step
        return torchreid.data.transforms.build_transforms(
            height, width, transforms=None, norm_mean=norm_mean, norm_std=norm_std)[1]
