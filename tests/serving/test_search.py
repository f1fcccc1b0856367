"""The gallery index, search by appearance and attributes, and tools/search.py."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from alfo_run import market_split, refusal, run_tool
from PIL import Image

from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.evaluation import rank_grid
from alfo_torchreid.evaluation.rank_grid import draw_grid
from alfo_torchreid.evaluation.attribute_match import (attribute_disagreement, parse_where,
                                                       where_mask)
from alfo_torchreid.serving import gallery_index, inference, search
from alfo_torchreid.utils.checkpoints import load_checkpoint
from alfo_torchreid.utils.errors import SearchError

try:
    import faiss
    needs_faiss = pytest.mark.skipif(False, reason='')
except ImportError:
    faiss = None
    needs_faiss = pytest.mark.skip(reason='the faiss extra (faiss-cpu) is not installed')


@pytest.fixture(scope='module')
def index(trained_alfo, toy_root, module_tmp):
    """A torch-backend index of the toy gallery."""
    folder = module_tmp('index')
    gallery = market_split(toy_root, 'bounding_box_test')
    built, _ = gallery_index.build_index(folder, trained_alfo, [gallery], 'torch')
    return built


def columns(name):
    """The columns of attribute ``name`` in the [N, K] layout, by hand."""
    start = sum(MARKET_SCHEMA.num_classes[:MARKET_SCHEMA.index(name)])
    return slice(start, start + MARKET_SCHEMA.num_classes[MARKET_SCHEMA.index(name)])


# the relative error of a float64 sum of 2048 non-negative terms, in any order
# (gamma_n = n u / (1 - n u), u = 2**-53): two such sums differ by at most twice it
FLOAT64_SUM_ERROR = 2050 * 2.0 ** -53 / (1 - 2050 * 2.0 ** -53)


def float64_distances(features, query):
    """``[N]`` squared Euclidean distances, by hand in float64."""
    return ((np.asarray(features, np.float64) - np.asarray(query, np.float64)) ** 2).sum(1)


def query_image(toy_root):
    return sorted(market_split(toy_root, 'query').glob('*.jpg'))[0]


def test_query_round_trip_filters_ranks_and_frames(index, trained_alfo, toy_root, tmp_path,
                                                   capsys, monkeypatch):
    query = query_image(toy_root)
    folder = tmp_path / 'searches'
    drawn = []
    monkeypatch.setattr(rank_grid, 'draw_grid',
                        lambda layout, out: drawn.append(layout) or draw_grid(layout, out))
    status, out, err = run_tool('search', 'query', index.folder, query, '--top', '30',
                                  '--where', 'gender=female', '--out', folder)
    assert status == 0, err
    png, ranking = folder / f'{query.stem}.png', folder / f'{query.stem}.json'
    result = json.loads(ranking.read_text())
    rows = [hit['row'] for hit in result['hits']]
    female = index.attributes[:, columns('gender')].argmax(1) == 1
    assert 0 < female.sum() < len(female)  # the filter has something to do
    assert sorted(rows) == sorted(np.flatnonzero(female))  # all of them, as top > their count
    assert all(hit['attributes']['gender'][0] == 'female' for hit in result['hits'])
    # ranked by squared Euclidean distance to the query's feature, computed here
    # in float64 from the float32 features: the same sum up to its order
    feature, _ = inference.predict_image(trained_alfo, str(query))
    distances = float64_distances(index.features[rows], feature)
    np.testing.assert_allclose([h['distance'] for h in result['hits']], distances,
                               rtol=2 * FLOAT64_SUM_ERROR)
    assert np.all(np.diff(distances) >= 0)
    found = (f'{len(rows)} results; {len(rows):,} of {len(female):,} items pass '
             '--where "gender=female"')
    assert out.strip().splitlines()[-1] == f'{found}; picture "{png}", ranking "{ranking}"'
    assert (result['passed'], result['items']) == (len(rows), len(female))
    # the picture names the filter; frames: green for the query's person, red for others
    (layout,) = drawn
    assert ''.join(text for text, _ in layout.title).replace(' ', '') == found.replace(' ', '')
    grid = Image.open(png).convert('RGB')
    assert grid.size == layout.size
    query_id = rank_grid.person_id(str(query))
    left = (rank_grid.CELL_WIDTH - rank_grid.IMAGE_SIZE[0]) // 2 - rank_grid.FRAME
    frames = []
    for cell, hit in zip(layout.cells[1:], result['hits']):
        assert cell.path == hit['path']
        pid = rank_grid.person_id(hit['path'])
        expected = rank_grid.GREY if pid is None else \
            rank_grid.GREEN if pid == query_id else rank_grid.RED
        assert grid.getpixel((cell.x + left + 1, cell.y + 1)) == expected, hit['path']
        frames.append(expected)
    assert rank_grid.GREEN in frames and rank_grid.RED in frames
    # a second query into the same folder is no error
    assert run_tool('search', 'query', index.folder, query, '--out', folder)[0] == 0


def test_query_writes_nothing_without_out(index, toy_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_tool('search', 'query', index.folder, query_image(toy_root),
                                  '--top', '5')
    assert status == 0, err
    assert out.strip().splitlines()[-1] == \
        f'5 results of {len(index.paths):,} items (--out FOLDER writes the picture and the ranking)'
    assert list(tmp_path.iterdir()) == []


def test_out_names_a_folder_not_a_file(index, toy_root, tmp_path, capsys):
    taken = tmp_path / 'grid.png'
    taken.write_bytes(b'kept')
    status, _, err = run_tool('search', 'query', index.folder, query_image(toy_root),
                                '--out', taken)
    assert status == 2 and taken.read_bytes() == b'kept'
    assert err.strip() == f'error: --out "{taken}" is a file; expected a folder for the ' \
        'picture and the ranking'


def test_a_refused_query_makes_no_out_folder(index, tmp_path):
    line = refusal('search', 'query', index.folder, tmp_path / 'missing.jpg',
                   '--out', tmp_path / 'searches')
    assert 'missing.jpg' in line
    assert not (tmp_path / 'searches').exists()


def test_a_where_filter_is_computed_once_per_query(index, toy_root, monkeypatch):
    masks = []
    monkeypatch.setattr(search, 'where_mask',
                        lambda *args: masks.append(args) or where_mask(*args))
    status, out, err = run_tool('search', 'query', index.folder, query_image(toy_root),
                                '--where', 'gender=female')
    assert status == 0, err
    assert len(masks) == 1


def test_a_filter_nobody_passes_is_said_with_its_count(index, toy_root, tmp_path, capsys,
                                                       monkeypatch):
    where = 'gender=male,gender=female'  # no one is both
    drawn = []
    monkeypatch.setattr(rank_grid, 'draw_grid', lambda layout, out: drawn.append(layout))
    status, out, err = run_tool('search', 'query', index.folder, query_image(toy_root),
                                  '--where', where, '--out', tmp_path)
    assert status == 0, err
    found = f'0 results; 0 of {len(index.paths):,} items pass --where "{where}"'
    assert out.strip().splitlines()[-1].startswith(found + '; picture')
    assert ''.join(text for text, _ in drawn[0].title).replace(' ', '') == found.replace(' ', '')
    assert len(drawn[0].cells) == 1  # the query alone


def test_captions_wrap_to_the_cell_and_lose_no_word():
    line = 'up black down white backpack handbag clothes hat downpurple'
    layout = rank_grid.grid_layout('q.jpg', ['female young'], [('g.jpg', [line])],
                                   'where gender=female,backpack=yes: 1 of 12 items pass')
    measure = rank_grid.ImageFont.load_default(size=rank_grid.FONT_SIZE).getlength
    width = rank_grid.CELL_WIDTH - 2 * rank_grid.MARGIN
    lines = [text for text, _ in layout.cells[1].lines]
    assert len(lines) > 1 and all(measure(text) <= width for text in lines)
    assert ' '.join(lines).split() == line.split()
    title = ''.join(text for text, _ in layout.title)
    assert title.replace(' ', '') == 'wheregender=female,backpack=yes:1of12itemspass'

    # the row is as tall as its longest caption
    assert layout.size[1] == layout.cells[0].y + rank_grid.IMAGE_SIZE[1] + 2 * rank_grid.FRAME \
        + 4 + len(lines) * rank_grid.LINE_HEIGHT


def test_colour_group_filter_uses_the_argmax_colour(index):
    conditions = parse_where('upcolour=blue, backpack=yes', MARKET_SCHEMA)
    mask = where_mask(conditions, torch.from_numpy(np.array(index.attributes)), MARKET_SCHEMA)
    colours = list(MARKET_SCHEMA.colour_forms()['upcolour'].values())
    p_yes = np.stack([index.attributes[:, columns(c)][:, 1] for c in colours], 1)
    expected = (p_yes.argmax(1) == colours.index('upblue')) & \
        (index.attributes[:, columns('backpack')].argmax(1) == 1)
    assert expected.any()
    assert mask.numpy().tolist() == expected.tolist()


def test_a_wrong_attribute_is_a_one_line_error(index, toy_root, capsys):
    status, _, err = run_tool('search', 'query', index.folder, query_image(toy_root),
                                '--where', 'colour=red')
    assert status == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: --where "colour=red" has no attribute "colour"; the '
                           'market1501 schema has age=young|teenager|adult|old, backpack=no|yes')
    assert 'gender=male|female' in last and 'upcolour=black|white|red|' in last
    assert 'upred=no|yes' in last and 'Traceback' not in err
    with pytest.raises(SearchError, match='gives "gender" the value "yes"'):
        parse_where('gender=yes', MARKET_SCHEMA)
    with pytest.raises(SearchError, match='"backpack" is not NAME=VALUE'):
        parse_where('backpack', MARKET_SCHEMA)


def other_weights(weights, folder):
    """A copy of the run whose weights differ in one value."""
    shutil.copytree(weights.parent.parent, folder)
    checkpoint = load_checkpoint(weights)
    checkpoint['state_dict']['classifier.bias'][0] += 1e-3
    other = folder / 'model' / weights.name
    torch.save(checkpoint, other)
    return other


def test_other_weights_are_refused(index, alfo_weights, toy_root, tmp_path, capsys):
    other = other_weights(alfo_weights, tmp_path / 'other')
    for args in (['query', index.folder, query_image(toy_root), '--weights', other],
                 ['index', '--weights', other, market_split(toy_root, 'bounding_box_test'),
                  '--out', index.folder]):
        status, _, err = run_tool('search', *args)
        assert status == 2
        assert err.strip().splitlines()[-1].startswith(
            f'error: gallery index "{index.folder}" was built with other weights or settings '
            f'than "{other}" (they differ in weights_digest;')


def test_update_extracts_only_new_and_changed_images(trained_alfo, toy_root, tmp_path,
                                                     monkeypatch):
    gallery = tmp_path / 'gallery'
    gallery.mkdir()
    for image in sorted(market_split(toy_root, 'bounding_box_test').glob('*.jpg'))[:6]:
        shutil.copy(image, gallery)
    first, _ = gallery_index.build_index(tmp_path / 'index', trained_alfo, [gallery], 'torch')
    images = sorted(gallery.glob('*.jpg'))
    removed, changed = images[0], images[1]
    removed.unlink()
    os.utime(changed, ns=(1, 1))
    added = gallery / query_image(toy_root).name
    shutil.copy(query_image(toy_root), added)
    extracted = []

    def spy(trained, paths, *args, **kwargs):
        extracted.extend(paths)
        return inference.predict(trained, paths, *args, **kwargs)

    monkeypatch.setattr(gallery_index, 'predict', spy)
    second, report = gallery_index.build_index(tmp_path / 'index', trained_alfo, [gallery])
    assert sorted(extracted) == sorted([str(changed), str(added)])
    assert (report.kept, report.added, report.changed, report.removed) == \
        (len(images) - 2, 1, 1, 1)
    assert set(second.paths) == {str(p) for p in gallery.glob('*.jpg')}
    old_rows = {p: i for i, p in enumerate(first.paths)}
    kept = [i for i, p in enumerate(second.paths) if p in old_rows and p != str(changed)]
    np.testing.assert_array_equal(second.features[kept],
                                  first.features[[old_rows[second.paths[i]] for i in kept]])
    assert len(list((tmp_path / 'index').glob('features-*.npy'))) == 1  # old generation gone
    assert second.backend == 'torch'  # kept from the first build


def test_an_update_removes_only_the_files_its_index_listed(index, trained_alfo, toy_root,
                                                           tmp_path):
    folder = tmp_path / 'index'
    shutil.copytree(index.folder, folder)
    listed = set(index.meta['files'].values())
    mine = [folder / 'features-deadbeef.npy', folder / 'items-0badc0de.csv']  # a user's
    for path in mine:
        path.write_bytes(b'not an index generation')
    updated, _ = gallery_index.build_index(folder, trained_alfo,
                                           [market_split(toy_root, 'bounding_box_test')])
    names = {p.name for p in folder.iterdir()}
    assert all(path.read_bytes() == b'not an index generation' for path in mine)
    assert not names & listed  # the old generation is gone
    assert names == {'index.json', '.lock', *(p.name for p in mine),
                     *updated.meta['files'].values()}


def test_an_interrupted_update_leaves_nothing_behind(index, trained_alfo, toy_root, tmp_path,
                                                    monkeypatch):
    folder, gallery = tmp_path / 'index', market_split(toy_root, 'bounding_box_test')
    shutil.copytree(index.folder, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real_write_file = gallery_index.write_file

    def full_disk_at_index_json(dest, data):
        if dest.endswith('index.json'):
            raise OSError(28, 'No space left on device', dest)
        return real_write_file(dest, data)

    with monkeypatch.context() as patch:
        patch.setattr(gallery_index, 'write_file', full_disk_at_index_json)
        with pytest.raises(OSError):
            gallery_index.build_index(folder, trained_alfo, [gallery])
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # a kill (SIGKILL) between the generation's files and index.json, and in a write
    orphans = ['features-0000aaaa.npy', 'items-0000aaaa.csv']
    for name in orphans:
        (folder / name).write_bytes(b'an unfinished generation')
    (folder / '.generation.json').write_text(json.dumps(orphans))
    partial = folder / '.attributes-0000aaaa.npy.0123456789ab.part'
    partial.write_bytes(b'half')
    os.utime(partial, (1, 1))
    mine = folder / 'attributes-1111bbbb.npy'  # a user's, named like a generation file
    mine.write_bytes(b'mine')
    updated, _ = gallery_index.build_index(folder, trained_alfo, [gallery])
    assert {p.name for p in folder.iterdir()} == {'index.json', '.lock', mine.name,
                                                  *updated.meta['files'].values()}


def test_an_update_killed_after_its_index_json_leaves_the_old_files_to_the_next(
        index, trained_alfo, toy_root, tmp_path, monkeypatch):
    folder, gallery = tmp_path / 'index', market_split(toy_root, 'bounding_box_test')
    shutil.copytree(index.folder, folder)
    old = set(index.meta['files'].values())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill between index.json and the old files' removal

    with monkeypatch.context() as patch:
        patch.setattr(gallery_index, '_remove_generation_files', killed)
        with pytest.raises(KeyboardInterrupt):
            gallery_index.build_index(folder, trained_alfo, [gallery])
    interrupted = gallery_index.load_index(folder)  # the new generation, whole
    assert old <= {p.name for p in folder.iterdir()}
    assert not old & set(interrupted.meta['files'].values())
    updated, _ = gallery_index.build_index(folder, trained_alfo, [gallery])
    assert {p.name for p in folder.iterdir()} == {'index.json', '.lock',
                                                  *updated.meta['files'].values()}
    hits = search.rank_gallery(updated, search.open_search(updated),
                               np.array(updated.features[0]), np.array(updated.attributes[0]), 3)
    assert hits[0].row == 0 and hits[0].distance == 0


def test_a_second_update_of_a_locked_index_folder_names_the_holder(alfo_weights, toy_root,
                                                                   tmp_path, capsys):
    from alfo_torchreid.utils.run_folder import RunFolder
    folder = tmp_path / 'index'
    with RunFolder(folder, 'gallery index folder', '--out', 'index update') as first:
        first.claim()
        status, _, err = run_tool('search', 'index', '--weights', alfo_weights,
                                    market_split(toy_root, 'query'), '--out', folder)
    assert status == 2 and err.strip() == (
        f'error: gallery index folder "{folder}" is in use by another index update (pid '
        f'{os.getpid()}): wait for it to end, or give this index update another --out')
    assert not (folder / 'index.json').exists()


@pytest.mark.parametrize('photo', ['index.jpg', 'query.png'])
def test_a_query_never_writes_over_its_index_or_its_photo(index, toy_root, tmp_path, photo):
    # --out is a folder receiving <photo name>.png and .json: a photo named
    # index.jpg, written into the index folder, would put its ranking on
    # index.json; a PNG photo's picture would replace the photo itself
    folder = tmp_path / 'index'
    shutil.copytree(index.folder, folder)
    query = folder / photo if photo == 'index.jpg' else tmp_path / photo
    Image.open(query_image(toy_root)).save(query)
    before = {p: p.read_bytes() for p in (*folder.iterdir(), query)}
    status, _, err = run_tool('search', 'query', folder, query, '--out', query.parent)
    written = folder / 'index.json' if photo == 'index.jpg' else query
    what = 'a file of the gallery index' if written != query else 'the query image'
    assert status == 2 and err.strip().splitlines()[-1] == (
        f'error: --out would write "{written}" over {what} "{written}", which this command '
        'reads: give another --out'), err
    assert {p: p.read_bytes() for p in before} == before


# -- backends, on synthetic features --------------------------------------------

def clustered(num, dim=64, seed=0):
    """``num`` points around 500 fixed centres (the same for every seed)."""
    centres = np.random.default_rng(0).standard_normal((500, dim)).astype(np.float32) * 3
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, len(centres), num)]
            + rng.standard_normal((num, dim)).astype(np.float32))


@needs_faiss
def test_faiss_flat_and_torch_give_the_same_top_k():
    features = clustered(5000)
    queries = clustered(10, seed=1)
    allowed = np.random.default_rng(2).random(len(features)) < 0.3
    exact, flat = search.TorchSearch(features), search.FaissSearch.flat(features)
    for query in queries:
        for mask in (None, allowed):
            d_torch, rows_torch = exact.nearest(query, 20, mask)
            d_faiss, rows_faiss = flat.nearest(query, 20, mask)
            assert rows_torch.tolist() == rows_faiss.tolist()
            np.testing.assert_allclose(d_torch, d_faiss, rtol=1e-4)
            if mask is not None:
                assert mask[rows_torch].all()
    brute = ((features - queries[0]) ** 2).sum(1)
    assert exact.nearest(queries[0], 20)[1].tolist() == np.argsort(brute)[:20].tolist()


def near_tie(dim=2048, num=500):
    """Unnormalised features like an untrained ResNet's (norm² ~1.3e5, distances
    ~660) and a query, with rows 7 and 8 its nearest: row 8 is row 7 moved one
    float32 step towards the query on one coordinate, 2e-6 nearer."""
    rng = np.random.default_rng(0)
    base = rng.random(dim).astype(np.float32) * 14
    features = base + rng.standard_normal((num, dim)).astype(np.float32) * 0.4
    query = base + rng.standard_normal(dim).astype(np.float32) * 0.4
    features[7] = features[8] = query + rng.standard_normal(dim).astype(np.float32) * 0.3
    j = np.argmax(np.abs(features[7] - query))
    features[8, j] = np.nextafter(features[8, j], query[j])
    return features, query


def test_exact_search_reports_float64_distances_and_ranks_a_near_tie():
    features, query = near_tie()
    truth = float64_distances(features, query)
    assert (np.sort(truth)[:2] == truth[[8, 7]]).all() and 0 < truth[7] - truth[8] < 1e-5
    assert (features ** 2).sum(1).min() > 1e5  # where |g|² - 2 g·q + |q|² cancels
    searchers = [search.TorchSearch(features)]
    if faiss is not None:
        searchers.append(search.FaissSearch.flat(features))
    allowed = np.ones(len(features), bool)
    allowed[::3] = False  # not 7 nor 8
    for searcher in searchers:
        for mask in (None, allowed):
            distances, rows = searcher.nearest(query, 20, mask)
            candidates = np.flatnonzero(mask) if mask is not None else np.arange(len(truth))
            assert rows.tolist() == candidates[np.argsort(truth[candidates],
                                                          kind='stable')][:20].tolist()
            np.testing.assert_allclose(distances, truth[rows], rtol=2 * FLOAT64_SUM_ERROR)
            assert rows[:2].tolist() == [8, 7]


def synthetic_index(num=3000, dim=64):
    """A GalleryIndex of synthetic features and attribute probabilities."""
    rng = np.random.default_rng(3)
    attributes = np.concatenate([rng.dirichlet(np.full(c, 0.3), num)
                                 for c in MARKET_SCHEMA.num_classes], 1).astype(np.float32)
    meta = {'identity': {'signature': {'schema': MARKET_SCHEMA.to_dict()}},
            'backend': {'kind': 'torch'}}
    return gallery_index.GalleryIndex('synthetic', meta, [f'{i}.jpg' for i in range(num)],
                                      [(0, 0)] * num, clustered(num, dim), attributes)


@needs_faiss
def test_attribute_reranking_equals_reranking_the_whole_gallery():
    index = synthetic_index()
    query = clustered(1, seed=5)[0]
    query_attributes = index.attributes[7]
    distances = ((index.features - query) ** 2).sum(1).astype(np.float64)
    median = np.sort(distances)[(len(distances) - 1) // 2]
    by_hand = np.zeros(len(distances))
    for name in MARKET_SCHEMA.names:
        cols = columns(name)
        by_hand += 0.5 * np.abs(index.attributes[:, cols] - query_attributes[cols]).sum(1)
    by_hand /= len(MARKET_SCHEMA)
    for weight in (0.5, 3.0):  # 3.0 reaches beyond the first pool of nearest items
        expected = np.argsort(distances + weight * median * by_hand)[:10]
        for searcher in (search.TorchSearch(index.features),
                         search.FaissSearch.flat(index.features)):
            hits = search.rank_gallery(index, searcher, query, query_attributes, 10,
                                       attr_weight=weight)
            assert [h.row for h in hits] == expected.tolist()
            assert hits[0].disagreement == pytest.approx(by_hand[expected[0]], abs=1e-5)
    plain = search.rank_gallery(index, search.TorchSearch(index.features), query,
                                query_attributes, 10)
    assert [h.row for h in plain] == np.argsort(distances)[:10].tolist()
    assert [h.row for h in plain] != expected.tolist()


def test_disagreement_is_the_mean_total_variation():
    q = torch.zeros(1, sum(MARKET_SCHEMA.num_classes))
    g = torch.zeros(2, sum(MARKET_SCHEMA.num_classes))
    for name in MARKET_SCHEMA.names:
        cols = columns(name)
        q[0, cols.start] = 1  # certain of class 0 everywhere
        g[0, cols.start] = 1  # the same
        g[1, cols.start + 1] = 1  # certain of class 1 everywhere
    g[0, columns('age')] = torch.tensor([0.5, 0.5, 0, 0])  # TV 0.5 on one attribute
    assert attribute_disagreement(q, g, MARKET_SCHEMA).tolist() == \
        [[pytest.approx(0.5 / 27), pytest.approx(1.0)]]


@pytest.fixture
def one_faiss_thread():
    """FAISS's OpenMP threads spin when other processes hold the cores."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@needs_faiss
