"""A trained ALFO put to use: loaded from a run's checkpoint, it turns image
files into re-ID features and attribute probabilities, batch by batch.

A checkpoint carries its description (:mod:`alfo_torchreid.utils.description`):
the number of training identities, the attribute schema, the input size,
normalisation and the ``alfo.*`` settings the network was built with; a
config given with it (``--config``) must agree. A checkpoint written before
descriptions existed is read with its run's ``config.yaml`` (beside
``model/``, or ``--config``) and its ``signature``. Outputs follow the
layout of :mod:`alfo_torchreid.evaluation.attribute_match`: features ``[N, D]`` and
attribute probabilities ``[N, K]``.
"""
import contextlib
import csv
import io
import json
import logging
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from alfo_torchreid import config
from alfo_torchreid.data.attributes import AttributeSchema
from alfo_torchreid.evaluation.attribute_match import choices, named_predictions, split_attributes
from alfo_torchreid.models import ALFO
from alfo_torchreid.utils import checkpoints, compat, description
from alfo_torchreid.utils.atomic import PartialFile
from alfo_torchreid.utils.errors import CheckpointError, ConfigError, DatasetError, ImageReadError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


class FeaturesAndAttributes(nn.Module):
    """An eval-mode ALFO as one function of images, with two outputs.

    ``[B, 3, H, W]`` normalised images -> (retrieval feature ``[B, D]``,
    attribute probabilities ``[B, K]``: every attribute's class probabilities
    in schema order, concatenated). One backbone pass
    (:meth:`ALFO.features_and_attributes`).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    def forward(self, images):
        features, probs = self.model.features_and_attributes(images)
        return features, torch.cat(probs, dim=1)


@dataclass
class TrainedALFO:
    """A loaded ALFO and what using it needs.

    Attributes:
        network: :class:`FeaturesAndAttributes` on ``device``, eval mode.
        schema: its attributes.
        transform: PIL image -> normalised ``[3, height, width]`` tensor
            (torchreid's evaluation transform).
        identity: what must match for two feature sets to be comparable: the
            checkpoint's signature, the weights' digest
            (:func:`~alfo_torchreid.utils.checkpoints.weights_digest`) and the config
            values that change the outputs.
        weights, config_file: the files it was loaded from (absolute paths;
            ``config_file`` '' when the checkpoint's description was enough).
        device: where ``network`` runs.
    """
    network: FeaturesAndAttributes
    schema: AttributeSchema
    transform: object
    identity: dict
    weights: str
    config_file: str
    device: torch.device

    def search_features(self, features):
        """``[N, D]`` features as a search compares them: L2-normalised when the
        run's evaluation did (``test.normalize_feature``, or the cosine metric)."""
        if not self.identity['normalize_feature']:
            return features
        return features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)


def default_config_file(weights):
    """``<run>/config.yaml`` for a checkpoint ``<run>/model/<file>``."""
    return osp.join(osp.dirname(osp.dirname(osp.abspath(weights))), 'config.yaml')


def _model_paths(weights, config_file=''):
    """The absolute paths of the weights and of their config (default
    :func:`default_config_file`)."""
    weights = osp.abspath(osp.expanduser(str(weights)))
    return weights, osp.abspath(osp.expanduser(str(config_file or default_config_file(weights))))


def model_files(weights, config_file=''):
    """``{path: what it is}`` of the files :func:`load_trained_alfo` reads (for
    :func:`~alfo_torchreid.utils.own_inputs.refuse_writing_over_inputs`)."""
    weights, config_file = _model_paths(weights, config_file)
    return {weights: 'the weights', config_file: 'the config'}


def load_trained_alfo(weights, config_file='', trust=False, device=None):
    """Loads an ALFO checkpoint written by ``tools/main.py`` or the engine for inference.

    The checkpoint's description decides how the model is built and fed; a
    ``config_file`` that disagrees with it is refused. Without a description
    (older checkpoints) the config (default: the run's ``config.yaml``)
    decides and must exist.

    Args:
        weights (str): ``<run>/model/model.pth.tar-N`` or ``latest.pth.tar``.
        config_file (str): the run's config; default :func:`default_config_file`.
        trust (bool): allow a checkpoint that needs full unpickling.
        device: default CUDA when available, else the CPU.

    Returns:
        TrainedALFO

    Raises:
        CheckpointError, ConfigError: naming the file and what is wrong.
    """
    given = bool(config_file)
    weights, config_file = _model_paths(weights, config_file)
    checkpoint = checkpoints.load_checkpoint(weights, trust)
    signature = checkpoint.get('signature') if isinstance(checkpoint, dict) else None
    if not signature or 'schema' not in signature:
        raise CheckpointError(
            f'checkpoint "{weights}" has no attribute schema in its signature: an ALFO '
            'checkpoint written by tools/main.py (model/model.pth.tar-N or latest.pth.tar) '
            'is needed')
    described = description.of_checkpoint(checkpoint, weights)
    cfg, normalize = _model_config(weights, described, config_file, given)
    source = f'config "{config_file}"' if described is None else \
        f'description in checkpoint "{weights}"'
    if not config.is_alfo(cfg):
        raise ConfigError(f'{source} is of model {cfg.model.name!r}, not ALFO')
    schema = AttributeSchema.from_dict(signature['schema'])
    model = ALFO(signature['num_classes'], schema=schema, pretrained=False,
                 **config.alfo_model_kwargs(cfg))
    state_dict = checkpoints.state_dict_of(checkpoint)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint "{weights}" does not fit the ALFO of the {source}: '
                              f'{" ".join(str(exc).split())[:400]}') from None
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    d = cfg.data
    identity = {
        'signature': signature,
        'weights_digest': checkpoints.weights_digest(state_dict),
        'input': {'height': d.height, 'width': d.width, 'mean': list(d.norm_mean),
                  'std': list(d.norm_std)},
        'alfo': config.alfo_model_kwargs(cfg),
        'normalize_feature': normalize,
    }
    return TrainedALFO(FeaturesAndAttributes(model).to(device), schema,
                       compat.test_transform(d.height, d.width, d.norm_mean, d.norm_std),
                       identity, weights, config_file if given or described is None else '',
                       device)


