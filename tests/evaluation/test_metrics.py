"""evaluate_rank against torchreid's Python evaluator; attribute metrics by hand."""
import warnings

import numpy as np
import pytest
import torch
import torchreid

from alfo_torchreid.data.attributes import MARKET_SCHEMA, UNKNOWN, AttributeSchema
from alfo_torchreid.evaluation import metrics
from alfo_torchreid.evaluation.metrics import (attribute_metrics, evaluate_rank,
                                               format_attribute_table)

with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # torchreid warns that its Cython evaluator is missing
    TORCHREID_RANK = torchreid.metrics.rank


def torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    return TORCHREID_RANK.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                                        max_rank=max_rank, use_cython=False)


def reid_problem(num_q, num_g, seed, num_ids=None, absent_ids=3):
    """Distances from features with identity structure, ~5 cameras.

    ``absent_ids`` query identities have no gallery image at all.
    """
    rng = np.random.default_rng(seed)
    num_ids = num_ids or max(num_g // 8, 4)
    g_pids = rng.integers(0, num_ids, num_g)
    q_pids = rng.integers(0, num_ids + absent_ids, num_q)
    g_camids, q_camids = rng.integers(0, 5, num_g), rng.integers(0, 5, num_q)
    centres = rng.standard_normal((num_ids + absent_ids, 16))
    q_feat = centres[q_pids] + 1.5 * rng.standard_normal((num_q, 16))
    g_feat = centres[g_pids] + 1.5 * rng.standard_normal((num_g, 16))
    distmat = ((q_feat[:, None] - g_feat[None]) ** 2).sum(-1).astype(np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def assert_same(ours, theirs):
    assert ours[0].dtype == np.float32
    assert ours[0].shape == theirs[0].shape
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-6)
    assert ours[1] == pytest.approx(theirs[1], abs=1e-6)


# ------------------------------------------------------------------- ranking

def test_hand_computed_cmc_and_map():
    # Query 0 (id 1, cam 0): gallery item 2 (id 1, cam 0) is removed; its valid
    # ranking is g1 (id 2), g3 (id 3), g0 (id 1), g4 (id 1): matches at ranks 3
    # and 4, AP = (1/3 + 2/4) / 2. Query 1 (id 2, cam 0): g2, g1 (match), ...:
    # AP = 1/2. Query 2 (id 9) has no match and is skipped.
    g_pids, g_camids = np.array([1, 2, 1, 3, 1]), np.array([1, 1, 0, 1, 1])
    q_pids, q_camids = np.array([1, 2, 9]), np.array([0, 0, 0])
    distmat = np.array([[0.3, 0.1, 0.05, 0.2, 0.5],
                        [0.4, 0.2, 0.1, 0.3, 0.6],
                        [0.1, 0.2, 0.3, 0.4, 0.5]], dtype=np.float32)
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4)
    np.testing.assert_array_equal(cmc, np.float32([0, 0.5, 1, 1]))
    assert mAP == pytest.approx(((1 / 3 + 2 / 4) / 2 + 1 / 2) / 2, abs=1e-12)
    assert_same((cmc, mAP), torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids, 4))


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('kind', ['distinct', 'tied float', 'tied int'])
def test_equals_torchreid_on_random_inputs(seed, kind):
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(80, 500, seed)
    if kind != 'distinct':
        distmat = np.round(distmat / 8)  # a dozen distinct values: ties everywhere
        distmat = distmat.astype(np.int64 if kind == 'tied int' else np.float32)
    theirs = torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids)
    num_valid = sum(((g_pids == p) & (g_camids != c)).any() for p, c in zip(q_pids, q_camids))
    assert 0 < num_valid < len(q_pids)  # some queries lack a match and are skipped
    assert_same(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids), theirs)


def test_tie_order_is_torchreids_not_any_order():
    # The tied problem of the test above is sensitive to the tie order: the
    # same rows with the gallery reversed (so ties are met in another order)
    # give torchreid other numbers; ours must still follow each exactly.
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(80, 500, 0)
    distmat = np.round(distmat / 8).astype(np.float32)
    flip = slice(None, None, -1)
    theirs = torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids)
    theirs_flipped = torchreid_market(distmat[:, flip], q_pids, g_pids[flip], q_camids,
                                      g_camids[flip])
    assert abs(theirs[1] - theirs_flipped[1]) > 1e-3
    assert_same(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids), theirs)
    assert_same(evaluate_rank(distmat[:, flip], q_pids, g_pids[flip], q_camids,
                              g_camids[flip]), theirs_flipped)


