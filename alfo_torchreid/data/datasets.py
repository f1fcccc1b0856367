"""Market-1501 and DukeMTMC-reID with identity-level attribute labels.

``market1501_attr`` and ``dukemtmcreid_attr`` are torchreid's own
``Market1501`` and ``DukeMTMCreID`` (same ``root``, same folder layout, same
``(img_path, pid, camid, dsetid)`` samples, so samplers such as
``RandomIdentitySampler`` work unchanged) whose items also carry ``attrs``: a
LongTensor [m] of 0-based labels in the order of the dataset's ``schema``, -1
where unknown: junk pid 0 / -1 images, ids the annotation lacks, labels the
annotators left out (DukeMTMC-attribute's ``top`` of two training ids) and, in
a sum of sources, the attributes a source lacks; losses and metrics must skip
-1, in training batches too. Training
images take the labels of the annotation's ``train`` split, query and gallery
images those of its ``test`` split, matched by the original person id of the
file name (torchreid relabels training pids).

The annotation is ``<root>/<dataset_dir>/market_attribute.mat`` (or
``duke_attribute.mat``); when absent it is downloaded from the annotators'
repository and checked against its sha256. Another file can be given as
``attr_path=`` when building a dataset directly, or, since torchreid's
``ImageDataManager`` passes no extra arguments, for the datasets built inside
an :func:`attribute_files` block::

    with attribute_files(market1501_attr='my_market_attribute.mat'):
        datamanager = torchreid.data.ImageDataManager(sources='market1501_attr', ...)

Summing datasets (``combineall``, several ``sources``) keeps the attributes:
the sum's schema is the union of the sources' (first source's order), with -1
for the attributes a source lacks.

Command line: ``python -m alfo_torchreid.data.datasets --root R --name market1501_attr``
prints the splits and each attribute's positive rate.
"""
import argparse
import contextlib
import glob
import logging
import os.path as osp
import re
import sys

import numpy as np
import torch
import torchreid

from alfo_torchreid.data.attributes import UNKNOWN, convert_labels, load_attribute_file
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.download import download
from alfo_torchreid.utils.errors import AttributeFileError, ConfigError, DatasetError, run_command

logger = logging.getLogger(__name__)

# torchreid's file-name pattern (Market1501/DukeMTMCreID.process_dir), which it
# searches in the whole path: "<person id>_c<camera>".
IMAGE_NAME_PATTERN = re.compile(r'([-\d]+)_c(\d)')
# Query/gallery ids without attributes (docs/method.md, "Decisions"): Market's distractor (0) and
# junk (-1) detections.
JUNK_PIDS = (0, -1)


def parse_image_name(path, num_cams, max_pid):
    """The person id and camera torchreid reads from an image path.

    Args:
        path (str): image path, e.g. ``.../0002_c1s1_000451_03.jpg``.
        num_cams (int): cameras are 1..num_cams.
        max_pid (int): person ids are -1..max_pid (-1: junk, 0: distractor).

    Returns:
        (pid, camid): ints, camid 1-based as in the name.

    Raises:
        DatasetError: naming the path, for a name torchreid would reject or,
            because it searches the whole path, misread.
    """
    match = IMAGE_NAME_PATTERN.search(path)
    if match is not None and match.start() < len(path) - len(osp.basename(path)):
        raise DatasetError(f'image "{path}": its folder path contains "{match.group(0)}", which '
                           'torchreid would read as the person id and camera; move the dataset '
                           'to a folder without "<digits>_c<digit>" in its path')
    pid, camid = image_name_ids(path)
    if not -1 <= pid <= max_pid:
        raise DatasetError(f'image "{path}": person id {pid} is outside -1..{max_pid}')
    if not 1 <= camid <= num_cams:
        raise DatasetError(f'image "{path}": camera {camid} is outside 1..{num_cams}')
    return pid, camid


def image_name_ids(path):
    """The person id and camera written in an image's file name ``<pid>_c<camera>...``,
    whatever their range.

    Returns:
        (pid, camid): ints, camid 1-based as in the name.

    Raises:
        DatasetError: naming the path, for a name without them or a person id
            that is not a number.
    """
    match = IMAGE_NAME_PATTERN.search(osp.basename(path))
    if match is None:
        raise DatasetError(f'image "{path}": the name does not contain "<person id>_c<camera>" '
                           '(e.g. 0002_c1s1_000451_03.jpg)')
    try:
        pid = int(match.group(1))
    except ValueError:  # the pattern allows "12-3"
        raise DatasetError(
            f'image "{path}": person id "{match.group(1)}" is not a number') from None
    return pid, int(match.group(2))