def _model_config(weights, described, config_file, given):
    """The config the model of ``weights`` is built and fed with, and whether
    its features are L2-normalised for retrieval.

    With a description: the defaults with the described settings; a
    ``given`` config file must agree. Without: the config file, which must exist.

    Raises:
        ConfigError: a missing config, or a given one that disagrees (naming the keys).
    """
    if described is None or given:
        if not osp.isfile(config_file):
            raise ConfigError(f'config "{config_file}" of checkpoint "{weights}" does not '
                              'exist: pass --config, the config.yaml of the run that trained it')
        cfg = config.load_config(config_file)
        if described is None:
            return cfg, bool(cfg.test.normalize_feature or cfg.test.dist_metric == 'cosine')
        differing = description.differences(
            described, config.described_settings(cfg, described['settings']))
        if differing:
            raise ConfigError(
                f'config "{config_file}" disagrees with checkpoint "{weights}": '
                f'{description.format_differences(differing)}; the checkpoint holds the '
                'settings it was trained with (leave out --config to use them)')
    cfg = config.get_config()
    config.adopt_settings(cfg, config.described_only(described['settings']))
    return cfg, bool(described['normalize_feature'])


def add_model_arguments(parser, weights_default=None):
    """Adds the command-line options of the tools that use a trained ALFO:
    ``--weights`` (required unless ``weights_default`` describes its
    default), ``--config``, ``--trust-checkpoint`` and ``--debug``."""
    parser.add_argument('--weights', required=weights_default is None, default='',
                        help='checkpoint of tools/main.py' + (
                            f' (default: {weights_default})' if weights_default else ''))
    parser.add_argument('--config', default='', help="the run's config, which must agree "
                        "with the checkpoint's description (default: <run>/config.yaml for "
                        '--weights <run>/model/<file>; needed only for checkpoints without a '
                        'description)')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow a checkpoint that needs full unpickling (can run code)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')