def test_ivfpq_with_exact_rescoring_finds_the_nearest(one_faiss_thread):
    features = clustered(12000)
    exact = search.TorchSearch(features)
    # a small training sample keeps the test fast (FAISS warns that it is small)
    trained_ivfpq = search.build_ivfpq(features, nlist=50, m=8, train_size=3000)
    ivfpq = search.FaissSearch(trained_ivfpq, features, nprobe=8)
    recall = [len(set(exact.nearest(q, 20)[1]) & set(ivfpq.nearest(q, 20)[1])) / 20
              for q in clustered(20, seed=1)]
    assert np.mean(recall) >= 0.9, recall


@needs_faiss
def test_backend_choice_names_the_faiss_extra_and_the_ivfpq_minimum(monkeypatch):
    assert search.default_backend(search.AUTO_IVFPQ_ITEMS - 1) == 'torch'
    assert search.default_backend(search.AUTO_IVFPQ_ITEMS) == 'faiss-ivfpq'
    with pytest.raises(SearchError, match='faiss-ivfpq is for large galleries'):
        search.search_settings('faiss-ivfpq', 500)
    monkeypatch.setitem(sys.modules, 'faiss', None)  # as if not installed
    with pytest.raises(SearchError, match=r'pip install alfo-torchreid\[faiss\]'):
        search.search_settings('faiss-flat', 500)
    assert search.default_backend(10 ** 6) == 'torch'


