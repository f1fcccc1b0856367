"""test.attr_rerank_weight: the attribute re-ranking inside torchreid's evaluation."""
import contextlib
import io

import numpy as np
import pytest
import torch
from alfo_run import toy_config, toy_engine

from alfo_torchreid.engine import engine as engine_module
from alfo_torchreid.evaluation.metrics import evaluate_rank
from alfo_torchreid.utils.errors import ConfigError


@pytest.fixture(scope='module')
def engine(toy_root, alfo_weights, module_tmp):
    """ALFO's engine on the toy data, attr_rerank_weight 0 (tests change it)."""
    return toy_engine(toy_config(toy_root, module_tmp('rerank')), alfo_weights)


@pytest.fixture(scope='module')
def independent(engine):
    """Features, attribute probabilities, pids and cameras of the toy query and
    gallery, from the model's own eval-mode calls, not from the engine's test."""
    out = {}
    with torch.no_grad():
        for split, loader in engine.test_loader['market1501_attr'].items():
            batches = list(loader)
            images = torch.cat([b['img'] for b in batches])
            features, probs = engine.model.features_and_attributes(images)
            out[split] = {
                'features': features.double().numpy(),
                'probs': [p.double().numpy() for p in probs],
                'pids': np.concatenate([b['pid'].numpy() for b in batches]),
                'camids': np.concatenate([b['camid'].numpy() for b in batches]),
            }
    return out


def recorded_test(engine, monkeypatch):
    """Runs engine.test(); returns the distance matrices torchreid computed
    (given to ``ranking_distances``) and those the evaluator received."""
    given, ranked = [], []
    original = engine.ranking_distances

    def record_given(distmat, query, gallery):
        given.append(np.array(distmat))
        return original(distmat, query, gallery)

    def record_ranked(distmat, *args, **kwargs):
        ranked.append(np.array(distmat))
        return evaluate_rank(distmat, *args, **kwargs)

    monkeypatch.setattr(engine, 'ranking_distances', record_given)
    monkeypatch.setattr(engine_module, 'evaluate_rank', record_ranked)
    with contextlib.redirect_stdout(io.StringIO()):
        engine.test()
    return given, ranked


def plain_distances(independent):
    q, g = independent['query']['features'], independent['gallery']['features']
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)  # torchreid's "euclidean"


def assert_close(seen, expected, independent):
    # torchreid computes |q|^2 + |g|^2 - 2 q.g in float32: errors scale with the norms
    norms = [(independent[s]['features'] ** 2).sum(1).max() for s in ('query', 'gallery')]
    np.testing.assert_allclose(seen, expected, rtol=0, atol=1e-5 * sum(norms))


def disagreement_by_hand(independent):
    """Mean over attributes of the total-variation distance, by explicit loops."""
    queries, gallery = independent['query']['probs'], independent['gallery']['probs']
    num_q, num_g = len(queries[0]), len(gallery[0])
    out = np.zeros((num_q, num_g))
    for i in range(num_q):
        for j in range(num_g):
            out[i, j] = np.mean([0.5 * np.abs(q[i] - g[j]).sum()
                                 for q, g in zip(queries, gallery)])
    return out


def test_weight_zero_leaves_torchreids_distances(engine):
    assert engine.attr_rerank_weight == 0
    distmat = np.ones((2, 3), dtype=np.float32)
    assert engine.ranking_distances(distmat, None, None) is distmat


def test_positive_weight_adds_the_attribute_term(engine, independent, monkeypatch):
    weight = 0.5
    monkeypatch.setattr(engine, 'attr_rerank_weight', weight)
    (given,), (ranked,) = recorded_test(engine, monkeypatch)
    plain = plain_distances(independent)
    assert_close(given, plain, independent)  # torchreid's own distances came in
    disagreement = disagreement_by_hand(independent)
    assert disagreement.std() > 0.01  # the centred heads predict different attributes
    # torch.median: the lower middle value of each row
    median = np.sort(plain, axis=1)[:, (plain.shape[1] - 1) // 2]
    expected = plain + weight * median[:, None] * disagreement
    assert_close(ranked, expected, independent)
    term = weight * median[:, None] * disagreement
    assert term.max() > 100 * (np.abs(ranked - expected).max() + 1)  # not lost in rounding
    q, g = independent['query'], independent['gallery']
    cmc, mAP = evaluate_rank(ranked, q['pids'], g['pids'], q['camids'], g['camids'])
    assert engine.results['market1501_attr']['mAP'] == pytest.approx(mAP, abs=1e-9)
    assert engine.results['market1501_attr']['rank1'] == pytest.approx(cmc[0], abs=1e-9)


@pytest.mark.parametrize('opts, message', [
    (['test.attr_rerank_weight', '-1'], 'test.attr_rerank_weight must be >= 0, got -1.0'),
    (['test.attr_rerank_weight', '1', 'model.name', 'pcb_p6'],
     'test.attr_rerank_weight 1.0 needs predicted attributes'),
    (['test.attr_rerank_weight', '1', 'alfo.local_branch', 'False'],
     'test.attr_rerank_weight 1.0 needs predicted attributes'),
])
def test_bad_weights_are_refused(toy_root, tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        toy_config(toy_root, tmp_path, *opts)
