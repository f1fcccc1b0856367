"""The attribute schema as a YAML file: the shipped ones, class names, and the
one-line refusal of a malformed file."""
import random

import pytest
import yaml

from alfo_torchreid.data.attributes import (DUKE_SCHEMA, MARKET_SCHEMA, AttributeSchema,
                                            load_schema)
from alfo_torchreid.data.schema_file import shipped_schema_names
from alfo_torchreid.utils.errors import AttributeFileError

# The schemas as the code defined them before they became files (commit 875cc00).
MARKET_UPPER = ('upblack', 'upwhite', 'upred', 'uppurple', 'upyellow', 'upgray', 'upblue',
                'upgreen')
MARKET_LOWER = ('downblack', 'downwhite', 'downpink', 'downpurple', 'downyellow', 'downgray',
                'downblue', 'downgreen', 'downbrown')
DUKE_UPPER = ('upblack', 'upwhite', 'upred', 'uppurple', 'upgray', 'upblue', 'upgreen',
              'upbrown')
DUKE_LOWER = ('downblack', 'downwhite', 'downred', 'downgray', 'downblue', 'downgreen',
              'downbrown')
MARKET_NAMES = ('age', 'backpack', 'bag', 'handbag', 'clothes', 'down', 'up', 'hair', 'hat',
                'gender') + MARKET_UPPER + MARKET_LOWER
DUKE_NAMES = ('backpack', 'bag', 'handbag', 'boots', 'gender', 'hat', 'shoes', 'top') + \
    DUKE_LOWER + DUKE_UPPER
NAMED_CLASSES = {'age': ('young', 'teenager', 'adult', 'old'), 'gender': ('male', 'female'),
                 'hair': ('short', 'long'), 'up': ('long', 'short'), 'down': ('long', 'short'),
                 'clothes': ('dress', 'pants'), 'top': ('short', 'long'),
                 'shoes': ('dark', 'light')}


def as_before(dataset, names, upper, lower):
    return AttributeSchema(
        dataset, names, tuple(4 if n == 'age' else 2 for n in names),
        {'upper_colour': upper, 'lower_colour': lower},
        tuple(NAMED_CLASSES.get(n, ('no', 'yes')) for n in names))


def test_shipped_files_are_the_schemas_the_code_had():
    assert shipped_schema_names() == ['dukemtmcreid', 'market1501']
    assert load_schema('market1501') == MARKET_SCHEMA == as_before(
        'market1501', MARKET_NAMES, MARKET_UPPER, MARKET_LOWER)
    assert load_schema('dukemtmcreid') == DUKE_SCHEMA == as_before(
        'dukemtmcreid', DUKE_NAMES, DUKE_UPPER, DUKE_LOWER)
    assert len(MARKET_SCHEMA) == 27 and len(DUKE_SCHEMA) == 23


def test_a_checkpoint_dict_without_class_names_still_loads():
    # what checkpoints held before schemas named their classes
    for schema in (MARKET_SCHEMA, DUKE_SCHEMA, MARKET_SCHEMA.union(DUKE_SCHEMA)):
        old = {k: v for k, v in schema.to_dict().items() if k != 'classes'}
        assert AttributeSchema.from_dict(old) == schema
        assert AttributeSchema.from_dict(schema.to_dict()) == schema
    other = AttributeSchema.from_dict({'dataset': 'x', 'names': ['a', 'b'],
                                       'num_classes': [2, 3], 'colour_groups': {}})
    assert other.classes == (('no', 'yes'), ('0', '1', '2'))


def test_the_union_with_a_source_without_attributes_is_the_other_schema():
    plain = AttributeSchema('plain', (), (), {})
    assert not plain and MARKET_SCHEMA.union(plain) is MARKET_SCHEMA
    assert plain.union(DUKE_SCHEMA) is DUKE_SCHEMA


CUSTOM = """\
dataset: station
attributes:
  bag: [none, small, large]
  coat_black: [no, yes]
  coat_grey: [no, yes]
  on: [off, on]
colour_groups:
  coat: [coat_black, coat_grey]
"""


def test_a_custom_file_names_its_classes_and_colour_form(tmp_path):
    path = tmp_path / 'schema.yaml'
    path.write_text(CUSTOM)
    schema = load_schema(path)
    assert schema.names == ('bag', 'coat_black', 'coat_grey', 'on')
    assert schema.num_classes == (3, 2, 2, 2)
    assert schema.class_names('bag') == ('none', 'small', 'large')
    assert schema.class_names('on') == ('off', 'on')  # YAML's booleans stay words
    assert schema.colour_forms() == {'coat_colour': {'black': 'coat_black', 'grey': 'coat_grey'}}
    assert AttributeSchema.from_dict(schema.to_dict()) == schema


