"""A re-ID dataset of the user's own, described by a CSV manifest and a schema file.

The manifest has one row per image, a header first::

    image,pid,camid,split,gender,age,backpack,upred,upblue,upgreen
    train/0001_c1_000.jpg,1,1,train,female,adult,yes,no,no,yes
    train/0001_c2_001.jpg,1,2,train,female,adult,,no,no,yes
    query/0101_c1_000.jpg,101,1,query,male,child,no,yes,no,no
    gallery/0101_c3_004.jpg,101,3,gallery,male,child,no,-1,no,no

``image`` is relative to the manifest's folder (or absolute); ``pid`` an
integer >= 0; ``camid`` an integer >= 1 (torchreid's camid is ``camid - 1``);
``split`` one of ``train``, ``query``, ``gallery``; then one column per
attribute of the schema (:mod:`alfo_torchreid.data.schema_file`), any order,
holding a class name or its 0-based index, empty or ``-1`` for unknown.
Labels given per identity instead go to a second CSV, ``pid`` then the
attribute columns, one row per identity. A manifest without attribute columns
and without a schema is an identity-only dataset (no attribute labels).

:func:`read_manifest` checks everything before training, each fault one line
naming the file, line and column: an unknown class, a missing image, an image
listed twice, a split with no identity, a query identity with no gallery image
from another camera, a training identity the labels per identity lack (as the
built-in datasets refuse such an annotation; query and gallery identities may
go unlabelled). :func:`register_manifest_dataset` registers the dataset into
torchreid under a name of the user's; training ids are relabelled in ascending
id order, as :mod:`alfo_torchreid.data.datasets` does.
:func:`market_layout_rows` lists a tree in Market-1501's layout, the starting
point ``tools/make_manifest.py`` writes.
"""
import csv
import functools
import glob
import io
import os
import os.path as osp
import re
from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from alfo_torchreid.data.attributes import UNKNOWN, AttributeSchema, load_schema
from alfo_torchreid.data.datasets import (AttributeMixin, image_name_ids,
                                          refuse_unlabelled_training, relabel_by_person_id)
from alfo_torchreid.data.schema_file import shipped_schema_path
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.atomic import write_file
from alfo_torchreid.utils.errors import ConfigError, DatasetError

COLUMNS = ('image', 'pid', 'camid', 'split')
SPLITS = ('train', 'query', 'gallery')
IDENTITY_COLUMN = 'pid'
INTEGER = re.compile(r'-?[0-9]+')  # what a pid, camid or class index may be


@dataclass
class Manifest:
    """What a manifest describes, as torchreid's datasets hold it.

    Attributes:
        train, query, gallery: lists of (absolute img_path, pid, camid 0-based,
            dsetid 0); train pids relabelled 0..n-1.
        image_attrs: {img_path: int64 labels [len(schema)]}, -1 unknown.
        schema: the attributes (none for an identity-only dataset).
    """
    train: List[tuple]
    query: List[tuple]
    gallery: List[tuple]
    image_attrs: Dict[str, np.ndarray]
    schema: AttributeSchema


def read_manifest(path, schema=None, identity_attributes=None, name='custom'):
    """Reads and checks a manifest (see the module's docstring).

    Args:
        path (str): the manifest CSV.
        schema (AttributeSchema, optional): the attributes; None for an
            identity-only dataset.
        identity_attributes (str, optional): a CSV of labels per identity.
        name (str): the dataset's name, for the schema of an identity-only one.

    Raises:
        DatasetError: naming the file, line and column at fault.
        AttributeFileError: ``identity_attributes`` has no labels for a
            training identity.
    """
    header, rows = _read_csv(path, 'manifest')
    schema, columns = _label_columns(path, header, schema, identity_attributes, name)
    root = osp.dirname(osp.abspath(path))
    items, image_attrs, first_line = {split: [] for split in SPLITS}, {}, {}
    for line, row in rows:
        where = f'manifest "{path}", line {line}'
        image, pid, camid, split = _read_item(where, row, root)
        if image in first_line:
            raise DatasetError(f'{where}: image "{row[0]}" is listed twice (first on line '
                               f'{first_line[image]})')
        first_line[image] = line
        items[split].append((image, pid, camid, 0))
        image_attrs[image] = _read_labels(where, dict(zip(columns, row[len(COLUMNS):])), schema)
    if identity_attributes:
        _label_identities(identity_attributes, schema, items, image_attrs, path)
    _check_splits(path, items, first_line)
    return Manifest(relabel_by_person_id(items['train']), items['query'], items['gallery'],
                    image_attrs, schema)


