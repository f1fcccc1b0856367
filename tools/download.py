#!/usr/bin/env python
"""Fetch the files that can be fetched, and show where the others go.

    python tools/download.py --root reid-data           # attribute annotations, both datasets
    python tools/download.py --root reid-data --layout  # the expected layout, and what is present
    python tools/download.py --weights imagenet resnet50_market1501   # into torch's cache
    python tools/download.py --root reid-data --datasets market1501   # optional, see below

The Market-1501 and DukeMTMC-reID images are placed by hand (``--layout``
says where). ``--datasets`` offers torchreid's own mirrors of them
(``Market1501.dataset_url``, ``DukeMTMCreID.dataset_url``): unofficial, with no
published checksum, and DukeMTMC's may no longer be served; the datasets'
licences apply. Every download is atomic (a file appears only once complete)
and checked against its sha256 where one is published. Errors end with one
line and exit status 2 (``--debug`` shows the traceback).
"""
import argparse
import functools
import os
import os.path as osp
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from alfo_torchreid.data.datasets import DukeMTMCreIDAttr, Market1501Attr
from alfo_torchreid.utils import weights
from alfo_torchreid.utils.download import download, sha256_of
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import DownloadError, run_command

SPLITS = ('bounding_box_train', 'bounding_box_test', 'query')


@dataclass(frozen=True)
class DatasetFiles:
    """What one dataset needs under the data root.

    Attributes:
        title: the dataset's own name.
        dataset: our dataset class: ``dataset_dir`` (below the root), the
            annotation's ``attribute_filename``/``attribute_url``/``attribute_sha256``
            and torchreid's image mirror ``dataset_url``.
        image_folder: the folder below ``<root>/<dataset_dir>`` holding
            :data:`SPLITS`, as torchreid expects it (and as the archive holds it).
    """
    title: str
    dataset: type
    image_folder: str

    def folder(self, root):
        return osp.join(root, self.dataset.dataset_dir)

    def split_dirs(self, root):
        return [osp.join(self.folder(root), self.image_folder, split) for split in SPLITS]

    def attribute_file(self, root):
        return osp.join(self.folder(root), self.dataset.attribute_filename)


DATASETS = {
    'market1501': DatasetFiles('Market-1501', Market1501Attr, 'Market-1501-v15.09.15'),
    'dukemtmcreid': DatasetFiles('DukeMTMC-reID', DukeMTMCreIDAttr, 'DukeMTMC-reID'),
}


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=HelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('--root', help='data root (data.root): fetch the attribute files there')
    parser.add_argument('--layout', action='store_true',
                        help='print the expected layout under --root and what is present; '
                             'fetch nothing')
    parser.add_argument('--weights', nargs='+', default=[], choices=sorted(weights.SOURCES),
                        metavar='NAME', help=f'pretrained weights to fetch into torch\'s cache: '
                                             f'{", ".join(sorted(weights.SOURCES))}')
    parser.add_argument('--datasets', nargs='+', default=[], choices=sorted(DATASETS),
                        metavar='NAME', help='optional: also fetch these datasets\' images from '
                                             'torchreid\'s mirrors (market1501, dukemtmcreid)')
    parser.add_argument('--debug', action='store_true', help='show tracebacks of errors')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.root or args.weights):
        parser.error('nothing to do: give --root (attribute files, --layout, --datasets) '
                     'and/or --weights')
    if (args.layout or args.datasets) and not args.root:
        parser.error('--layout and --datasets need --root')
    root = osp.abspath(osp.expanduser(args.root)) if args.root else None
    if args.layout:
        action = functools.partial(print_layout, root)
    else:
        action = functools.partial(fetch_all, root, args.weights, args.datasets)
    return run_command(action, args.debug, interrupted='interrupted (nothing partial was kept)')


def fetch_all(root, weight_names, dataset_names):
    """Fetches the attribute files under ``root`` (if given), the named weights and
    the named datasets' images; says what was already there."""
    fetched = []
    if root:
        fetched += [fetch_attribute_file(root, name) for name in DATASETS]
    fetched += [fetch_weights(name) for name in weight_names]
    fetched += [fetch_images(root, name) for name in dataset_names]
    print('Done.' if any(fetched) else 'Nothing to download: everything asked for is present.')
    if root and not images_present(root):
        print(f'The images are placed by hand: `python tools/download.py --root {root} --layout` '
              'shows where.')


def images_present(root):
    return all(osp.isdir(d) for files in DATASETS.values() for d in files.split_dirs(root))