BAD_FILES = {
    'not a mapping': ('- a\n- b\n', 'expected a mapping'),
    'unknown key': ('dataset: x\nattributes: {a: [no, yes]}\ncolours: {}\n',
                    "unknown key 'colours'"),
    'no dataset': ('attributes: {a: [no, yes]}\n', '"dataset" must be a short name'),
    'no attributes': ('dataset: x\n', '"attributes" must map'),
    'one class': ('dataset: x\nattributes: {a: [only]}\n', 'attribute "a": expected a list'),
    'repeated class': ('dataset: x\nattributes: {a: [no, no]}\n', 'class "no" is listed twice'),
    'numbered class': ('dataset: x\nattributes: {a: [0, 1]}\n', 'must not be numbers'),
    'nested class': ('dataset: x\nattributes: {a: [[no], yes]}\n', "class ['no'] is not a name"),
    'comma in name': ('dataset: x\nattributes: {"a,b": [no, yes]}\n', "attribute 'a,b'"),
    'unknown member': ('dataset: x\nattributes: {a: [no, yes], b: [no, yes]}\n'
                       'colour_groups: {g: [a, c]}\n', 'attribute "c" is not in "attributes"'),
    'member a list': ('dataset: x\nattributes: {a: [no, yes], b: [no, yes]}\n'
                      'colour_groups: {g: [a, [b]]}\n', "member ['b'] is not an attribute name"),
    'multi-class member': ('dataset: x\nattributes: {a: [no, yes], b: [x, y, z]}\n'
                           'colour_groups: {g: [a, b]}\n', 'a group member must be binary'),
    'member twice': ('dataset: x\nattributes: {a: [no, yes], b: [no, yes], c: [no, yes]}\n'
                     'colour_groups: {g: [a, b], h: [b, c]}\n', 'already in group "g"'),
    'attribute twice': ('dataset: x\nattributes:\n  a: [no, yes]\n  b: [no, yes]\n  a: [x, y]\n',
                        'line 5: key "a" is given twice in one mapping (first on line 3)'),
    'bad yaml': ('dataset: x\nattributes: [\n', 'cannot be read as YAML'),
}


@pytest.mark.parametrize('name', sorted(BAD_FILES))
def test_a_malformed_file_is_one_line_naming_file_and_attribute(name, tmp_path):
    text, message = BAD_FILES[name]
    path = tmp_path / 'schema.yaml'
    path.write_text(text)
    with pytest.raises(AttributeFileError) as raised:
        load_schema(path)
    line = str(raised.value)
    assert '\n' not in line and f'schema file "{path}"' in line and message in line, line


def test_a_missing_file_names_the_shipped_schemas(tmp_path):
    with pytest.raises(AttributeFileError, match=r'does not exist; expected a YAML schema file '
                                                 r"or one of the shipped schemas \['dukemtmcreid'"):
        load_schema(tmp_path / 'nope.yaml')


def mutations(rng, text=CUSTOM):
    """Random damage to a valid schema file's parsed ``text``: (what, content)."""
    content = yaml.safe_load(text)
    attribute = rng.choice(list(content['attributes']))
    group = next(iter(content['colour_groups']))
    member = content['colour_groups'][group][0]
    choices = [
        ('attribute with a scalar', lambda c: c['attributes'].update({attribute: 'yes'})),
        ('attribute with one class', lambda c: c['attributes'].update({attribute: ['a']})),
        ('class that is a number', lambda c: c['attributes'][attribute].append(rng.randint(0, 9))),
        ('class that is a mapping', lambda c: c['attributes'][attribute].append({'a': 1})),
        ('empty attributes', lambda c: c.update(attributes={})),
        ('group of one', lambda c: c['colour_groups'].update({group: [member]})),
        ('group naming a stranger', lambda c: c['colour_groups'][group].append('stranger')),
        ('group member a list', lambda c: c['colour_groups'][group].append([member])),
        ('group member a mapping', lambda c: c['colour_groups'][group].append({member: 1})),
        ('dataset a list', lambda c: c.update(dataset=['a'])),
        ('groups a list', lambda c: c.update(colour_groups=[member])),
        ('extra key', lambda c: c.update({rng.choice(['name', 'classes', 'attrs']): 1})),
    ]
    what, damage = rng.choice(choices)
    damage(content)
    return what, content


@pytest.mark.parametrize('seed', range(40))
def test_fuzzed_schema_files_end_in_one_line(seed, tmp_path):
    what, content = mutations(random.Random(seed))
    path = tmp_path / 'schema.yaml'
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(AttributeFileError) as raised:
        load_schema(path)
    assert '\n' not in str(raised.value) and f'"{path}"' in str(raised.value), what