def relabel_by_person_id(items):
    """Training items with person ids replaced by labels ``0..n-1`` in ascending
    order of the ids.

    Args:
        items: torchreid's list of (img_path, pid, camid[, dsetid]).
    """
    labels = {pid: label for label, pid in enumerate(sorted({item[1] for item in items}))}
    return [(path, labels[pid], *rest) for path, pid, *rest in items]


def refuse_unlabelled_training(unlabelled, labels_file, training):
    """Refuses labels that leave training identities without any: most likely
    another dataset's (Duke's annotation on Market's images). Query and gallery
    identities may go unlabelled (their attributes are then unknown, -1).

    Args:
        unlabelled (set of int): the original person ids of the training
            images that ``labels_file`` has no labels for.
        labels_file (str): the labels' file as messages name it, e.g.
            ``'attribute file "market_attribute.mat"'``.
        training (str): where the training images are, e.g. their folder in quotes.

    Raises:
        AttributeFileError: naming both and a few of the ids, when ``unlabelled``
            is not empty.
    """
    if unlabelled:
        raise AttributeFileError(
            f'{labels_file} has no labels for {len(unlabelled)} of the training identities of '
            f'{training} (e.g. {", ".join(f"{p:04d}" for p in sorted(unlabelled)[:5])}); '
            'is it the annotation of this dataset?')


class AttributeMixin:
    """Adds ``attrs`` to the items of a torchreid image dataset.

    The dataset holds ``schema`` (AttributeSchema) and ``image_attrs``
    ({img_path: int64 ndarray [len(schema)]}, one entry per image of train,
    query and gallery). NumPy rather than tensors: a spawned DataLoader worker
    would receive every tensor through its own shared-memory handle.
    """

    def __getitem__(self, index):
        img_path, pid, camid, dsetid = self.data[index]
        img = compat.read_image(img_path)
        if self.transform is not None:
            img = self._transform_image(self.transform, self.k_tfm, img)
        return {'img': img, 'pid': pid, 'camid': camid, 'impath': img_path,
                'dsetid': dsetid, 'attrs': torch.tensor(self.image_attrs[img_path])}

    def __add__(self, other):
        """Adds ``other``'s training images as torchreid does (shifting its pids,
        cameras and dataset ids), keeping the attributes of both.

        The sum's schema is the union of both schemas; a source without
        attributes (a plain torchreid dataset) gets -1 everywhere.
        """
        summed = compat.ImageDataset.__add__(self, other)
        other_schema = getattr(other, 'schema', None)
        schema = self.schema.union(other_schema) if other_schema is not None else self.schema
        image_attrs = _convert_all(self.image_attrs, self.schema, schema)
        if other_schema is not None:
            image_attrs.update(_convert_all(other.image_attrs, other_schema, schema))
        else:
            unknown = np.full(len(schema), UNKNOWN, dtype=np.int64)
            image_attrs.update((item[0], unknown) for item in other.train)
        return AttributeImageDataset(
            summed.train, summed.query, summed.gallery, schema=schema, image_attrs=image_attrs,
            transform=self.transform, k_tfm=self.k_tfm, mode=self.mode, verbose=False)


def _convert_all(image_attrs, source, target):
    if source == target:
        return dict(image_attrs)
    return {path: convert_labels(attrs, source, target) for path, attrs in image_attrs.items()}


class AttributeImageDataset(AttributeMixin, compat.ImageDataset):
    """An image dataset with attributes: what summing attribute datasets gives.

    Args:
        train, query, gallery: torchreid's lists of (img_path, pid, camid, dsetid).
        schema (AttributeSchema): the attributes of ``image_attrs``.
        image_attrs (dict): {img_path: int64 ndarray [len(schema)]}.
        **kwargs: as torchreid's ``ImageDataset``.
    """

    def __init__(self, train, query, gallery, schema, image_attrs, **kwargs):
        self.schema = schema
        self.image_attrs = image_attrs
        super().__init__(train, query, gallery, **kwargs)


