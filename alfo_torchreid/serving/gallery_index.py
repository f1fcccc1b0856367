"""The gallery index: a gallery's re-ID features and predicted attributes,
extracted once by a trained ALFO, kept on disk with what identifies that model.

An index folder holds one generation of data files and ``index.json``, which
names them::

    index.json              format, item count, the model's identity (checkpoint
                            signature, weights digest, input size and
                            normalisation, alfo settings), weights and config
                            paths, search backend
    features-<gen>.npy      float32 [N, D] retrieval features, L2-normalised when
                            the run compared normalised features
    attributes-<gen>.npy    float32 [N, K] attribute probabilities (the layout of
                            alfo_torchreid.evaluation.attribute_match)
    items-<gen>.csv         path, size, mtime_ns: the image of every row
    ivfpq-<gen>.faiss       the trained FAISS IVF-PQ index (backend faiss-ivfpq)

An update holds the folder's lock (``.lock``, as a run folder's,
:class:`RunFolder`): a second update of the same folder at the same time is
refused, naming the first's pid. It names the new generation's files and
the old one's in ``.generation.json``, writes the new ones, then replaces
``index.json`` atomically, then removes the files of the old generation that
``index.json`` listed (and no other file: a user's ``features-deadbeef.npy``
stays), then ``.generation.json``. An interrupted update leaves a whole
index (the previous one, or the new one once ``index.json`` is replaced);
the next one removes the files that ``.generation.json`` names and
``index.json`` does not, and the temporary files of a killed write. It
re-extracts only the images that are new or whose size or modification time
changed, and drops the rows of images gone from the gallery (an IVF-PQ index
is trained again on the updated features). A model whose identity differs
from the index's is refused.
"""
import contextlib
import csv
import io
import json
import os
import os.path as osp
import re
import secrets
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from alfo_torchreid.data.attributes import AttributeSchema
from alfo_torchreid.serving.inference import (Predictions, check_loader_settings, find_images,
                                              model_files, predict)
from alfo_torchreid.serving.search import (BACKENDS, build_ivfpq, default_backend,
                                           import_faiss, search_settings)
from alfo_torchreid.utils.atomic import replacing, write_file
from alfo_torchreid.utils.errors import SearchError
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs
from alfo_torchreid.utils.run_folder import RunFolder

FORMAT = 1
META_FILE = 'index.json'
PENDING_FILE = '.generation.json'  # the files of the generations an update replaces
CHECK_CHUNK = 100000  # rows checked at a time when an index is opened
_GENERATION_FILE = re.compile(r'(features|attributes|items|ivfpq)-[0-9a-f]{8}\.(npy|csv|faiss)')


@dataclass
class GalleryIndex:
    """An index as loaded: ``meta`` is ``index.json``; row ``i`` of
    ``features`` and ``attributes`` is the image ``paths[i]``, whose size and
    modification time (ns) at extraction are ``stamps[i]``."""
    folder: str
    meta: dict
    paths: List[str]
    stamps: List[Tuple[int, int]]
    features: np.ndarray
    attributes: np.ndarray

    @property
    def schema(self):
        return AttributeSchema.from_dict(self.meta['identity']['signature']['schema'])

    @property
    def backend(self):
        return self.meta['backend']['kind']

    def file(self, key):
        return osp.join(self.folder, self.meta['files'][key])

    def files(self):
        """The paths of ``index.json`` and of every file it lists."""
        return [osp.join(self.folder, META_FILE)] + [self.file(key) for key in self.meta['files']]


@dataclass
class UpdateReport:
    """What :func:`build_index` did: row counts, and the images it could not read."""
    kept: int
    added: int
    changed: int
    removed: int
    predictions: Predictions

    def summary(self):
        return (f'{self.kept} kept, {self.added} added, {self.changed} re-extracted '
                f'(changed), {self.removed} removed')


def has_index(folder):
    return osp.isfile(osp.join(folder, META_FILE))


