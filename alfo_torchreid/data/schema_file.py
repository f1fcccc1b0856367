"""The attribute schema as a YAML file: what a user writes to bring their own attributes.

A schema file names the annotation, each attribute with its classes (label 0
first) and the one-of-k colour groups::

    dataset: my_cameras            # a short name, shown in messages and checkpoints
    attributes:                    # in the order of label vectors and model heads
      gender: [male, female]       # a binary attribute: exactly two classes
      age: [child, adult, senior]  # more than two: a softmax over them
      backpack: [no, yes]
      upred: [no, yes]
      upblue: [no, yes]
      upgreen: [no, yes]
    colour_groups:                 # optional; binary attributes, each in one group
      upper_colour: [upred, upblue, upgreen]

Market-1501_attribute's and DukeMTMC-attribute's schemas are shipped as such
files (``schemas/market1501.yaml``, ``schemas/dukemtmcreid.yaml`` beside this
module). Every scalar is read as text: YAML's ``no``/``yes``/``on``/``off`` are
class names here, not booleans. :func:`read_schema_file` returns the plain
form of :meth:`alfo_torchreid.data.attributes.AttributeSchema.to_dict`, after
checking everything; each fault is one line naming the file, the attribute
and the problem.
"""
import os

import yaml

from alfo_torchreid.utils.errors import AttributeFileError
from alfo_torchreid.utils.yaml_keys import UniqueKeyLoader

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'schemas')
KEYS = ('dataset', 'attributes', 'colour_groups')


class _TextLoader(UniqueKeyLoader):
    """YAML's safe loader with every plain scalar read as a string and no key
    given twice (a second ``gender:`` would silently replace the first)."""


_TextLoader.yaml_implicit_resolvers = {}


def shipped_schema_path(name):
    """The path of the schema file shipped under ``name`` (e.g. ``'market1501'``), else None."""
    path = os.path.join(SCHEMA_DIR, f'{name}.yaml')
    return path if os.path.isfile(path) else None


def shipped_schema_names():
    """The names of the shipped schema files, sorted."""
    return sorted(f[:-len('.yaml')] for f in os.listdir(SCHEMA_DIR) if f.endswith('.yaml'))


def read_schema_file(path):
    """Reads and checks a schema file.

    Args:
        path (str): the YAML file.

    Returns:
        dict: ``{'dataset', 'names', 'num_classes', 'classes', 'colour_groups'}``
        (lists and a dict of lists), as ``AttributeSchema.to_dict`` writes.

    Raises:
        AttributeFileError: naming the file, the attribute and what is wrong.
    """
    where = f'schema file "{path}"'
    try:
        with open(path, encoding='utf-8') as f:
            content = yaml.load(f, Loader=_TextLoader)
    except FileNotFoundError:
        raise AttributeFileError(f'{where} does not exist') from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = ' '.join(str(exc).split())
        raise AttributeFileError(f'{where} cannot be read as YAML ({problem})') from None
    return check_schema(content, where)


def check_schema(content, where):
    """The plain schema of a file's parsed ``content``; see :func:`read_schema_file`."""
    def fail(problem):
        raise AttributeFileError(f'{where}: {problem}')

    if not isinstance(content, dict):
        fail(f'expected a mapping with keys {", ".join(KEYS)}, got {type(content).__name__}')
    unknown = [k for k in content if k not in KEYS]
    if unknown:
        fail(f'unknown key {unknown[0]!r}; expected {", ".join(KEYS)}')
    dataset = content.get('dataset')
    if not isinstance(dataset, str) or not dataset.strip():
        fail('"dataset" must be a short name (text), e.g. "dataset: my_cameras"')
    attributes = content.get('attributes')
    if not isinstance(attributes, dict) or not attributes:
        fail('"attributes" must map each attribute name to its classes, e.g. '
             '"gender: [male, female]"')
    classes = [_check_classes(name, value, fail) for name, value in attributes.items()]
    groups = _check_groups(content.get('colour_groups') or {}, attributes, fail)
    return {'dataset': dataset, 'names': list(attributes), 'num_classes': [len(c) for c in classes],
            'classes': classes, 'colour_groups': groups}


def _check_classes(name, value, fail):
    if not isinstance(name, str) or not name.strip() or any(c in name for c in ',=\n'):
        fail(f'attribute {name!r}: a name must be text without "," or "="')
    if not isinstance(value, list) or len(value) < 2:
        fail(f'attribute "{name}": expected a list of at least 2 class names, e.g. [no, yes], '
             f'got {value!r}')
    bad = [c for c in value if not isinstance(c, str) or not c.strip() or ',' in c]
    if bad:
        fail(f'attribute "{name}": class {bad[0]!r} is not a name (text without ",")')
    if len(set(value)) != len(value):
        fail(f'attribute "{name}": class "{_first_repeat(value)}" is listed twice')
    if any(c.lstrip('-').isdigit() for c in value):
        fail(f'attribute "{name}": class names must not be numbers (labels may be written as '
             f'class indices), got {value}')
    return list(value)


def _check_groups(groups, attributes, fail):
    if not isinstance(groups, dict):
        fail(f'"colour_groups" must map each group name to its member attributes, got {groups!r}')
    seen = {}
    for group, members in groups.items():
        if not isinstance(members, list) or len(members) < 2:
            fail(f'colour group "{group}": expected a list of at least 2 attributes, got '
                 f'{members!r}')
        for member in members:
            if not isinstance(member, str):
                fail(f'colour group "{group}": member {member!r} is not an attribute name')
            if member not in attributes:
                fail(f'colour group "{group}": attribute "{member}" is not in "attributes"')
            if len(attributes[member]) != 2:
                fail(f'colour group "{group}": attribute "{member}" has '
                     f'{len(attributes[member])} classes; a group member must be binary')
            if member in seen:
                fail(f'colour group "{group}": attribute "{member}" is already in group '
                     f'"{seen[member]}"')
            seen[member] = group
        if str(group) in attributes:
            fail(f'colour group "{group}": the name is also an attribute\'s')
    return {str(k): list(v) for k, v in groups.items()}


def _first_repeat(values):
    return next(v for i, v in enumerate(values) if v in values[:i])