@pytest.mark.parametrize('chunk_entries', [1, 700, 1 << 18])
def test_chunking_does_not_change_the_result(monkeypatch, chunk_entries):
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(50, 300, 7)
    distmat[::3] = np.round(distmat[::3])  # tied and untied rows in the same chunk
    monkeypatch.setattr(metrics, '_CHUNK_ENTRIES', chunk_entries)
    assert_same(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids),
                torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids))


def test_nan_and_inf_distances_follow_argsort():
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(40, 200, 3)
    distmat = distmat.astype(np.float64)
    rng = np.random.default_rng(0)
    distmat[rng.random(distmat.shape) < 0.05] = np.nan
    distmat[rng.random(distmat.shape) < 0.05] = np.inf
    assert_same(evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids),
                torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids))


def test_max_rank_larger_than_gallery_warns_and_shortens(capsys):
    # No query has a same-camera image of its id, so every valid gallery keeps
    # all 30 items and torchreid's curves have one length.
    distmat, q_pids, g_pids, q_camids, _ = reid_problem(20, 30, 1, num_ids=5)
    g_camids = np.full(30, 9)
    with pytest.warns(UserWarning, match='quite small, got 30'):
        ours = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    assert len(ours[0]) == 30 and ours[0][-1] == 1
    assert_same(ours, torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids, 50))
    assert 'quite small' in capsys.readouterr().out  # torchreid's own note


def test_valid_gallery_shorter_than_max_rank_stays_at_one():
    # Query 0 loses 2 of the 4 gallery items (same id and camera): its valid
    # list has 2 items, its match at rank 2. torchreid would build a ragged
    # array here; our curve keeps the query at 1 after its match.
    g_pids, g_camids = np.array([1, 1, 1, 2]), np.array([0, 0, 1, 1])
    distmat = np.array([[0.1, 0.2, 0.4, 0.3], [0.5, 0.6, 0.7, 0.1]])
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    with pytest.warns(UserWarning):
        cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=10)
    np.testing.assert_array_equal(cmc, np.float32([0.5, 1, 1, 1]))
    assert mAP == pytest.approx((1 / 2 + 1) / 2)
    with pytest.raises(ValueError):
        torchreid_market(distmat, q_pids, g_pids, q_camids, g_camids, 10)


def test_accepts_tensors_and_lists():
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(30, 100, 2)
    expected = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    assert_same(evaluate_rank(torch.from_numpy(distmat), list(q_pids), torch.from_numpy(g_pids),
                              list(q_camids), g_camids), expected)


@pytest.mark.parametrize('seed', range(2))
def test_cuhk03_metric_equals_torchreid_with_the_same_seed(monkeypatch, seed):
    distmat, q_pids, g_pids, q_camids, g_camids = reid_problem(30, 200, seed)
    distmat = np.round(distmat / 4).astype(np.float32)
    np.random.seed(seed)
    ours = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, use_metric_cuhk03=True)
    monkeypatch.setattr(np, 'bool', bool, raising=False)  # torchreid's code predates NumPy 2
    np.random.seed(seed)
    theirs = TORCHREID_RANK.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids,
                                          use_metric_cuhk03=True, use_cython=False)
    assert len(ours[0]) == len(np.unique(g_pids))  # fewer identities than max_rank
    assert_same(ours, theirs)
    assert not np.array_equal(ours[0], evaluate_rank(distmat, q_pids, g_pids, q_camids,
                                                     g_camids, max_rank=len(ours[0]))[0])


def test_no_query_with_a_match_is_an_error():
    distmat = np.ones((2, 3))
    with pytest.raises(ValueError, match='none of the 2 queries has a true match'):
        evaluate_rank(distmat, [1, 2], [1, 3, 3], [0, 0], [0, 1, 1], max_rank=3)


@pytest.mark.parametrize('args, message', [
    ((np.ones((2, 3)), [1, 2], [1, 2, 3], [0], [0, 1, 1]), 'q_camids has 1 entries'),
    ((np.ones((2, 3)), [1, 2], [1, 2], [0, 0], [0, 1, 1]), 'g_pids has 2 entries'),
    ((np.ones(3), [1], [1, 2, 3], [0], [0, 1, 1]), 'non-empty 2-D'),
    ((np.ones((2, 3), dtype=complex), [1, 2], [1, 2, 3], [0, 0], [0, 1, 1]), 'real numbers'),
])
def test_bad_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        evaluate_rank(*args)


# ---------------------------------------------------------------- attributes

TOY_SCHEMA = AttributeSchema(
    dataset='toy', names=('age', 'hat', 'bag', 'upred', 'upblue', 'upgreen'),
    num_classes=(3, 2, 2, 2, 2, 2),
    colour_groups={'upper_colour': ('upred', 'upblue', 'upgreen')})

