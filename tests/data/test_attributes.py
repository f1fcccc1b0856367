"""load_attribute_file, AttributeSchema.union and convert_labels."""
import io
import signal

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings, strategies as st

from alfo_torchreid.data.attributes import (DUKE_SCHEMA, MARKET_SCHEMA, UNKNOWN, AttributeSchema,
                                            MatFormatError, convert_labels, load_attribute_file,
                                            read_mat5)
from alfo_torchreid.utils.errors import AttributeFileError

# ------------------------------------------------------------ hand-made files

def _split(schema, labels, order=None):
    """{field: value} of one split as the annotators store it: uint8 (1, N) rows of
    label + 1 and a (1, N) cell of 4-digit ids. ``labels``: {pid: 0-based vector}."""
    pids = sorted(labels)
    fields = {name: np.array([[labels[p][schema.index(name)] + 1 for p in pids]], dtype=np.uint8)
              for name in (order or schema.names)}
    ids = np.empty((1, len(pids)), dtype=object)
    ids[0, :] = [f'{p:04d}' for p in pids]
    fields['image_index'] = ids
    return fields


def _labels(schema, pids, seed):
    rng = np.random.default_rng(seed)
    return {p: rng.integers(0, schema.num_classes) for p in pids}


def _write(path, content, compress=False):
    scipy.io.savemat(path, content, do_compression=compress)
    return path


def _market_content(train=None, test=None):
    train = train if train is not None else _labels(MARKET_SCHEMA, [2, 7, 1500], seed=0)
    test = test if test is not None else _labels(MARKET_SCHEMA, [1, 3, 1501], seed=1)
    return {'market_attribute': {'train': _split(MARKET_SCHEMA, train),
                                 'test': _split(MARKET_SCHEMA, test)}}


def _duke_content():
    return {'duke_attribute': {'train': _split(DUKE_SCHEMA, _labels(DUKE_SCHEMA, [1, 8], 2)),
                               'test': _split(DUKE_SCHEMA, _labels(DUKE_SCHEMA, [2, 7139], 3))}}


# ------------------------------------------------------------ the real files

def test_real_market_file(market_mat):
    ann = load_attribute_file(market_mat)
    assert ann.schema == MARKET_SCHEMA and len(ann.schema) == 27
    assert (len(ann.train), len(ann.test)) == (751, 750)
    assert min(ann.train) == 2 and max(ann.test) == 1501  # ids are ints

    def label(split, pid, name):
        return int(ann.split(split)[pid][MARKET_SCHEMA.index(name)])

    # Read by hand with scipy.io.loadmat: file value - 1 (age 1..4 -> 0..3).
    assert {n: label('train', 2, n) for n in ('age', 'backpack', 'bag', 'gender', 'hair',
                                              'upred', 'downblue', 'clothes', 'up', 'down')} == \
        dict(age=1, backpack=0, bag=0, gender=0, hair=0, upred=1, downblue=1, clothes=1, up=1,
             down=1)
    assert {n: label('train', 1500, n) for n in ('backpack', 'upred', 'hat')} == \
        dict(backpack=1, upred=0, hat=0)
    assert label('train', 116, 'age') == 0 and label('train', 105, 'age') == 3
    assert label('test', 15, 'age') == 3 and label('test', 271, 'age') == 0
    assert {n: label('test', 1, n) for n in ('gender', 'hair', 'upwhite', 'downwhite',
                                             'clothes')} == \
        dict(gender=1, hair=1, upwhite=1, downwhite=1, clothes=0)
    ages = np.array([v[0] for v in ann.train.values()])
    assert np.bincount(ages).tolist() == [14, 569, 160, 8]


def test_real_duke_file(duke_mat):
    ann = load_attribute_file(duke_mat, expected='dukemtmcreid')
    assert ann.schema == DUKE_SCHEMA and len(ann.schema) == 23
    assert (len(ann.train), len(ann.test)) == (702, 1110)

    def label(split, pid, name):
        return int(ann.split(split)[pid][DUKE_SCHEMA.index(name)])

    assert {n: label('train', 1, n) for n in ('backpack', 'boots', 'shoes', 'top', 'gender',
                                              'downblack', 'upblack')} == \
        dict(backpack=1, boots=0, shoes=1, top=0, gender=0, downblack=1, upblack=1)
    # The file stores 0 (unannotated) for 'top' of ids 0370 and 0679.
    assert label('train', 370, 'top') == UNKNOWN and label('train', 679, 'top') == UNKNOWN
    assert (label('train', 370, 'gender'), label('train', 370, 'boots')) == (1, 1)
    assert {n: label('test', 7139, n) for n in ('boots', 'handbag', 'upblack', 'hat')} == \
        dict(boots=1, handbag=0, upblack=0, hat=1)
    tops = np.array([v[DUKE_SCHEMA.index('top')] for v in ann.train.values()])
    assert (tops == UNKNOWN).sum() == 2