def load_index(folder):
    """Reads the index in ``folder``; features and attributes memory-mapped.

    Raises:
        SearchError: no index there, or one that is damaged or of another format
            (:func:`index_problem`), in one line naming what is wrong.
    """
    folder = osp.abspath(osp.expanduser(str(folder)))
    if not has_index(folder):
        raise SearchError(f'"{folder}" holds no gallery index ({META_FILE}); build one with '
                          'tools/search.py index')
    try:
        with open(osp.join(folder, META_FILE)) as f:
            meta = json.load(f)
        if not isinstance(meta, dict) or meta.get('format') != FORMAT:
            found = meta.get('format') if isinstance(meta, dict) else None
            raise SearchError(f'gallery index "{folder}" has format {found!r}; '
                              f'this version reads format {FORMAT}: rebuild it')
        paths, stamps = _read_items(osp.join(folder, meta['files']['items']))
        arrays = [np.load(osp.join(folder, meta['files'][key]), mmap_mode='r')
                  for key in ('features', 'attributes')]
        index = GalleryIndex(folder, meta, paths, stamps, *arrays)
        problem = index_problem(index)
    except SearchError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise SearchError(f'gallery index "{folder}" is damaged ({exc}): rebuild it') from None
    if problem:
        raise SearchError(f'gallery index "{folder}" is damaged: {problem}: rebuild it')
    return index


def index_problem(index):
    """What makes a loaded index unusable (None if nothing): an ``index.json``
    without the weights and config paths or a known search backend, arrays
    that are not 2-D float, row counts that differ from ``index.json``'s count,
    attribute columns that are not its schema's, values that are not finite
    or probabilities outside [0, 1]."""
    for key, kind, word in (('weights', str, 'a path'), ('config', str, 'a path'),
                            ('backend', dict, 'an object')):
        if not isinstance(index.meta.get(key), kind):
            return f'its {META_FILE} has no "{key}" ({word})'
    if index.meta['backend'].get('kind') not in BACKENDS:
        return (f'the "kind" of its {META_FILE}\'s "backend" is '
                f'{index.meta["backend"].get("kind")!r}, expected one of {list(BACKENDS)}')
    count, arrays = index.meta['count'], (('features', index.features),
                                           ('attributes', index.attributes))
    for name, array in arrays:
        if array.ndim != 2 or array.dtype.kind != 'f':
            return f'its {name} are a {array.ndim}-D array of {array.dtype}, expected 2-D float'
    if not len(index.paths) == len(index.features) == len(index.attributes) == count:
        return (f'{count} items in {META_FILE}, {len(index.paths)} paths, '
                f'{len(index.features)} features, {len(index.attributes)} attribute rows')
    width = sum(index.schema.num_classes)
    if index.attributes.shape[1] != width:
        return (f'its attributes have {index.attributes.shape[1]} columns, its schema '
                f'{width}')
    for name, array in arrays:
        for start in range(0, count, CHECK_CHUNK):  # a memory-mapped gallery stays on disk
            chunk = np.asarray(array[start:start + CHECK_CHUNK])
            if not np.isfinite(chunk).all():
                return f'its {name} hold NaN or infinite values'
            if name == 'attributes' and not ((chunk >= 0) & (chunk <= 1)).all():
                return 'its attribute probabilities are not all in [0, 1]'
    return None


def _read_items(path):
    """The paths and (size, mtime_ns) stamps of an ``items-<gen>.csv``.

    Raises:
        ValueError: a row that is not ``path, size, mtime_ns`` (naming its line).
    """
    with open(path, newline='') as f:
        rows = list(csv.reader(f))[1:]
    for line, row in enumerate(rows, 2):
        if len(row) != 3 or not all(v.isdigit() for v in row[1:]):
            raise ValueError(f'"{path}" line {line} is {row!r}, expected path, size, mtime_ns')
    return [r[0] for r in rows], [(int(r[1]), int(r[2])) for r in rows]