# Annotation files chosen by attribute_files(): {dataset name: path}.
_attribute_file_overrides = {}


@contextlib.contextmanager
def attribute_files(**paths):
    """Uses the given annotation files for the datasets built inside the block.

    Args:
        **paths: ``market1501_attr=path`` and/or ``dukemtmcreid_attr=path``;
            None keeps the default location.

    Raises:
        ConfigError: for an unknown dataset name.
    """
    unknown = sorted(set(paths) - set(DATASETS))
    if unknown:
        raise ConfigError(f'attribute files given for unknown datasets {unknown}; '
                          f'expected some of {sorted(DATASETS)}')
    previous = dict(_attribute_file_overrides)
    _attribute_file_overrides.update({k: v for k, v in paths.items() if v})
    try:
        yield
    finally:
        _attribute_file_overrides.clear()
        _attribute_file_overrides.update(previous)


class AnnotatedReIDMixin(AttributeMixin):
    """What ``Market1501Attr`` and ``DukeMTMCreIDAttr`` add to torchreid's classes.

    Besides the attributes, torchreid's failure modes become errors naming the
    folder or file: a missing dataset folder (torchreid would try to download
    the images), a missing split folder, an empty split, a malformed file name.

    Args:
        root (str): as torchreid's dataset.
        attr_path (str, optional): annotation file; default: the one chosen by
            :func:`attribute_files`, else ``<root>/<dataset_dir>/<attribute_filename>``,
            downloaded when absent.
        **kwargs: as torchreid's dataset (transform, mode, combineall, ...).

    Raises:
        DatasetError, AttributeFileError, DownloadError.
    """
    name = None                # registered name
    schema_name = None         # AttributeSchema.dataset of the annotation
    attribute_filename = None
    attribute_url = None
    attribute_sha256 = None
    layout = None              # the expected folders, for messages
    num_cams = None
    max_pid = None

    def __init__(self, root='', attr_path=None, **kwargs):
        super().__init__(root=root, **kwargs)
        annotation = load_attribute_file(self._attribute_file(attr_path), expected=self.schema_name)
        self.schema = annotation.schema
        self.attribute_file = annotation.path
        self.image_attrs = self._label_images(annotation)

    def _attribute_file(self, attr_path):
        path = attr_path or _attribute_file_overrides.get(self.name)
        if path:
            return path
        path = osp.join(self.dataset_dir, self.attribute_filename)
        if not osp.isfile(path):
            logger.info('%s not found, downloading %s', path, self.attribute_url)
            download(self.attribute_url, path, sha256=self.attribute_sha256)
        return path

    def _label_images(self, annotation):
        """{img_path: attrs} for every image; checks that every training id is annotated."""
        unknown = np.full(len(self.schema), UNKNOWN, dtype=np.int64)
        image_attrs, unannotated = {}, set()
        for img_path, *_ in self.train + self.query + self.gallery:
            pid, _ = parse_image_name(img_path, self.num_cams, self.max_pid)
            from_train = osp.dirname(img_path) == self.train_dir
            labels = annotation.split('train' if from_train else 'test').get(pid)
            if labels is None and from_train:
                unannotated.add(pid)
            junk = not from_train and pid in JUNK_PIDS
            image_attrs[img_path] = unknown if labels is None or junk else labels
        refuse_unlabelled_training(unannotated, f'attribute file "{annotation.path}"',
                                   f'"{self.train_dir}"')
        return image_attrs

    # torchreid hooks --------------------------------------------------------

    def download_dataset(self, dataset_dir, dataset_url):
        """Refuses to download the images (torchreid would): they must be in place."""
        if not osp.isdir(dataset_dir):
            raise DatasetError(f'{type(self).__name__}: dataset folder "{dataset_dir}" does not '
                               f'exist; expected {self.layout} under the data root')

    def check_before_run(self, required_files):
        for folder in required_files:
            if not osp.isdir(folder):
                raise DatasetError(f'{type(self).__name__}: folder "{folder}" does not exist; '
                                   f'expected {self.layout} under the data root')

    def process_dir(self, dir_path, relabel=False):
        """torchreid's, after checking the folder and every file name; sorted by path
        and relabelled by :func:`relabel_by_person_id`, so that neither the order
        nor the labels depend on the file system (torchreid numbers the ids in
        the iteration order of a Python set)."""
        paths = glob.glob(osp.join(dir_path, '*.jpg'))
        if not paths:
            raise DatasetError(f'{type(self).__name__}: folder "{dir_path}" holds no .jpg images')
        for path in paths:
            parse_image_name(path, self.num_cams, self.max_pid)
        items = sorted(super().process_dir(dir_path, relabel=False))
        return relabel_by_person_id(items) if relabel else items