def test_real_files_are_told_apart(duke_mat):
    message = r"is a dukemtmcreid annotation \(variable 'duke_attribute'\), but a market1501 one"
    with pytest.raises(AttributeFileError, match=message):
        load_attribute_file(duke_mat, expected='market1501')


# ------------------------------------------------------------ hand-made files

def test_fields_are_read_by_name_whatever_their_order(tmp_path):
    train = _labels(MARKET_SCHEMA, [2, 7, 1500], seed=5)
    test = _labels(MARKET_SCHEMA, [1, 3], seed=6)
    reversed_order = tuple(reversed(MARKET_SCHEMA.names))
    content = {'market_attribute': {'test': _split(MARKET_SCHEMA, test, order=reversed_order),
                                    'train': _split(MARKET_SCHEMA, train)}}
    ann = load_attribute_file(_write(tmp_path / 'm.mat', content, compress=True))
    assert ann.schema is MARKET_SCHEMA and ann.path == str(tmp_path / 'm.mat')
    assert sorted(ann.train) == [2, 7, 1500] and sorted(ann.test) == [1, 3]
    for pid in train:
        np.testing.assert_array_equal(ann.train[pid], train[pid])
        assert ann.train[pid].dtype == np.int64
    for pid in test:
        np.testing.assert_array_equal(ann.test[pid], test[pid])


def test_recognised_by_fields_under_another_variable_name(tmp_path):
    content = {'my_labels': _duke_content()['duke_attribute']}
    assert load_attribute_file(_write(tmp_path / 'd.mat', content)).schema is DUKE_SCHEMA


def test_matlab_doubles_load(tmp_path):
    content = _market_content()
    for split in content['market_attribute'].values():
        for name in MARKET_SCHEMA.names:
            split[name] = split[name].astype(np.float64).T  # a column of doubles
    ann = load_attribute_file(_write(tmp_path / 'm.mat', content))
    assert len(ann.train) == 3


def _corrupt(tmp_path, edit):
    content = _market_content()
    edit(content)
    return _write(tmp_path / 'bad.mat', content)


def _set_field(split, name, value):
    def edit(content):
        next(iter(content.values()))[split][name] = value
    return edit


def _del_field(split, name):
    def edit(content):
        del next(iter(content.values()))[split][name]
    return edit


REJECTIONS = [
    ('missing split', lambda c: c['market_attribute'].pop('test'),
     r"has no split 'test' in variable 'market_attribute'"),
    ('split not a struct', lambda c: c['market_attribute'].update(train=np.zeros(3)),
     r"split 'train' is not a struct of fields"),
    ('missing field', _del_field('test', 'hat'),
     r"split 'test' lacks field\(s\) hat of the market1501"),
    ('missing ids', _del_field('train', 'image_index'),
     r"split 'train' lacks field\(s\) image_index"),
    ('extra field', _set_field('test', 'umbrella', np.ones((1, 3), np.uint8)),
     r"split 'test' has field\(s\) umbrella that the market1501 annotation does not have"),
    ('binary label out of range', _set_field('train', 'hat', np.array([[1, 3, 2]], np.uint8)),
     r"field 'hat' has labels out of range 1..2 \(0 for unannotated\), e.g. \[3\]"),
    ('age out of range', _set_field('test', 'age', np.array([[1, 5, 4]], np.uint8)),
     r"field 'age' has labels out of range 1..4 .*e.g. \[5\]"),
    ('fractional label', _set_field('test', 'age', np.array([[1, 1.5, 4]])),
     r"field 'age' has labels out of range 1..4 .*e.g. \[1.5\]"),
    ('unequal lengths', _set_field('train', 'bag', np.ones((1, 2), np.uint8)),
     r"field 'bag' has 2 labels but image_index has 3 ids \(unequal lengths\)"),
    ('matrix field', _set_field('train', 'bag', np.ones((2, 3), np.uint8)),
     r"field 'bag' is not a vector of numbers \(dtype uint8, shape \(2, 3\)\)"),
    ('text field', _set_field('train', 'bag', 'yes'), r"field 'bag' is not a vector of numbers"),
    ('ids not 4-digit',
     _set_field('train', 'image_index', np.array([['2', '0007', '01500']], object)),
     r"image_index has 2 ids that are not 4-digit strings, e.g. \['2', '01500'\]"),
    ('numeric ids', _set_field('train', 'image_index', np.array([[2, 7, 1500]])),
     r'image_index holds int64 values, expected 4-digit id strings'),
    ('repeated ids',
     _set_field('test', 'image_index', np.array([['0001', '0003', '0001']], object)),
     r"split 'test': image_index repeats ids \['0001'\]"),
]


