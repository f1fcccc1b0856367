"""Pedestrian attributes of Market-1501_attribute and DukeMTMC-attribute.

An :class:`AttributeSchema` fixes the order of the attributes that every label
vector, classifier head and metric of this package follows. Labels are 0-based:
the annotation files store 1/2 (no/yes) and Market's age 1..4; here they are
0/1 and 0..3, and -1 means "unknown" (junk and distractor images, and the
few labels the annotators left out). A schema is data: :func:`load_schema`
reads a YAML schema file (:mod:`alfo_torchreid.data.schema_file`); Market's and
Duke's (:data:`MARKET_SCHEMA`, :data:`DUKE_SCHEMA`) are the files shipped in
``alfo_torchreid/data/schemas/``.

:func:`load_attribute_file` reads and validates an annotation file of the
annotators (vana77/Market-1501_Attribute, vana77/DukeMTMC-attribute): a MATLAB
struct ``<name>_attribute`` with splits ``train`` and ``test``, each holding one
row vector per attribute and the 4-digit person ids in ``image_index``. The
file is read by :func:`read_mat5`, not ``scipy.io.loadmat``, which crashes the
process on some corrupt files.
"""
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from alfo_torchreid.data.schema_file import (read_schema_file, shipped_schema_names,
                                             shipped_schema_path)
from alfo_torchreid.utils.errors import AttributeFileError

UNKNOWN = -1

BINARY_CLASS_NAMES = ('no', 'yes')