class Market1501Attr(AnnotatedReIDMixin, compat.Market1501):
    """Market-1501 with the 27 attributes of Market-1501_attribute (Lin et al.)."""
    name = 'market1501_attr'
    schema_name = 'market1501'
    attribute_filename = 'market_attribute.mat'
    attribute_url = ('https://github.com/vana77/Market-1501_Attribute/raw/master/'
                     'market_attribute.mat')
    attribute_sha256 = 'd9fdbdd2e33ed2c4e3a073b77b1d16ac9fae5d93dd597ccd4e38bf75b2efaa95'
    layout = 'market1501/Market-1501-v15.09.15/{bounding_box_train,query,bounding_box_test}'
    num_cams = 6
    max_pid = 1501


class DukeMTMCreIDAttr(AnnotatedReIDMixin, compat.DukeMTMCreID):
    """DukeMTMC-reID with the 23 attributes of DukeMTMC-attribute (Lin et al.)."""
    name = 'dukemtmcreid_attr'
    schema_name = 'dukemtmcreid'
    attribute_filename = 'duke_attribute.mat'
    attribute_url = 'https://github.com/vana77/DukeMTMC-attribute/raw/master/duke_attribute.mat'
    attribute_sha256 = '06b9833be1c6339362ccf2112a8cf885c7c64db8f038da9e12896f86bec51e8c'
    layout = 'dukemtmc-reid/DukeMTMC-reID/{bounding_box_train,query,bounding_box_test}'
    num_cams = 8
    max_pid = 9999


DATASETS = {cls.name: cls for cls in (Market1501Attr, DukeMTMCreIDAttr)}


def register():
    """Registers the datasets of :data:`DATASETS` with torchreid; safe to call again."""
    for name, cls in DATASETS.items():
        try:
            torchreid.data.register_image_dataset(name, cls)
        except ValueError:  # torchreid refuses a name twice: registered by an earlier call
            pass


# command line ---------------------------------------------------------------

def attribute_rates(dataset, items):
    """Per attribute, the share of each class among the labelled images of ``items``.

    Returns:
        list of (name, counts of labelled images, np.ndarray of class rates).
    """
    labels = np.stack([dataset.image_attrs[item[0]] for item in items])
    rates = []
    for i, (name, classes) in enumerate(zip(dataset.schema.names, dataset.schema.num_classes)):
        known = labels[:, i][labels[:, i] != UNKNOWN]
        counts = np.bincount(known, minlength=classes)
        rates.append((name, len(known), counts / max(len(known), 1)))
    return rates


def summary(dataset):
    """The attribute table printed by the command line."""
    lines = [f'attributes: {len(dataset.schema)} from {dataset.attribute_file}',
             f'  {"attribute":<12} {"train":>22} {"test (query+gallery)":>22}']
    train = attribute_rates(dataset, dataset.train)
    test = attribute_rates(dataset, dataset.query + dataset.gallery)
    for (name, _, tr), (_, _, te) in zip(train, test):
        lines.append(f'  {name:<12} {_format_rate(tr):>22} {_format_rate(te):>22}')
    lines.append('  (binary: share of positives; multi-class: share of each class)')
    return '\n'.join(lines)


def _format_rate(rates):
    if len(rates) == 2:
        return f'{rates[1]:.3f}'
    return '/'.join(f'{r:.2f}' for r in rates)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m alfo_torchreid.data.datasets',
        description='Summarise an attribute dataset: splits and attribute rates.')
    parser.add_argument('--root', required=True, help='data root, as torchreid\'s')
    parser.add_argument('--name', required=True, choices=sorted(DATASETS))
    parser.add_argument('--attr-path', default=None, help='annotation file (default: in root)')
    args = parser.parse_args(argv)
    return run_command(lambda: print(summary(DATASETS[args.name](root=args.root,
                                                                 attr_path=args.attr_path))))


if __name__ == '__main__':
    sys.exit(main())