def _label_columns(path, header, schema, identity_attributes, name):
    """(the schema, an empty one for an identity-only dataset; the manifest's
    attribute columns) after checking the header against them."""
    if tuple(header[:len(COLUMNS)]) != COLUMNS:
        raise DatasetError(f'manifest "{path}", line 1: the header must start with '
                           f'{",".join(COLUMNS)}, got {",".join(header[:len(COLUMNS)])}')
    columns = header[len(COLUMNS):]
    if schema is None:
        if columns or identity_attributes:
            labels = f'columns {columns}' if columns else f'"{identity_attributes}"'
            raise DatasetError(f'manifest "{path}" has attribute labels ({labels}) but no '
                               'schema: give the schema file (data.custom.schema)')
        return AttributeSchema(name, (), (), {}), columns
    if identity_attributes and columns:
        raise DatasetError(f'manifest "{path}" has attribute columns and labels per identity '
                           f'are given too ("{identity_attributes}"): give them in one place')
    if not identity_attributes:
        _check_attribute_columns(path, columns, schema)
    return schema, columns


def _read_csv(path, what):
    """(header, [(line number, row)]) of a CSV file, every row as long as the header."""
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:  # -sig: a spreadsheet's BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if row]
    except FileNotFoundError:
        raise DatasetError(f'{what} "{path}" does not exist') from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f'{what} "{path}" cannot be read as a UTF-8 CSV file ({exc})') from None
    if not header:
        raise DatasetError(f'{what} "{path}" is empty; expected a header line first')
    repeated = [h for i, h in enumerate(header) if h in header[:i]]
    if repeated:
        raise DatasetError(f'{what} "{path}", line 1: column "{repeated[0]}" appears twice')
    for line, row in rows:
        if len(row) != len(header):
            raise DatasetError(f'{what} "{path}", line {line}: {len(row)} fields, expected '
                               f'{len(header)} as in the header')
    return header, rows


def _check_attribute_columns(path, columns, schema):
    unknown = [c for c in columns if c not in schema.names]
    if unknown:
        raise DatasetError(f'manifest "{path}", line 1: column "{unknown[0]}" is not an '
                           f'attribute of the {schema.dataset} schema {list(schema.names)}')
    missing = [n for n in schema.names if n not in columns]
    if missing:
        raise DatasetError(f'manifest "{path}", line 1: no column for attribute '
                           f'"{missing[0]}" of the {schema.dataset} schema (write -1 or '
                           'leave it empty where it is unknown)')


def _read_item(where, row, root):
    """(absolute image path, pid, 0-based camid, split) of one row."""
    image, pid, camid, split = row[:len(COLUMNS)]
    if not image:
        raise DatasetError(f'{where}, column "image": empty; expected an image path')
    path = osp.normpath(osp.join(root, osp.expanduser(image)))
    if not osp.isfile(path):
        raise DatasetError(f'{where}, column "image": "{path}" does not exist')
    pid_value = _integer(pid, 0)
    if pid_value is None:
        raise DatasetError(f'{where}, column "pid": "{pid}" is not an integer >= 0')
    cam_value = _integer(camid, 1)
    if cam_value is None:
        raise DatasetError(f'{where}, column "camid": "{camid}" is not an integer >= 1')
    if split not in SPLITS:
        raise DatasetError(f'{where}, column "split": "{split}" is not one of {", ".join(SPLITS)}')
    return path, pid_value, cam_value - 1, split