@dataclass(frozen=True)
class AttributeSchema:
    """The attributes of one annotation, in a fixed order.

    Attributes:
        dataset: short name of the annotation (``'market1501'``, ``'dukemtmcreid'``).
        names: attribute names, in the order of label vectors and model heads.
        num_classes: number of classes of each attribute (2 for binary ones).
        colour_groups: the annotators' one-of-k groups, e.g.
            ``{'upper_colour': ('upblack', ...)}``; each group is evaluated as one
            argmax prediction in the annotators' protocol.
        classes: the names of each attribute's classes, label 0 first, e.g.
            ``('male', 'female')``. Left out (None), they are those of the
            shipped schema with an attribute of the same name and class count,
            else ``('no', 'yes')`` for a binary attribute, else ``'0'``, ``'1'``, ...
    """
    dataset: str
    names: Tuple[str, ...]
    num_classes: Tuple[int, ...]
    colour_groups: Dict[str, Tuple[str, ...]]
    classes: Optional[Tuple[Tuple[str, ...], ...]] = None

    def __post_init__(self):
        if len(self.names) != len(self.num_classes):
            raise ValueError(
                f'{len(self.names)} attribute names but {len(self.num_classes)} class counts')
        if self.classes is None:
            object.__setattr__(self, 'classes', tuple(
                _default_classes(n, c) for n, c in zip(self.names, self.num_classes)))
        if tuple(len(c) for c in self.classes) != tuple(self.num_classes):
            raise ValueError(f'class names {self.classes} do not match the class counts '
                             f'{self.num_classes} of attributes {self.names}')
        for group, members in self.colour_groups.items():
            unknown = [m for m in members if m not in self.names]
            if unknown:
                raise ValueError(f'colour group {group!r} names unknown attributes {unknown}')

    def __len__(self):
        return len(self.names)

    def __hash__(self):
        return hash((self.dataset, self.names, self.num_classes))

    def index(self, name):
        """Position of attribute ``name`` in label vectors."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f'{self.dataset} has no attribute {name!r}; it has {list(self.names)}')

    def class_names(self, name):
        """The names of attribute ``name``'s classes, in label order."""
        return self.classes[self.index(name)]

    def colour_forms(self):
        """The colour groups as one attribute each: ``{'upcolour': {'red':
        'upred', ...}, 'downcolour': {...}}``. A group's key is its members'
        common prefix + ``colour``, each colour its member's name without it;
        for members without a common prefix (``red``, ``blue``), the group's
        own key and its members' names."""
        forms = {}
        for group, members in self.colour_groups.items():
            prefix = os.path.commonprefix(list(members))
            if not prefix or prefix in members:
                forms[group] = {m: m for m in members}
            else:
                forms[prefix + 'colour'] = {m[len(prefix):]: m for m in members}
        return forms

    @property
    def colour_members(self):
        """The attributes that belong to a colour group."""
        return frozenset(m for members in self.colour_groups.values() for m in members)

    @property
    def binary(self):
        """Indices of the binary attributes, in order."""
        return tuple(i for i, c in enumerate(self.num_classes) if c == 2)

    def union(self, other):
        """The attributes of both schemas: this one's order, then ``other``'s new names.

        Used when training on several sources; a source's images carry
        :data:`UNKNOWN` for the attributes it lacks. Colour groups with the same
        key are merged the same way.

        Raises:
            AttributeFileError: an attribute of both has different classes.
        """
        if self == other or not other:
            return self
        if not self:  # an identity-only source (no attributes) first
            return other
        for name in sorted(set(self.names) & set(other.names)):
            if self.class_names(name) != other.class_names(name):
                raise AttributeFileError(
                    f'cannot combine the attributes of {self.dataset} and {other.dataset}: '
                    f'{name!r} has the classes {list(self.class_names(name))} in the first '
                    f'and {list(other.class_names(name))} in the second')
        new = [i for i, name in enumerate(other.names) if name not in self.names]
        groups = dict(self.colour_groups)
        for key, members in other.colour_groups.items():
            known = groups.get(key, ())
            groups[key] = known + tuple(m for m in members if m not in known)
        return AttributeSchema(
            dataset=f'{self.dataset}+{other.dataset}',
            names=self.names + tuple(other.names[i] for i in new),
            num_classes=self.num_classes + tuple(other.num_classes[i] for i in new),
            colour_groups=groups,
            classes=self.classes + tuple(other.classes[i] for i in new))

    def to_dict(self):
        """A plain-data form, for checkpoints and JSON."""
        return {'dataset': self.dataset, 'names': list(self.names),
                'num_classes': list(self.num_classes),
                'classes': [list(c) for c in self.classes],
                'colour_groups': {k: list(v) for k, v in self.colour_groups.items()}}

    @classmethod
    def from_dict(cls, d):
        """The schema :meth:`to_dict` wrote (e.g. a checkpoint's signature);
        a dict written before schemas named their classes (no ``'classes'``)
        gets the default names (see the class's ``classes``)."""
        classes = d.get('classes')
        return cls(d['dataset'], tuple(d['names']), tuple(d['num_classes']),
                   {k: tuple(v) for k, v in d['colour_groups'].items()},
                   None if classes is None else tuple(tuple(c) for c in classes))


def load_schema(path_or_name):
    """The schema of a YAML schema file (:mod:`alfo_torchreid.data.schema_file`).

    Args:
        path_or_name (str): a file, or the name of a shipped one
            (``'market1501'``, ``'dukemtmcreid'``).

    Raises:
        AttributeFileError: naming the file, the attribute and what is wrong.
    """
    path = str(path_or_name)
    if not os.path.isfile(path):
        shipped = shipped_schema_path(path)
        if shipped is None:
            raise AttributeFileError(
                f'schema file "{path}" does not exist; expected a YAML schema file or one of '
                f'the shipped schemas {shipped_schema_names()}')
        path = shipped
    return AttributeSchema.from_dict(read_schema_file(path))


def _default_classes(name, num_classes):
    """The class names of an attribute given without them (see ``AttributeSchema``)."""
    for schema in SCHEMAS.values():
        if name in schema.names and schema.num_classes[schema.index(name)] == num_classes:
            return schema.class_names(name)
    if num_classes == 2:
        return BINARY_CLASS_NAMES
    return tuple(str(c) for c in range(num_classes))