@pytest.mark.parametrize('edit,message', [r[1:] for r in REJECTIONS],
                         ids=[r[0] for r in REJECTIONS])
def test_rejects_malformed_content(tmp_path, edit, message):
    path = _corrupt(tmp_path, edit)
    with pytest.raises(AttributeFileError, match=message) as info:
        load_attribute_file(path)
    assert str(path) in str(info.value)


def test_rejects_an_empty_split(tmp_path):
    path = _write(tmp_path / 'e.mat', _market_content(test={}))
    with pytest.raises(AttributeFileError, match=r"split 'test' has no identities"):
        load_attribute_file(path)


def test_rejects_a_file_of_neither_dataset(tmp_path):
    ids = np.array([['0001', '0002']], object)
    content = {'labels': {'train': {'hat': np.ones((1, 2)), 'image_index': ids},
                          'test': {'hat': np.ones((1, 2))}}}
    message = (r"is neither a Market-1501_attribute nor a DukeMTMC-attribute file: "
               r"variable 'labels' with train fields \['hat'\]")
    with pytest.raises(AttributeFileError, match=message):
        load_attribute_file(_write(tmp_path / 'x.mat', content))


def test_rejects_a_variable_that_contradicts_the_fields(tmp_path):
    content = {'market_attribute': _duke_content()['duke_attribute']}
    message = (r"variable 'market_attribute' names a market1501 annotation, "
               r'but its fields are those of dukemtmcreid')
    with pytest.raises(AttributeFileError, match=message):
        load_attribute_file(_write(tmp_path / 'x.mat', content))


def test_rejects_the_other_dataset(tmp_path):
    path = _write(tmp_path / 'duke.mat', _duke_content())
    with pytest.raises(AttributeFileError, match=rf'"{path}" is a dukemtmcreid annotation .* '
                                                 r'but a market1501 one is expected'):
        load_attribute_file(path, expected='market1501')
    assert load_attribute_file(path, expected='dukemtmcreid').schema is DUKE_SCHEMA


def test_rejects_several_variables(tmp_path):
    content = {**_market_content(), **_duke_content()}
    message = r"holds variables \['market_attribute', 'duke_attribute'\]; expected one struct"
    with pytest.raises(AttributeFileError, match=message):
        load_attribute_file(_write(tmp_path / 'two.mat', content))


def test_rejects_files_that_are_not_mat(tmp_path):
    text = tmp_path / 'notes.mat'
    text.write_text('market_attribute = 1\n')
    with pytest.raises(AttributeFileError, match=rf'"{text}" is not a readable MATLAB .mat file'):
        load_attribute_file(text)
    empty = tmp_path / 'empty.mat'
    empty.write_bytes(b'')
    with pytest.raises(AttributeFileError, match=rf'"{empty}" is not a readable MATLAB .mat file'):
        load_attribute_file(empty)
    with pytest.raises(AttributeFileError, match=rf'"{tmp_path / "absent.mat"}" does not exist'):
        load_attribute_file(tmp_path / 'absent.mat')