X = UNKNOWN
#                      age hat bag red blue green
TOY_TARGET = np.array([[0, 1, 0, 1, 0, 0],
                       [1, 0, X, 0, 1, 0],
                       [2, 0, 1, 0, 0, 0],   # no upper colour: out of that group
                       [X, X, X, X, X, X],   # unknown: out of everything
                       [0, 0, 0, 0, 0, 0]])
TOY_PRED = np.array([[0, 1, 1, 0, 1, 0],
                     [0, 1, 1, 0, 0, 0],
                     [2, 1, 1, 0, 0, 1],
                     [1, 1, 0, 1, 0, 0],
                     [0, 0, 0, 0, 0, 0]])
# P(yes) consistent with TOY_PRED (0.5 reads as "no"); age as class probabilities.
TOY_PROBS = [np.array([[.6, .3, .1], [.5, .4, .1], [.1, .2, .7], [.2, .5, .3], [.8, .1, .1]]),
             np.array([.9, .7, .6, .8, .5]),
             np.array([.8, .9, .7, .1, .2]),
             np.array([.45, .2, .1, .9, .3]),
             np.array([.55, .4, .2, .1, .3]),
             np.array([.1, .3, .8, .2, .1])]


def test_attribute_metrics_by_hand():
    m = attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA)
    # Known labels only: bag is unknown on sample 1, sample 3 is all unknown.
    assert m['accuracy'] == pytest.approx(
        {'age': 3 / 4, 'hat': 2 / 4, 'bag': 2 / 3, 'upred': 3 / 4, 'upblue': 2 / 4,
         'upgreen': 3 / 4})
    # (TP/P + TN/N) / 2; age: mean recall of classes 0 (2/2), 1 (0/1), 2 (1/1);
    # upgreen has no positive: TN/N alone.
    assert m['balanced_accuracy'] == pytest.approx(
        {'age': 2 / 3, 'hat': (1 + 1 / 3) / 2, 'bag': (1 + 1 / 2) / 2, 'upred': (0 + 1) / 2,
         'upblue': (0 + 2 / 3) / 2, 'upgreen': 3 / 4})
    assert m['mean_accuracy'] == pytest.approx((3 / 4 + 2 / 4 + 2 / 3 + 3 / 4 + 2 / 4 + 3 / 4) / 6)
    # upgreen's known labels are all "no": a constant "no" would score 100 %, so it
    # is left out of mA (its balanced accuracy is still reported)
    assert m['mA_excluded'] == ['upgreen']
    assert m['mA'] == pytest.approx((2 / 3 + 2 / 3 + 3 / 4 + 1 / 2 + 1 / 3) / 5)
    assert m['num_classes'] == {'age': 3, 'hat': 2, 'bag': 2, 'upred': 2, 'upblue': 2,
                                'upgreen': 2}
    # Per sample over known binary attributes (P predicted, G true positives):
    # s0 P={hat,bag,blue} G={hat,red}; s1 P={hat} G={blue} (bag unknown);
    # s2 P={hat,bag,green} G={bag}; s4 P=G={} (0/0 = 1); s3 left out.
    assert m['instance_accuracy'] == pytest.approx((1 / 4 + 0 + 1 / 3 + 1) / 4)
    assert m['instance_precision'] == pytest.approx((1 / 3 + 0 + 1 / 3 + 1) / 4)
    assert m['instance_recall'] == pytest.approx((1 / 2 + 0 + 1 + 1) / 4)
    assert m['instance_f1'] == pytest.approx(0.5)  # 2 * (5/12) * (5/8) / (5/12 + 5/8)
    # Colour group scored on s0 (red) and s1 (blue); from hard labels the
    # argmax is blue for s0 and red (first colour, none predicted) for s1.
    assert m['group_accuracy'] == pytest.approx(
        {'age': 3 / 4, 'hat': 2 / 4, 'bag': 2 / 3, 'upper_colour': 0.0})
    assert m['mean_group_accuracy'] == pytest.approx((3 / 4 + 2 / 4 + 2 / 3 + 0) / 4)


def test_a_colour_group_prediction_of_any_positive_colour_is_right():
    # s0 wears red and blue: its predicted colour (blue, from the hard labels
    # and from P(yes) .55) is one of them; s1 wears blue only.
    target = TOY_TARGET.copy()
    target[0, 4] = 1
    # s1's hard labels predict no colour, so the group's first colour (red): wrong
    m = attribute_metrics(TOY_PRED, target, TOY_SCHEMA)
    assert m['group_accuracy']['upper_colour'] == pytest.approx(1 / 2)
    m = attribute_metrics(TOY_PRED, target, TOY_SCHEMA, probs=TOY_PROBS)
    assert m['group_accuracy']['upper_colour'] == pytest.approx(1.0)
    # green, predicted from P(yes) of a sample wearing red and blue, is wrong
    probs = [p.copy() for p in TOY_PROBS]
    probs[5][0] = 0.99
    m = attribute_metrics(TOY_PRED, target, TOY_SCHEMA, probs=probs)
    assert m['group_accuracy']['upper_colour'] == pytest.approx(1 / 2)