# Market-1501_attribute's and DukeMTMC-attribute's attributes, from the files
# shipped in alfo_torchreid/data/schemas/.
SCHEMAS = {}  # filled below; _default_classes reads it
MARKET_SCHEMA = load_schema('market1501')
DUKE_SCHEMA = load_schema('dukemtmcreid')
SCHEMAS.update((s.dataset, s) for s in (MARKET_SCHEMA, DUKE_SCHEMA))


def convert_labels(labels, source, target):
    """Lays out labels of ``source``'s attributes in ``target``'s order.

    Args:
        labels (np.ndarray): int labels of shape [..., len(source)].
        source (AttributeSchema): the schema ``labels`` follow.
        target (AttributeSchema): a schema holding every attribute of ``source``
            (e.g. ``source.union(other)``).

    Returns:
        np.ndarray: int64 of shape [..., len(target)], :data:`UNKNOWN` for the
        attributes ``source`` lacks.
    """
    labels = np.asarray(labels, dtype=np.int64)
    converted = np.full(labels.shape[:-1] + (len(target),), UNKNOWN, dtype=np.int64)
    converted[..., [target.index(name) for name in source.names]] = labels
    return converted


# The annotators' top-level MATLAB variable of each schema.
ANNOTATION_VARIABLES = {'market_attribute': 'market1501', 'duke_attribute': 'dukemtmcreid'}
SPLITS = ('train', 'test')
ID_FIELD = 'image_index'
_PERSON_ID = re.compile(r'[0-9]{4}')


@dataclass(frozen=True)
class AttributeAnnotation:
    """The contents of one annotation file.

    Attributes:
        schema: the attributes, in label-vector order.
        train: original person id -> 0-based int64 labels [len(schema)], for the
            identities of the training split (``bounding_box_train``).
        test: the same for the test split (the query and gallery identities).
        path: the file it was read from.
    """
    schema: AttributeSchema
    train: Dict[int, np.ndarray]
    test: Dict[int, np.ndarray]
    path: str

    def split(self, name):
        """The id -> labels mapping of split ``'train'`` or ``'test'``."""
        return {'train': self.train, 'test': self.test}[name]


def load_attribute_file(path, expected=None):
    """Reads and validates an annotation file of Market-1501_attribute or DukeMTMC-attribute.

    Fields are looked up by name (their order differs between the splits);
    labels 1/2 become 0/1 and Market's age 1..4 becomes 0..3. A 0 in the file
    (unannotated: DukeMTMC-attribute's ``top`` of training ids 370 and 679)
    becomes :data:`UNKNOWN`.

    Args:
        path (str): the ``.mat`` file.
        expected (str, optional): the schema the file must have (a key of
            :data:`SCHEMAS`, e.g. ``'market1501'``); any known one if None.

    Returns:
        AttributeAnnotation

    Raises:
        AttributeFileError: naming the file and what is wrong with it.
    """
    path = os.path.abspath(os.path.expanduser(str(path)))
    variable, splits = _read_struct(path)
    schema = _identify_schema(path, variable, splits)
    if expected is not None and schema.dataset != expected:
        raise AttributeFileError(
            f'attribute file "{path}" is a {schema.dataset} annotation '
            f'(variable {variable!r}), but a {expected} one is expected')
    return AttributeAnnotation(schema, *(_read_split(path, s, splits[s], schema) for s in SPLITS),
                               path=path)