def _integer(text, low):
    """``int(text)`` if it is an integer >= ``low`` in ASCII digits, else None
    (``int`` alone would also take ``1_000``, and ``'²'.isdigit()`` is True)."""
    if not INTEGER.fullmatch(text):
        return None
    value = int(text)
    return value if value >= low else None


def _read_labels(where, cells, schema):
    """int64 labels [len(schema)] from {column: text}; absent columns are unknown."""
    labels = np.full(len(schema), UNKNOWN, dtype=np.int64)
    for a, name in enumerate(schema.names):
        text = cells.get(name, '')
        if text in ('', str(UNKNOWN)):
            continue
        classes, index = schema.class_names(name), _integer(text, 0)
        if text in classes:
            labels[a] = classes.index(text)
        elif index is not None and index < len(classes):
            labels[a] = index
        else:
            raise DatasetError(
                f'{where}, column "{name}": "{text}" is not a class of {name}; expected one of '
                f'{", ".join(classes)} (or 0..{len(classes) - 1}), empty or -1 for unknown')
    return labels


def _label_identities(path, schema, items, image_attrs, manifest):
    """Gives every image the labels of its identity in the CSV ``path``, which
    must label every training identity of the ``manifest`` (a query or gallery
    identity it lacks is unknown, -1, as in the built-in datasets)."""
    header, rows = _read_csv(path, 'identity attributes')
    if not header or header[0] != IDENTITY_COLUMN:
        raise DatasetError(f'identity attributes "{path}", line 1: the header must start with '
                           f'"{IDENTITY_COLUMN}", got "{header[0] if header else ""}"')
    _check_attribute_columns(path, header[1:], schema)
    by_pid, line_of = {}, {}
    for line, row in rows:
        where = f'identity attributes "{path}", line {line}'
        pid = _integer(row[0], 0)
        if pid is None:
            raise DatasetError(f'{where}, column "pid": "{row[0]}" is not an integer >= 0')
        if pid in by_pid:
            raise DatasetError(f'{where}: person {pid} is listed twice (first on line '
                               f'{line_of[pid]})')
        line_of[pid] = line
        by_pid[pid] = _read_labels(where, dict(zip(header[1:], row[1:])), schema)
    refuse_unlabelled_training({pid for _, pid, *_ in items['train']} - by_pid.keys(),
                               f'identity attributes "{path}"', f'manifest "{manifest}"')
    unknown = np.full(len(schema), UNKNOWN, dtype=np.int64)
    for split_items in items.values():
        for image, pid, *_ in split_items:
            image_attrs[image] = by_pid.get(pid, unknown)


def _check_splits(path, items, first_line):
    """Every split holds an identity; every query has a gallery image of its
    identity from another camera (torchreid's evaluation leaves out its own)."""
    for split in SPLITS:
        if not items[split]:
            raise DatasetError(f'manifest "{path}": split "{split}" has no image; expected '
                               f'rows of each of {", ".join(SPLITS)}')
    gallery_cams = {}
    for _, pid, camid, _ in items['gallery']:
        gallery_cams.setdefault(pid, set()).add(camid)
    for image, pid, camid, _ in items['query']:
        if not gallery_cams.get(pid, set()) - {camid}:
            raise DatasetError(
                f'manifest "{path}", line {first_line[image]}: query person {pid} (camera '
                f'{camid + 1}) has no gallery image from another camera, so it cannot be '
                'matched; add one or move the query to the gallery')


# -- the dataset in torchreid -------------------------------------------------

class ManifestDataset(AttributeMixin, compat.ImageDataset):
    """A manifest's dataset, as torchreid builds it.

    Args:
        root (str): the data root; relative files are under it.
        manifest, schema, identity_attributes (str): as
            :func:`register_manifest_dataset`'s.
        name (str): the registered name.
        **kwargs: as torchreid's ``ImageDataset`` (transform, mode, ...).
    """

    def __init__(self, root='', manifest='', schema='', identity_attributes='', name='custom',
                 **kwargs):
        root = osp.abspath(osp.expanduser(root))
        self.name = name
        self.attribute_file = osp.join(root, manifest)
        contents = read_manifest(
            self.attribute_file, load_schema(self._under(root, schema)) if schema else None,
            osp.join(root, identity_attributes) if identity_attributes else None, name)
        self.schema = contents.schema
        self.image_attrs = contents.image_attrs
        super().__init__(contents.train, contents.query, contents.gallery, **kwargs)

    @staticmethod
    def _under(root, path):
        """``path`` under ``root``, unless it is a shipped schema's name and no file there."""
        candidate = osp.join(root, path)
        return path if not osp.isfile(candidate) and shipped_schema_path(path) else candidate