@pytest.mark.parametrize('compress', [False, True])
def test_rejects_truncated_files(tmp_path, compress):
    data = _write(tmp_path / 'full.mat', _market_content(), compress=compress).read_bytes()
    for size in (100, len(data) // 2, len(data) - 1):
        cut = tmp_path / f'cut{size}.mat'
        cut.write_bytes(data[:size])
        with pytest.raises(AttributeFileError, match=rf'"{cut}" is not a readable MATLAB .mat file '
                                                     r'\(corrupt or truncated\?\)'):
            load_attribute_file(cut)


@pytest.mark.parametrize('type_code', [8, 14, 0xA8])
def test_rejects_a_numeric_element_of_unknown_type(tmp_path, type_code):
    """scipy.io.loadmat crashes the process (segmentation fault) on these files."""
    data = bytearray(_write(tmp_path / 'ok.mat', _market_content()).read_bytes())
    at = data.index(b'\x02\x00\x03\x00', 128)  # small element: uint8 (2), 3 bytes: a label row
    data[at:at + 2] = type_code.to_bytes(2, 'little')
    bad = tmp_path / 'bad.mat'
    bad.write_bytes(bytes(data))
    with pytest.raises(AttributeFileError, match=r'is not a readable MATLAB .mat file .*a numeric '
                                                 rf'array holds \[{type_code}\] elements'):
        load_attribute_file(bad)


def test_rejects_matlab_7_3_files(tmp_path):
    path = tmp_path / 'v73.mat'
    path.write_bytes(b'MATLAB 7.3 MAT-file'.ljust(124, b' ') + b'\x00\x02IM' + b'\x89HDF\r\n')
    with pytest.raises(AttributeFileError, match=r"version 0x0200 is not read; save it with "
                                                 r"MATLAB's -v7"):
        load_attribute_file(path)


@pytest.mark.parametrize('fixture,variable', [('market_mat', 'market_attribute'),
                                              ('duke_mat', 'duke_attribute')])
def test_reader_agrees_with_scipy_on_the_real_files(request, fixture, variable):
    path = request.getfixturevalue(fixture)
    mine = read_mat5(path.read_bytes())[variable][0, 0]
    reference = scipy.io.loadmat(path)[variable][0, 0]
    for split in ('train', 'test'):
        fields, expected = mine[split][0, 0], reference[split][0, 0]
        assert tuple(fields) == expected.dtype.names  # same fields, same order
        for field, value in fields.items():
            if field == 'image_index':
                assert [v.tolist() for v in value.ravel()] == \
                    [v.tolist() for v in expected[field].ravel()]
            else:
                assert value.shape == expected[field].shape
                np.testing.assert_array_equal(value, expected[field])


def test_reader_reads_char_matrices_and_nested_cells():
    buffer = io.BytesIO()
    cell = np.empty((1, 2), dtype=object)
    cell[0, 0], cell[0, 1] = 'ab', np.array([[1.5, 2.5]])
    scipy.io.savemat(buffer, {'ids': np.array(['0001', '0002', '0003']), 'c': cell,
                              's': {'x': np.arange(6).reshape(2, 3)}})
    variables = read_mat5(buffer.getvalue())
    assert variables['ids'].tolist() == ['0001', '0002', '0003']
    assert variables['c'].shape == (1, 2) and variables['c'][0, 0].tolist() == ['ab']
    np.testing.assert_array_equal(variables['c'][0, 1], [[1.5, 2.5]])
    np.testing.assert_array_equal(variables['s'][0, 0]['x'], np.arange(6).reshape(2, 3))
    with pytest.raises(MatFormatError, match='shorter than the 128-byte'):
        read_mat5(b'MATLAB')


# ------------------------------------------------------------ fuzz

@pytest.fixture
def deadline():
    """Fails a test that runs longer than 60 s (a hang) instead of blocking the suite."""
    def on_alarm(*_):
        raise TimeoutError('load_attribute_file hung')
    if not hasattr(signal, 'SIGALRM'):  # Windows: no watchdog
        yield
        return
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _valid_bytes(compress):
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, _market_content(), do_compression=compress)
    return buffer.getvalue()


VALID = {False: _valid_bytes(False), True: _valid_bytes(True)}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(compress=st.booleans(), data=st.data())
def test_fuzz_mutated_bytes_load_or_raise_our_error(tmp_path_factory, deadline, compress, data):
    raw = bytearray(VALID[compress])
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(['flip', 'cut', 'insert']))
        at = data.draw(st.integers(0, len(raw) - 1))
        if kind == 'flip':
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == 'cut':
            del raw[at:]
            if not raw:
                break
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    path = tmp_path_factory.mktemp('fuzz') / 'a.mat'
    path.write_bytes(bytes(raw))
    try:
        ann = load_attribute_file(path)
    except AttributeFileError:
        return
    # What loads must be a well-formed annotation.
    for labels in (ann.train, ann.test):
        assert labels and all(0 <= p <= 9999 for p in labels)
        matrix = np.stack(list(labels.values()))
        assert matrix.shape[1] == len(ann.schema)
        assert ((matrix >= UNKNOWN) & (matrix < np.array(ann.schema.num_classes))).all()