def _read_struct(path):
    """The top-level variable's name and its splits: {split: {field: ndarray}}."""
    if not os.path.isfile(path):
        raise AttributeFileError(f'attribute file "{path}" does not exist')
    if os.path.getsize(path) > MAX_MAT_BYTES:
        raise AttributeFileError(f'attribute file "{path}" is over {MAX_MAT_BYTES >> 20} MiB; '
                                 'an annotation file has a few kilobytes')
    try:
        with open(path, 'rb') as f:
            variables = read_mat5(f.read())
    except OSError as exc:
        raise AttributeFileError(f'attribute file "{path}" cannot be read: {exc}') from None
    except MatFormatError as exc:
        raise AttributeFileError(f'attribute file "{path}" is not a readable MATLAB .mat file '
                                 f'(corrupt or truncated?): {exc}') from None
    names = list(variables)
    expected_shape = (f'one struct variable ({" or ".join(ANNOTATION_VARIABLES)}) '
                      f'with fields {" and ".join(SPLITS)}')
    if len(names) != 1:
        raise AttributeFileError(
            f'attribute file "{path}" holds variables {names}; expected {expected_shape}')
    variable = names[0]
    top = _struct_fields(variables[variable]) or {}
    splits = {}
    for split in SPLITS:
        if split not in top:
            raise AttributeFileError(
                f'attribute file "{path}" has no split {split!r} in variable {variable!r}; '
                f'expected {expected_shape}')
        splits[split] = _struct_fields(top[split])
        if splits[split] is None:
            raise AttributeFileError(
                f'attribute file "{path}": split {split!r} is not a struct of fields')
    return variable, splits


def _struct_fields(value):
    """The fields of a 1x1 MATLAB struct as read by :func:`read_mat5`, else None."""
    if isinstance(value, np.ndarray) and value.dtype == object and value.size == 1:
        fields = value.reshape(-1)[0]
        return fields if isinstance(fields, dict) else None
    return None


def _identify_schema(path, variable, splits):
    """The schema named by the top-level variable or, failing that, matching the
    train split's field names."""
    train_fields = set(splits['train']) - {ID_FIELD}
    by_fields = [s.dataset for s in SCHEMAS.values() if set(s.names) == train_fields]
    by_variable = ANNOTATION_VARIABLES.get(variable)
    if by_variable and by_fields and by_fields[0] != by_variable:
        raise AttributeFileError(
            f'attribute file "{path}": its variable {variable!r} names a {by_variable} '
            f'annotation, but its fields are those of {by_fields[0]}')
    dataset = by_variable or (by_fields[0] if by_fields else None)
    if dataset is None:
        raise AttributeFileError(
            f'attribute file "{path}" is neither a Market-1501_attribute nor a '
            f'DukeMTMC-attribute file: variable {variable!r} with train fields '
            f'{sorted(train_fields)}')
    return SCHEMAS[dataset]


def _read_split(path, split, fields, schema):
    """Validates one split; returns {person id: 0-based labels [len(schema)]}."""
    where = f'attribute file "{path}", split {split!r}'
    missing = [n for n in schema.names + (ID_FIELD,) if n not in fields]
    if missing:
        raise AttributeFileError(f'{where} lacks field(s) {", ".join(missing)} '
                                 f'of the {schema.dataset} annotation')
    unexpected = sorted(set(fields) - set(schema.names) - {ID_FIELD})
    if unexpected:
        raise AttributeFileError(f'{where} has field(s) {", ".join(unexpected)} that the '
                                 f'{schema.dataset} annotation does not have')
    ids = _read_ids(where, fields[ID_FIELD])
    labels = np.stack([_read_labels(where, name, fields[name], classes, len(ids))
                       for name, classes in zip(schema.names, schema.num_classes)], axis=1)
    return dict(zip(ids, labels))


def _read_ids(where, value):
    """The person ids of ``image_index``: 4-digit strings, unique, at least one."""
    value = np.asarray(value)
    if value.dtype.kind == 'U':
        texts = list(value.reshape(-1))
    elif value.dtype == object:
        texts = [_cell_text(cell) for cell in value.reshape(-1)]
    else:
        raise AttributeFileError(
            f'{where}: {ID_FIELD} holds {value.dtype} values, expected 4-digit id strings')
    bad = [t for t in texts if t is None or not _PERSON_ID.fullmatch(t)]
    if bad:
        raise AttributeFileError(f'{where}: {ID_FIELD} has {len(bad)} ids that are not '
                                 f'4-digit strings, e.g. {bad[:3]}')
    if not texts:
        raise AttributeFileError(f'{where} has no identities')
    ids = [int(t) for t in texts]
    if len(set(ids)) != len(ids):
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        raise AttributeFileError(f'{where}: {ID_FIELD} repeats ids {repeated[:5]}')
    return ids