def test_colour_groups_use_probabilities_when_given():
    # s0: P(yes) red .45 < blue .55 -> blue (wrong); s1: blue .4 is highest -> right.
    m = attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA, probs=TOY_PROBS)
    assert m['group_accuracy']['upper_colour'] == pytest.approx(1 / 2)
    assert m['accuracy'] == attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA)['accuracy']


def test_labels_derived_from_probabilities():
    from_probs = attribute_metrics(None, TOY_TARGET, TOY_SCHEMA, probs=TOY_PROBS)
    given = attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA, probs=TOY_PROBS)
    assert from_probs == given
    # One [N, m] array of P(yes): the age column is ignored.
    columns = np.stack([np.zeros(5)] + TOY_PROBS[1:], axis=1)
    assert attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA, probs=columns) == given
    with pytest.raises(ValueError, match=r"multi-class attributes \['age'\]"):
        attribute_metrics(None, TOY_TARGET, TOY_SCHEMA, probs=columns)


def test_market_reports_the_annotators_twelve_groups():
    n = 4
    target = np.zeros((n, len(MARKET_SCHEMA)), dtype=int)
    probs = np.full((n, len(MARKET_SCHEMA)), 0.1)
    lower = [MARKET_SCHEMA.index(c) for c in ('downblack', 'downblue', 'downbrown')]
    target[[0, 1, 2], lower] = 1                 # truth: black, blue, brown; none for s3
    probs[0, lower[0]] = 0.9                     # right
    probs[1, lower[1]], probs[1, lower[2]] = 0.4, 0.6  # brown beats blue: wrong
    probs[2, lower[2]] = 0.7                     # right
    pred = (probs > 0.5).astype(int)
    m = attribute_metrics(pred, target, MARKET_SCHEMA, probs=probs)
    assert set(m['group_accuracy']) == {
        'gender', 'hair', 'age', 'up', 'down', 'clothes', 'hat', 'backpack', 'bag',
        'handbag', 'upper_colour', 'lower_colour'}
    assert m['group_accuracy']['lower_colour'] == pytest.approx(2 / 3)
    assert np.isnan(m['group_accuracy']['upper_colour'])  # no sample has an upper colour
    assert m['mean_group_accuracy'] == pytest.approx((10 + 2 / 3) / 11)


def test_bad_attribute_labels_are_named():
    pred = TOY_PRED.copy()
    pred[2, 0] = 3
    with pytest.raises(ValueError, match=r"pred\[2, 0\] = 3 is not a label of attribute 'age'"):
        attribute_metrics(pred, TOY_TARGET, TOY_SCHEMA)
    with pytest.raises(ValueError, match=r'must have shape \[N, 6\]'):
        attribute_metrics(TOY_PRED[:, :5], TOY_TARGET, TOY_SCHEMA)


def test_attribute_table_lists_every_figure_in_percent():
    table = format_attribute_table(attribute_metrics(TOY_PRED, TOY_TARGET, TOY_SCHEMA))
    lines = table.splitlines()
    assert any(line.split() == ['age', '75.00', '66.67'] for line in lines)
    assert any(line.split() == ['39.58', '41.67', '62.50', '50.00'] for line in lines)
    assert any(line.split() == ['upper_colour', '0.00'] for line in lines)
    assert any(line.split() == ['upgreen', '75.00', '75.00', '*'] for line in lines)
    assert 'age' in table and not any(line.split()[-1:] == ['*'] and line.split()[0] != 'upgreen'
                                      for line in lines)
    assert '* one class only in the test labels: left out of mA (1 of 6 attributes)' in lines


def test_a_constant_predictor_does_not_gain_mA_from_single_class_attributes():
    # three attributes; the last is never positive in the test labels
    schema = AttributeSchema('toy', ('a', 'b', 'never'), (2, 2, 2), {})
    target = np.array([[0, 1, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0]])
    constant = np.zeros_like(target)  # "no" for everything
    m = attribute_metrics(constant, target, schema)
    # a, b: (TP/P + TN/N) / 2 = (0 + 1) / 2; "never": 100 %, but left out
    assert m['balanced_accuracy'] == {'a': 0.5, 'b': 0.5, 'never': 1.0}
    assert m['mA_excluded'] == ['never'] and m['mA'] == 0.5