def test_true_attributes_are_named_and_compared_part_by_part():
    from alfo_torchreid.evaluation.attribute_match import named_labels
    labels = np.zeros(len(MARKET_SCHEMA), dtype=np.int64)
    for name, label in (('gender', 1), ('age', 2), ('upred', 1), ('backpack', 1),
                        ('hat', -1)):
        labels[MARKET_SCHEMA.index(name)] = label
    unknown_down = labels.copy()
    unknown_down[MARKET_SCHEMA.index('downgray')] = -1
    truth, partly = named_labels(np.stack([labels, unknown_down]), MARKET_SCHEMA)
    assert truth['gender'] == ('female', 1.0) and truth['age'] == ('adult', 1.0)
    assert truth['hat'] == ('?', 0.0) and truth['upcolour'] == ('red', 1.0)
    assert truth['downcolour'] == ('none', 1.0)  # all known, none yes
    assert partly['downcolour'] == ('?', 0.0)  # none yes, one unknown
    # a prediction that gets gender and the colours wrong, the carried items right
    prediction = dict(truth, gender=('male', 0.8), upcolour=('blue', 0.6))
    assert rank_grid.attribute_summary(prediction, MARKET_SCHEMA) == \
        ['male adult', 'up blue down none', 'backpack']
    assert rank_grid.truth_lines(prediction, truth, MARKET_SCHEMA) == [
        ('true:', rank_grid.GREY), ('x female adult', rank_grid.RED),
        ('x up red down none', rank_grid.RED), ('= backpack', rank_grid.GREEN)]
    # nothing carried, truly or predicted: no line; a crop without labels: one grey line
    nothing = dict(truth, backpack=('no', 1.0))
    assert rank_grid.truth_lines(nothing, nothing, MARKET_SCHEMA)[-1] == \
        ('= up red down none', rank_grid.GREEN)
    assert rank_grid.truth_lines(prediction, None, MARKET_SCHEMA) == \
        [('true: none known', rank_grid.GREY)]
    layout = rank_grid.ranking_layout('q.jpg', prediction, [('g.jpg', 1.5, prediction)],
                                      MARKET_SCHEMA, truths=[truth])
    assert layout.cells[1].lines[-3:] == [('x female adult', rank_grid.RED),
                                          ('x up red down none', rank_grid.RED),
                                          ('= backpack', rank_grid.GREEN)]