def _cell_text(cell):
    """The string in one cell of a MATLAB cell array of strings, else None."""
    if isinstance(cell, str):
        return cell
    if isinstance(cell, np.ndarray) and cell.dtype.kind == 'U' and cell.size == 1:
        return str(cell.reshape(-1)[0])
    return None


def _read_labels(where, name, value, num_classes, num_ids):
    """One attribute's row of 1-based labels -> 0-based int64 [num_ids], 0 -> UNKNOWN."""
    value = np.asarray(value)
    if value.dtype.kind not in 'uif' or value.size != max(value.shape, default=value.size):
        raise AttributeFileError(f'{where}: field {name!r} is not a vector of numbers '
                                 f'(dtype {value.dtype}, shape {value.shape})')
    value = value.reshape(-1)
    if value.size != num_ids:
        raise AttributeFileError(f'{where}: field {name!r} has {value.size} labels but '
                                 f'{ID_FIELD} has {num_ids} ids (unequal lengths)')
    valid = np.isin(value, np.arange(0, num_classes + 1))
    if not valid.all():
        raise AttributeFileError(
            f'{where}: field {name!r} has labels out of range 1..{num_classes} '
            f'(0 for unannotated), e.g. {value[~valid][:3].tolist()}')
    # 0 (unannotated; the real Duke file has two, for 'top') becomes UNKNOWN.
    return value.astype(np.int64) - 1


# ------------------------------------------------------------ MAT-file reading
# scipy.io.loadmat is not hardened against corrupt files: a numeric element with
# an unknown type code makes it index outside an array and crash the process
# (scipy pull requests 25349 and 25829). Annotation files use a small part of
# the MAT v5 format (structs, cells, char and real numeric arrays, optionally
# zlib-compressed: MATLAB's -v6/-v7 and scipy.io.savemat), read here in Python.

MAX_MAT_BYTES = 64 << 20  # also the cap on decompressed sizes
_MI_INT8, _MI_UINT8, _MI_UINT16, _MI_INT32, _MI_UINT32 = 1, 2, 4, 5, 6
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8 = 14, 15, 16
_MI_NUMERIC = {1: 'i1', 2: 'u1', 3: 'i2', 4: 'u2', 5: 'i4', 6: 'u4', 7: 'f4', 9: 'f8',
               12: 'i8', 13: 'u8'}
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = {6: 'f8', 7: 'f4', 8: 'i1', 9: 'u1', 10: 'i2', 11: 'u2', 12: 'i4', 13: 'u4',
               14: 'i8', 15: 'u8'}


class MatFormatError(ValueError):
    """A MAT-file that is corrupt, truncated or uses what :func:`read_mat5` does not read."""


def read_mat5(data):
    """The variables of a MATLAB v5 MAT-file (v6/v7: uncompressed or compressed).

    Values: a struct is an object ndarray of dicts (field -> value), a cell an
    object ndarray, a char array a str ndarray of its rows (shape [rows]), a
    numeric array an ndarray of its class's dtype; shapes as in MATLAB.

    Args:
        data (bytes): the file's contents.

    Returns:
        dict: variable name -> value.

    Raises:
        MatFormatError: anything unreadable; never another exception.
    """
    try:
        return _read_variables(data)
    except (ValueError, struct.error, zlib.error, RecursionError, MemoryError) as exc:
        if isinstance(exc, MatFormatError):
            raise
        raise MatFormatError(f'{type(exc).__name__}: {exc}') from None