def find_images(inputs):
    """The image files among ``inputs`` (files, and folders searched
    recursively for .jpg/.jpeg/.png/.bmp), absolute, sorted within each folder.

    Raises:
        DatasetError: an input does not exist, or none holds an image.
    """
    found = []
    for item in inputs:
        item = osp.abspath(osp.expanduser(str(item)))
        if osp.isfile(item):
            found.append(item)
        elif osp.isdir(item):
            # regular files only: reading a FIFO named *.jpg would wait forever
            found += sorted(path for path in (osp.join(folder, name)
                                              for folder, _, names in os.walk(item)
                                              for name in names
                                              if name.lower().endswith(IMAGE_EXTENSIONS))
                            if osp.isfile(path))
        else:
            raise DatasetError(f'"{item}" is neither an image file nor a folder'
                               f'{" (it does not exist)" if not osp.exists(item) else ""}')
    if not found:
        raise DatasetError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {list(map(str, inputs))}')
    return list(dict.fromkeys(found))


@dataclass
class Predictions:
    """What :func:`predict` made of a list of images.

    Attributes:
        paths: the images read, in input order (row ``i`` of the arrays).
        features: float32 ``[N, D]`` retrieval features (not normalised).
        attributes: float32 ``[N, K]`` attribute probabilities.
        skipped: ``(path, reason)`` of every image that could not be read.
    """
    paths: List[str]
    features: np.ndarray
    attributes: np.ndarray
    skipped: List[Tuple[str, str]]


class _ImageFiles(torch.utils.data.Dataset):
    """Item i: (i, image tensor, '') or, for an unreadable file, (i, None, reason)."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.transform(compat.read_image(self.paths[i])), ''
        except ImageReadError as exc:
            return i, None, str(exc)


def _collate(items):
    read = [(i, image) for i, image, _ in items if image is not None]
    failed = [(i, reason) for i, image, reason in items if image is None]
    images = torch.stack([image for _, image in read]) if read else None
    return [i for i, _ in read], images, failed


def check_loader_settings(batch_size, workers):
    """Refuses a ``batch_size`` below 1 or ``workers`` below 0 (of :func:`predict`),
    so that a tool can refuse them before it makes its output folder.

    Raises:
        ConfigError: naming the option (``--batch-size``, ``--workers``).
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f'the batch size (--batch-size) must be an integer >= 1, got '
                          f'{batch_size}')
    if not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(f'the image-reading processes (--workers) must be an integer >= 0, '
                          f'got {workers}')


@torch.no_grad()
def predict(trained, paths, batch_size=64, workers=0, progress=None):
    """Features and attribute probabilities of image files, in batches.

    An unreadable image is skipped with a warning naming it (logged); the
    others are still predicted.

    Args:
        trained (TrainedALFO): the model.
        paths (list of str): image files.
        batch_size, workers: of the DataLoader that reads them.
        progress (bool): show a progress bar; default: when stderr is a terminal.

    Returns:
        Predictions
    """
    check_loader_settings(batch_size, workers)
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, trained.transform), batch_size,
                                         num_workers=workers, collate_fn=_collate)
    show = sys.stderr.isatty() if progress is None else progress
    rows, features, attributes, skipped = [], [], [], []
    with tqdm(total=len(paths), unit='image', disable=not show) as bar:
        for indices, images, failed in loader:
            for i, reason in failed:
                logger.warning('skipped: %s', reason)
                skipped.append((paths[i], reason))
            if images is not None:
                feature, probs = trained.network(images.to(trained.device))
                rows += indices
                features.append(feature.float().cpu().numpy())
                attributes.append(probs.float().cpu().numpy())
            bar.update(len(indices) + len(failed))
    features.append(np.empty((0, trained.network.model.retrieval_dim), np.float32))
    attributes.append(np.empty((0, sum(trained.schema.num_classes)), np.float32))
    return Predictions([paths[i] for i in rows], np.concatenate(features),
                       np.concatenate(attributes), skipped)