_FIELD_VALUES = st.one_of(
    st.lists(st.integers(-1, 6), max_size=4).map(lambda v: np.array([v], dtype=np.int16)),
    st.lists(st.floats(), max_size=3).map(lambda v: np.array([v])),  # NaN and inf included
    st.text(max_size=5),
    st.just(np.zeros((2, 2))),
)
_IDS = st.lists(st.text(alphabet='0123456789a-', min_size=0, max_size=5), min_size=0, max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_structures_load_correctly_or_raise_our_error(tmp_path_factory, deadline, data):
    schema = data.draw(st.sampled_from([MARKET_SCHEMA, DUKE_SCHEMA]))
    variable = data.draw(st.sampled_from(['market_attribute', 'duke_attribute', 'x']))
    content = {}
    splits = st.sampled_from([('train', 'test'), ('train',), ('test', 'train', 'extra')])
    for split in data.draw(splits):
        ids = data.draw(_IDS)
        fields = {}
        for name in schema.names:
            if data.draw(st.integers(0, 30)) == 0:
                continue  # a missing field, now and then
            if data.draw(st.integers(0, 10)) == 0:
                fields[name] = data.draw(_FIELD_VALUES)
            else:
                top = schema.num_classes[schema.index(name)]
                fields[name] = np.array([data.draw(st.lists(st.integers(0, top), min_size=len(ids),
                                                            max_size=len(ids)))], dtype=np.uint8)
        cell = np.empty((1, len(ids)), dtype=object)
        cell[0, :] = ids
        fields['image_index'] = cell
        content[split] = fields
    path = tmp_path_factory.mktemp('fuzz') / 's.mat'
    scipy.io.savemat(path, {variable: content})
    try:
        ann = load_attribute_file(path)
    except AttributeFileError:
        return
    # Loaded: every label equals the stored value - 1, looked up by name and id.
    assert ann.schema is schema
    for split in ('train', 'test'):
        ids = [int(t) for t in content[split]['image_index'][0]]
        assert sorted(ann.split(split)) == sorted(ids)
        for k, pid in enumerate(ids):
            expected = [int(content[split][n][0, k]) - 1 for n in schema.names]
            assert ann.split(split)[pid].tolist() == expected


# ------------------------------------------------------------ schemas

def test_union_of_market_and_duke():
    union = MARKET_SCHEMA.union(DUKE_SCHEMA)
    assert union.names[:27] == MARKET_SCHEMA.names
    assert union.names[27:] == ('boots', 'shoes', 'top', 'downred', 'upbrown')
    assert union.num_classes == MARKET_SCHEMA.num_classes + (2,) * 5
    assert union.colour_groups['upper_colour'] == \
        MARKET_SCHEMA.colour_groups['upper_colour'] + ('upbrown',)
    assert union.colour_groups['lower_colour'][-1] == 'downred'
    assert MARKET_SCHEMA.union(MARKET_SCHEMA) is MARKET_SCHEMA
    assert DUKE_SCHEMA.union(MARKET_SCHEMA).names[:23] == DUKE_SCHEMA.names


def test_union_refuses_different_classes():
    other = AttributeSchema('custom', ('age', 'hat'), (2, 2), {})
    with pytest.raises(AttributeFileError, match=r"cannot combine the attributes of market1501 and "
                                                 r"custom: 'age' has the classes \['young', "
                                                 r"'teenager', 'adult', 'old'\] in the first and "
                                                 r"\['no', 'yes'\]"):
        MARKET_SCHEMA.union(other)
    # the same count, other meanings: Market's sleeves are long/short
    other = AttributeSchema('custom', ('up',), (2,), {}, (('short', 'long'),))
    with pytest.raises(AttributeFileError, match=r"'up' has the classes \['long', 'short'\] in "
                                                 r"the first and \['short', 'long'\]"):
        MARKET_SCHEMA.union(other)


def test_convert_labels_places_by_name_and_fills_unknown():
    union = MARKET_SCHEMA.union(DUKE_SCHEMA)
    duke = np.arange(23) % 2
    converted = convert_labels(duke[None], DUKE_SCHEMA, union)
    assert converted.shape == (1, 32) and converted.dtype == np.int64
    for i, name in enumerate(union.names):
        expected = duke[DUKE_SCHEMA.index(name)] if name in DUKE_SCHEMA.names else UNKNOWN
        assert converted[0, i] == expected
    assert converted[0, union.index('age')] == UNKNOWN