def fetch_attribute_file(root, name):
    """Downloads dataset ``name``'s annotation unless present; True if downloaded."""
    files = DATASETS[name]
    dataset, path = files.dataset, files.attribute_file(root)
    if osp.isfile(path):
        print(f'{name}: attribute file "{path}" already present '
              f'({attribute_file_check(files, path)})')
        return False
    print(f'{name}: downloading {dataset.attribute_url}')
    download(dataset.attribute_url, path, sha256=dataset.attribute_sha256)
    print(f'{name}: attribute file saved to "{path}" (sha256 verified)')
    return True


def attribute_file_check(files, path):
    if sha256_of(path) == files.dataset.attribute_sha256:
        return 'sha256 verified'
    return ('its sha256 differs from the published annotation: kept as it is; delete it to '
            'fetch the published one')


def fetch_weights(name):
    """Downloads pretrained weights ``name`` unless cached; True if downloaded."""
    source = weights.SOURCES[name]
    present = osp.isfile(weights.cached_path(source))
    path = weights.fetch(source)
    state = 'already present' if present else 'downloaded'
    print(f'{name}: {state} "{path}" ({weights_check(source)})')
    return not present


def weights_check(source):
    if source.sha256 is None:
        return 'no checksum is published for it: not verified'
    return f'sha256 checked: starts with {source.sha256}'


def fetch_images(root, name):
    """Downloads and extracts dataset ``name``'s images from torchreid's mirror
    unless all splits are present; True if downloaded."""
    files = DATASETS[name]
    folder = files.folder(root)
    target = osp.join(folder, files.image_folder)
    missing = [d for d in files.split_dirs(root) if not osp.isdir(d)]
    if not missing:
        print(f'{name}: images already present in "{target}"')
        return False
    if osp.exists(target):
        raise DownloadError(
            f'"{target}" exists but lacks {[osp.basename(d) for d in missing]}: complete it by '
            'hand, or remove it so that it can be downloaded whole')
    url = files.dataset.dataset_url
    archive = osp.join(folder, osp.basename(url))
    if osp.isfile(archive):
        print(f'{name}: using the archive already downloaded, "{archive}"')
    else:
        print(f'{name}: downloading {url} (torchreid\'s mirror; no checksum is published)')
        download(url, archive)
    extract_image_folder(archive, folder, files.image_folder)
    os.remove(archive)
    print(f'{name}: images extracted to "{target}"')
    return True


def extract_image_folder(archive, folder, image_folder):
    """Extracts ``archive`` and moves its ``image_folder`` into ``folder``: the
    folder appears only once complete and holding every split."""
    staging = tempfile.mkdtemp(prefix='.extracting-', dir=folder)
    try:
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(staging)  # drops ".." and absolute parts of member names
        except (zipfile.BadZipFile, OSError) as exc:
            raise DownloadError(f'archive "{archive}" cannot be extracted ({exc}): delete it '
                                'and run again') from None
        extracted = osp.join(staging, image_folder)
        lacking = [s for s in SPLITS if not osp.isdir(osp.join(extracted, s))]
        if lacking:
            raise DownloadError(f'archive "{archive}" does not hold {image_folder}/ with '
                                f'{", ".join(SPLITS)} (lacks {lacking})')
        try:
            os.replace(extracted, osp.join(folder, image_folder))
        except OSError as exc:
            raise DownloadError(
                f'cannot move the extracted images into "{folder}": {exc}') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def print_layout(root):
    """Prints every expected file and folder with [present] or [missing]."""
    print(f'Expected layout under "{root}" (torchreid\'s). Images are placed by hand (or '
          'fetched with --datasets from torchreid\'s unofficial mirrors); the attribute '
          'files are fetched by this tool with --root.')
    for name, files in DATASETS.items():
        print(f'\n{name} ({files.title})')
        for split_dir in files.split_dirs(root):
            count = image_count(split_dir)
            print(status_line(split_dir + os.sep, count is not None, count))
        path = files.attribute_file(root)
        note = attribute_file_check(files, path) if osp.isfile(path) else (
            f'from {files.dataset.attribute_url}')
        print(status_line(path, osp.isfile(path), note))
    print(f'\npretrained weights (model.pretrained), in torch\'s cache "{weights.cache_dir()}"')
    for name, source in weights.SOURCES.items():
        path = weights.cached_path(source)
        note = f'{name}, from {source.url}; {weights_check(source)}'
        print(status_line(path, osp.isfile(path), note))


def image_count(split_dir):
    """'N images' for an existing folder, None for a missing one."""
    if not osp.isdir(split_dir):
        return None
    return f'{sum(1 for e in os.scandir(split_dir) if e.name.endswith(".jpg"))} images'


def status_line(path, present, note=None):
    tag = '[present]' if present else '[missing]'
    return f'  {tag} {path}' + (f'  ({note})' if note else '')


if __name__ == '__main__':
    sys.exit(main())