@torch.no_grad()
def predict_image(trained, path):
    """One image -> (feature ``[D]``, attribute probabilities ``[K]``), numpy.

    Raises:
        ImageReadError: naming ``path``, when it cannot be read.
    """
    image = trained.transform(compat.read_image(path)).unsqueeze(0)
    feature, probs = trained.network(image.to(trained.device))
    return feature[0].float().cpu().numpy(), probs[0].float().cpu().numpy()


# -- output files -------------------------------------------------------------

FEATURES_FILE, INDEX_FILE, JSONL_FILE = 'features.npy', 'index.csv', 'predictions.jsonl'


def prediction_files(out_dir):
    """The files :func:`write_predictions` writes into ``out_dir``."""
    return [osp.join(out_dir, name) for name in (FEATURES_FILE, INDEX_FILE, JSONL_FILE)]


def write_predictions(out_dir, predictions, schema):
    """Writes the predictions into ``out_dir`` as one unit: every file is
    written in full (beside its destination) before any replaces its older
    version, so a failure (a full disk) leaves the previous outputs as they
    were. Row ``i`` of each file is the same image:

    * ``features.npy``: float32 ``[N, D]`` retrieval features;
    * ``index.csv``: ``path``, then the predicted class of every attribute and
      colour form (``gender``: ``female``, ..., ``upcolour``: ``red``);
    * ``predictions.jsonl``: per image ``{"path", "predicted": {name: [class,
      probability]}, "probabilities": {attribute: {class: probability}}}``.
    """
    os.makedirs(out_dir, exist_ok=True)
    named = named_predictions(predictions.attributes, schema)
    with contextlib.ExitStack() as stack:
        files = {name: stack.enter_context(PartialFile(osp.join(out_dir, name)))
                 for name in (FEATURES_FILE, INDEX_FILE, JSONL_FILE)}
        np.save(files[FEATURES_FILE].file, predictions.features)
        table = io.StringIO()
        writer = csv.writer(table, lineterminator='\n')
        names = choices(schema)
        writer.writerow(['path', *names])
        writer.writerows([path, *(c for c, _ in row.values())]
                         for path, row in zip(predictions.paths, named))
        files[INDEX_FILE].file.write(table.getvalue().encode())
        for path, row, probs in zip(predictions.paths, named,
                                    zip(*split_attributes(predictions.attributes, schema))):
            record = {'path': path,
                      'predicted': {n: [c, round(p, 4)] for n, (c, p) in row.items()},
                      'probabilities': {n: dict(zip(names[n], np.round(p.tolist(), 4).tolist()))
                                        for n, p in zip(schema.names, probs)}}
            files[JSONL_FILE].file.write((json.dumps(record) + '\n').encode())
        for partial in files.values():
            partial.sync()
        for partial in files.values():
            partial.replace()


def prediction_table(predictions, schema, max_images=4):
    """A text table of the first ``max_images`` images' predictions: one row per
    attribute (colour groups as one row each), cells like ``female 0.93``."""
    named = named_predictions(predictions.attributes[:max_images], schema)
    header = ['attribute'] + [osp.basename(p)[:24] for p in predictions.paths[:max_images]]
    rows = [[name] + [f'{image[name][0]} {image[name][1]:.2f}' for image in named]
            for name in choices(schema) if name not in schema.colour_members]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip()
                     for r in [header] + rows)


def raise_if_skipped(predictions, destination):
    """Raises ImageReadError summing up the images :func:`predict` skipped
    (each was already named in a warning), after the rest was written to
    ``destination``."""
    skipped = predictions.skipped
    if skipped:
        named = ', '.join(f'"{path}"' for path, _ in skipped[:3])
        raise ImageReadError(
            f'{len(skipped)} of {len(skipped) + len(predictions.paths)} images could not be '
            f'read and were skipped ({named}{", ..." if len(skipped) > 3 else ""}); the other '
            f'{len(predictions.paths)} are in "{destination}"')