def register_manifest_dataset(name, manifest, schema='', identity_attributes=''):
    """Registers the manifest's dataset into torchreid under ``name``: a
    :class:`ManifestDataset` with these files (its instances pickle by class
    name, as a spawned DataLoader worker needs).

    Args:
        name (str): the name sources and targets use.
        manifest, schema, identity_attributes (str): files, relative to the data
            root unless absolute; ``schema`` may name a shipped schema
            (``market1501``); '' for none.

    Raises:
        ConfigError: ``name`` is one of torchreid's or this package's datasets.
    """
    registry = compat.image_datasets()
    known = registry.get(name)
    if known is not None and getattr(known, 'func', None) is not ManifestDataset:
        raise ConfigError(f'data.custom.name "{name}" is already a torchreid or ALFO dataset; '
                          'choose another name')
    registry[name] = functools.partial(ManifestDataset, manifest=manifest, schema=schema,
                                       identity_attributes=identity_attributes, name=name)


# -- a manifest of a tree in Market-1501's layout -------------------------------

MARKET_FOLDERS = {'bounding_box_train': 'train', 'query': 'query', 'bounding_box_test': 'gallery'}


def market_layout_rows(data_dir, relative_to, annotation=None):
    """The manifest rows of a tree in Market-1501's layout.

    ``data_dir`` holds ``bounding_box_train``, ``query`` and ``bounding_box_test``
    with images named ``<pid>_c<camera>...jpg``; junk images (pid -1) are left out,
    as torchreid does.

    Args:
        data_dir (str): the folder holding the three split folders.
        relative_to (str): image paths are written relative to this folder
            (the manifest's).
        annotation (AttributeAnnotation, optional): labels per identity
            (its ``train`` split for the training images, ``test`` for the others).

    Returns:
        (header, rows): lists of strings; rows sorted by split, then path.

    Raises:
        DatasetError: a missing split folder, or an image name without pid and camera.
        AttributeFileError: ``annotation`` has no labels for a training identity.
    """
    schema = annotation.schema if annotation is not None else None
    header = list(COLUMNS) + (list(schema.names) if schema else [])
    rows, unlabelled = [], set()
    for folder, split in MARKET_FOLDERS.items():
        folder_path = osp.join(data_dir, folder)
        if not osp.isdir(folder_path):
            raise DatasetError(f'folder "{folder_path}" does not exist; expected '
                               f'{", ".join(MARKET_FOLDERS)} in "{data_dir}"')
        for path in sorted(glob.glob(osp.join(folder_path, '*.jpg'))):
            pid, camid = image_name_ids(path)
            if pid == -1:
                continue
            row = [osp.relpath(path, relative_to), str(pid), str(camid), split]
            if schema:
                labels = annotation.split('train' if split == 'train' else 'test').get(pid)
                if labels is None and split == 'train':
                    unlabelled.add(pid)
                row += _class_cells(schema, labels)
            rows.append(row)
    if schema:
        refuse_unlabelled_training(unlabelled, f'attribute file "{annotation.path}"',
                                   f'"{osp.join(data_dir, "bounding_box_train")}"')
    return header, rows


def _class_cells(schema, labels):
    """The manifest cells of one image's labels (None: all unknown)."""
    if labels is None:
        return [''] * len(schema)
    return ['' if v == UNKNOWN else schema.class_names(n)[v] for n, v in zip(schema.names, labels)]


def write_manifest(path, header, rows):
    """Writes a manifest CSV (see :func:`market_layout_rows`) in one step."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(header)
    writer.writerows(rows)
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    write_file(path, text.getvalue().encode())