def _read_variables(data):
    if len(data) < 128:
        raise MatFormatError('shorter than the 128-byte MAT-file header')
    endian = {b'IM': '<', b'MI': '>'}.get(bytes(data[126:128]))
    if endian is None:
        raise MatFormatError('no MATLAB 5 header (a MATLAB v4 file, or not a MAT-file)')
    version = struct.unpack(endian + 'H', data[124:126])[0]
    if version != 0x0100:
        raise MatFormatError(f'MAT-file version {version:#06x} is not read; save it with '
                             "MATLAB's -v7 option (7.3 files are HDF5)")
    reader = _Mat5Reader(endian)
    variables = {}
    for mdtype, payload in reader.elements(memoryview(data)[128:], top_level=True):
        if mdtype == _MI_COMPRESSED:
            inner = reader.elements(memoryview(_inflate(payload)), top_level=True)
            if len(inner) != 1:
                raise MatFormatError(
                    f'a compressed element holds {len(inner)} elements, expected 1')
            mdtype, payload = inner[0]
        if mdtype != _MI_MATRIX:
            raise MatFormatError(f'top-level element of type {mdtype}, expected a matrix (14)')
        name, value = reader.matrix(payload)
        variables[name] = value
    return variables


def _inflate(payload):
    decompressor = zlib.decompressobj()
    data = decompressor.decompress(payload, MAX_MAT_BYTES)
    if decompressor.unconsumed_tail:
        raise MatFormatError(f'a compressed element inflates to over {MAX_MAT_BYTES >> 20} MiB')
    if not decompressor.eof:
        raise MatFormatError('a compressed element is truncated')
    return data