def file_stamp(path):
    """(size, mtime_ns): what tells that an image file changed."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def check_identity(index, trained):
    """Raises SearchError in one line when ``trained`` (a
    :class:`~alfo_torchreid.serving.inference.TrainedALFO`) is not the model that built
    ``index``: other weights, another checkpoint signature or other settings."""
    theirs = index.meta['identity']
    ours = json.loads(json.dumps(trained.identity))  # tuples as lists, as stored
    if ours == theirs:
        return
    differ = [key for key in theirs if theirs[key] != ours.get(key)]
    raise SearchError(
        f'gallery index "{index.folder}" was built with other weights or settings than '
        f'"{trained.weights}" (they differ in {", ".join(differ)}; the index has weights '
        f'"{index.meta["weights"]}", sha256 {theirs["weights_digest"][:12]}, these '
        f'{ours["weights_digest"][:12]}): use those weights, or build a new index')


def build_index(folder, trained, inputs, backend=None, batch_size=64, workers=0,
                progress=None):
    """Creates the index of the images in ``inputs``, or brings an existing one
    up to date with them.

    Args:
        folder (str): the index folder.
        trained (TrainedALFO): the model; an existing index must have been
            built by the same one (:func:`check_identity`).
        inputs (list): image files and folders (:func:`~alfo_torchreid.serving.inference.find_images`).
        backend (str): one of :data:`alfo_torchreid.serving.search.BACKENDS`; None:
            the existing index's, else :func:`~alfo_torchreid.serving.search.default_backend`.

    Returns:
        (GalleryIndex, UpdateReport). Unreadable images are left out (named in
        ``report.predictions.skipped``) and tried again by the next update.

    Raises:
        SearchError, RunFolderInUse (another update holds the folder),
        OutputError (``index.json`` would be an input: an image, the weights).
    """
    folder = osp.abspath(osp.expanduser(str(folder)))
    paths = find_images(inputs)
    refuse_writing_over_inputs([osp.join(folder, META_FILE)],
                               {**model_files(trained.weights, trained.config_file),
                                **dict.fromkeys(paths, 'a gallery image')})
    with RunFolder(folder, 'gallery index folder', '--out', 'index update') as lock:
        return _update(lock, trained, paths, backend, batch_size, workers, progress)


def _update(lock, trained, paths, backend, batch_size, workers, progress):
    """:func:`build_index` of the image files ``paths``, holding the folder's
    ``lock`` (:class:`RunFolder`)."""
    folder = lock.path
    old = load_index(folder) if has_index(folder) else None
    if old is not None:
        check_identity(old, trained)
    backend = backend or (old.backend if old is not None else default_backend(len(paths)))
    search_settings(backend, len(paths))  # refuse a backend before extracting anything
    check_loader_settings(batch_size, workers)  # and a loader, before the folder is made
    lock.claim()  # made, locked and cleared of stale partial files once the update goes ahead
    remove_unfinished_generation(folder, () if old is None else old.meta['files'].values())
    stamps = {path: file_stamp(path) for path in paths}
    old_rows = {} if old is None else {path: row for row, path in enumerate(old.paths)}
    kept = sorted(old_rows[p] for p in paths
                  if p in old_rows and old.stamps[old_rows[p]] == stamps[p])
    kept_paths = [old.paths[row] for row in kept]
    unchanged = set(kept_paths)
    predictions = predict(trained, [p for p in paths if p not in unchanged], batch_size,
                          workers, progress)
    features = trained.search_features(predictions.features)
    attributes = predictions.attributes
    if kept:
        features = np.concatenate([old.features[kept], features])
        attributes = np.concatenate([old.attributes[kept], attributes])
    new_paths = kept_paths + predictions.paths
    meta = {'format': FORMAT, 'count': len(new_paths), 'identity': trained.identity,
            'weights': trained.weights, 'config': trained.config_file,
            'backend': {'kind': backend, **search_settings(backend, len(new_paths))}}
    write_generation(folder, meta, new_paths, [stamps[p] for p in new_paths],
                     features.astype(np.float32, copy=False),
                     attributes.astype(np.float32, copy=False),
                     old_files=() if old is None else old.meta['files'].values())
    changed = sum(1 for p in predictions.paths if p in old_rows)
    report = UpdateReport(kept=len(kept), added=len(predictions.paths) - changed,
                          changed=changed, removed=len(old_rows) - len(kept) - changed,
                          predictions=predictions)
    return load_index(folder), report


def write_generation(folder, meta, paths, stamps, features, attributes, old_files=()):
    """Writes a new generation of the index in ``folder`` (see the module's
    docstring), ``index.json`` last; then removes ``old_files``, the names of
    the generation files that the previous ``index.json`` listed. A write that
    fails removes what it wrote (the previous index stays whole); an update
    killed before the end leaves both generations' names in
    ``.generation.json`` for :func:`remove_unfinished_generation`."""
    generation = secrets.token_hex(4)
    files = {'features': f'features-{generation}.npy',
             'attributes': f'attributes-{generation}.npy',
             'items': f'items-{generation}.csv'}
    if meta['backend']['kind'] == 'faiss-ivfpq':
        files['ivfpq'] = f'ivfpq-{generation}.faiss'
    pending = osp.join(folder, PENDING_FILE)
    # the old names too: a kill after index.json is replaced leaves them to the next update
    write_file(pending, json.dumps(sorted({*files.values(), *old_files})).encode())
    try:
        _write_files(folder, dict(meta, files=files), paths, stamps, features, attributes)
    except BaseException:  # Ctrl-C may come just after index.json was replaced
        remove_unfinished_generation(folder, listed=_listed_files(folder))
        raise
    _remove_generation_files(folder, old_files, keep=files.values())
    os.remove(pending)


def _write_files(folder, meta, paths, stamps, features, attributes):
    """Writes the files that ``meta['files']`` names, then ``index.json`` (``meta``)."""
    files = meta['files']
    for key, array in (('features', features), ('attributes', attributes)):
        with replacing(osp.join(folder, files[key])) as f:
            np.save(f, array)
    items = io.StringIO()
    writer = csv.writer(items, lineterminator='\n')
    writer.writerow(['path', 'size', 'mtime_ns'])
    writer.writerows([path, *stamp] for path, stamp in zip(paths, stamps))
    write_file(osp.join(folder, files['items']), items.getvalue().encode())
    if 'ivfpq' in files:
        trained_ivfpq = build_ivfpq(features, **meta['backend']['build'])
        write_file(osp.join(folder, files['ivfpq']),
                   import_faiss().serialize_index(trained_ivfpq).tobytes())
    write_file(osp.join(folder, META_FILE), json.dumps(meta, indent=1).encode())


def remove_unfinished_generation(folder, listed):
    """Removes the files of the generation that an unfinished update did not
    leave in ``index.json`` (the new one when it stopped before replacing
    ``index.json``, the old one after): those that ``.generation.json`` names
    and ``listed`` (the names ``index.json`` lists) does not; then
    ``.generation.json``."""
    pending = osp.join(folder, PENDING_FILE)
    try:
        with open(pending) as f:
            names = json.load(f)
    except FileNotFoundError:
        return
    except ValueError:  # not written by write_generation (whose write is atomic)
        names = []
    _remove_generation_files(folder, names if isinstance(names, list) else [], keep=listed)
    os.remove(pending)


def _listed_files(folder):
    """The file names that ``index.json`` in ``folder`` lists (none when it cannot be read)."""
    try:
        with open(osp.join(folder, META_FILE)) as f:
            return list(json.load(f)['files'].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _remove_generation_files(folder, names, keep=()):
    """Removes the files ``names`` of ``folder`` but those in ``keep``; a name
    that is not a generation file's (``../x``, ``notes.txt``) is left alone."""
    keep = set(keep)
    for name in names:
        if isinstance(name, str) and _GENERATION_FILE.fullmatch(name) and name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.remove(osp.join(folder, name))