class _Mat5Reader:
    """Reads data elements and matrices of one byte order ('<' or '>')."""

    def __init__(self, endian):
        self.endian = endian

    def elements(self, buf, top_level=False):
        """The (type, payload) data elements that fill ``buf``. Inside a matrix,
        each is padded to 8 bytes; at the top level, compressed ones are not."""
        elements, pos = [], 0
        while pos < len(buf):
            if len(buf) - pos < 8:
                raise MatFormatError('truncated data element tag')
            mdtype, count = struct.unpack_from(self.endian + 'II', buf, pos)
            if mdtype >> 16:  # small data element: size, type and <= 4 bytes in 8
                mdtype, count = mdtype & 0xFFFF, mdtype >> 16
                if count > 4:
                    raise MatFormatError(f'small data element of {count} bytes (at most 4)')
                elements.append((mdtype, buf[pos + 4:pos + 4 + count]))
                pos += 8
                continue
            end = pos + 8 + count
            if end > len(buf):
                raise MatFormatError(f'data element of {count} bytes is truncated')
            elements.append((mdtype, buf[pos + 8:end]))
            pos = end if top_level else end + (-count % 8)
        return elements

    def matrix(self, payload):
        """(name, value) of one miMATRIX element's payload."""
        if not len(payload):
            return '', np.empty((0, 0))
        parts = self.elements(payload)
        if len(parts) < 3:
            raise MatFormatError('a matrix lacks its flags, dimensions or name')
        (flags_type, flags), dims, (name_type, name) = parts[0], self.ints(parts[1]), parts[2]
        if flags_type != _MI_UINT32 or len(flags) != 8:
            raise MatFormatError('malformed array flags')
        flags = struct.unpack(self.endian + 'II', flags)[0]
        mclass = flags & 0xFF
        if flags >> 11 & 1:
            raise MatFormatError('complex numbers are not read')
        if len(dims) < 2 or min(dims) < 0:
            raise MatFormatError(f'malformed dimensions {dims}')
        if name_type not in (_MI_INT8, _MI_UTF8):
            raise MatFormatError(f'array name of type {name_type}')
        name = bytes(name).decode('ascii')
        size, rest = math.prod(dims), parts[3:]
        if mclass in _MX_NUMERIC:
            value = self.numeric(rest, size).astype(_MX_NUMERIC[mclass])
        elif mclass == _MX_CHAR:
            value = self.chars(rest, dims)
        elif mclass == _MX_CELL:
            value = self.cells(rest, size)
        elif mclass == _MX_STRUCT:
            value = self.structs(rest, size)
        else:
            raise MatFormatError(f'MATLAB array class {mclass} is not read')
        return name, value if mclass == _MX_CHAR else value.reshape(dims, order='F')

    def ints(self, element):
        mdtype, raw = element
        if mdtype not in (_MI_INT32, _MI_UINT32) or len(raw) % 4:
            raise MatFormatError(f'malformed integers (type {mdtype}, {len(raw)} bytes)')
        return [int(v) for v in np.frombuffer(raw, self.endian + 'i4')]

    def numeric(self, rest, size):
        if len(rest) != 1 or rest[0][0] not in _MI_NUMERIC:
            raise MatFormatError('a numeric array holds '
                                 f'{[t for t, _ in rest]} elements, expected one numeric element')
        mdtype, raw = rest[0]
        dtype = np.dtype(self.endian + _MI_NUMERIC[mdtype])
        if len(raw) != size * dtype.itemsize:
            raise MatFormatError(f'a numeric array of {size} values holds {len(raw)} bytes '
                                 f'of {dtype.name}')
        return np.frombuffer(raw, dtype)

    def chars(self, rest, dims):
        if len(rest) != 1 or len(dims) != 2:
            raise MatFormatError('malformed char array')
        mdtype, raw = rest[0]
        if mdtype == _MI_UTF8:
            codes = [ord(c) for c in bytes(raw).decode('utf-8')]
        elif mdtype in (_MI_INT8, _MI_UINT8, _MI_UINT16):
            itemsize = 2 if mdtype == _MI_UINT16 else 1
            if len(raw) % itemsize:
                raise MatFormatError('char data of an odd number of bytes')
            codes = np.frombuffer(raw, f'{self.endian}u{itemsize}').tolist()
        else:
            raise MatFormatError(f'char data of type {mdtype}')
        rows, cols = dims
        if len(codes) != rows * cols:
            raise MatFormatError(f'a {rows}x{cols} char array holds {len(codes)} characters')
        # Stored column by column: row r is codes[r], codes[r + rows], ...
        return np.array([''.join(map(chr, codes[r::rows])) for r in range(rows)], dtype=str)

    def cells(self, rest, size):
        return self.objects([self.submatrix(e)[1] for e in self.count(rest, size)])

    def structs(self, rest, size):
        if len(rest) < 2 or rest[1][0] != _MI_INT8:
            raise MatFormatError('a struct lacks its field names')
        name_length, = self.ints(rest[0])
        raw_names = bytes(rest[1][1])
        if name_length <= 0 or len(raw_names) % name_length:
            raise MatFormatError(f'malformed struct field names (length {name_length})')
        names = [raw_names[i:i + name_length].split(b'\0', 1)[0].decode('ascii')
                 for i in range(0, len(raw_names), name_length)]
        if len(set(names)) != len(names):
            raise MatFormatError(f'repeated struct field names {names}')
        values = [self.submatrix(e)[1] for e in self.count(rest[2:], size * len(names))]
        return self.objects([dict(zip(names, values[i * len(names):(i + 1) * len(names)]))
                             for i in range(size)])

    @staticmethod
    def count(elements, expected):
        if len(elements) != expected:
            raise MatFormatError(f'{len(elements)} elements where {expected} were expected')
        return elements

    def submatrix(self, element):
        if element[0] != _MI_MATRIX:
            raise MatFormatError(f'element of type {element[0]} where a matrix was expected')
        return self.matrix(element[1])

    @staticmethod
    def objects(values):
        array = np.empty(len(values), dtype=object)
        for i, value in enumerate(values):
            array[i] = value
        return array
