"""ALFO: stripe geometry, outputs, per-stripe heads, vote tally, registration."""
import pytest
import torch
import torch.nn.functional as F
import torchreid

from alfo_torchreid import models
from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA
from alfo_torchreid.losses import ALFOLoss
from alfo_torchreid.models import ALFO, overlapping_stripes, pool_stripes
from alfo_torchreid.utils import weights
from alfo_torchreid.utils.errors import ConfigError

B, NUM_IDS = 3, 5
K_MARKET = 4 + 26  # age: 4 logits; 26 binary attributes: 1 logit each


@pytest.fixture(scope='module')
def images():
    return torch.randn(B, 3, 128, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ALFO(NUM_IDS)  # last stride 1: 128x32 images give an 8x2 map


# ---- stripe geometry -----------------------------------------------------------

@pytest.mark.parametrize('H, height, stride, starts', [
    (16, 6, 2, (0, 2, 4, 6, 8, 10)),  # rows 0-5, 2-7, ..., 10-15
    (8, 3, 1, (0, 1, 2, 3, 4, 5)),    # rows 0-2, 1-3, ..., 5-7
    (7, 2, 1, (0, 1, 2, 3, 4, 5)),    # rows 0-1, 1-2, ..., 5-6
    (6, 1, 1, (0, 1, 2, 3, 4, 5)),    # one row each: overlap impossible
    (24, 9, 3, (0, 3, 6, 9, 12, 15)),
])
def test_default_geometry(H, height, stride, starts):
    g = overlapping_stripes(H, 6)
    assert (g.height, g.stride, g.starts) == (height, stride, starts)
    assert g.starts[-1] + g.height == H
    assert g.overlap == height - stride


def test_geometry_overrides_and_other_part_counts():
    assert overlapping_stripes(16, 6, stripe_height=11)[2:] == (11, 1)
    assert overlapping_stripes(16, 6, stripe_stride=3)[2:] == (1, 3)
    assert overlapping_stripes(16, 6, stripe_height=6, stripe_stride=2)[2:] == (6, 2)
    assert overlapping_stripes(16, 4)[2:] == (7, 3)
    assert overlapping_stripes(8, 1)[2:] == (8, 8)


def test_geometry_errors_name_the_height_and_part_count():
    with pytest.raises(ConfigError, match=r'H=5.*num_parts=6'):
        overlapping_stripes(5, 6)
    with pytest.raises(ConfigError, match=r'height 5 and stride None.*H=16.*num_parts=6'):
        overlapping_stripes(16, 6, stripe_height=5)
    with pytest.raises(ConfigError, match=r'height 6 and stride 3.*H=16'):
        overlapping_stripes(16, 6, stripe_height=6, stripe_stride=3)


def test_pool_stripes_averages_the_map_and_each_window():
    fmap = torch.randn(2, 3, 16, 5)
    g = overlapping_stripes(16, 6)
    pooled = pool_stripes(fmap, g)
    naive = [fmap.mean((2, 3))] + [fmap[:, :, s:s + g.height].mean((2, 3)) for s in g.starts]
    assert pooled.shape == (2, 7, 3)
    assert torch.allclose(pooled, torch.stack(naive, dim=1), atol=1e-6)


def test_too_short_feature_map_fails_with_a_clear_error(images):
    # last stride 2 halves the map: 128 rows of input leave 4, too few for 6 stripes
    with pytest.raises(ConfigError, match=r'H=4.*num_parts=6'):
        ALFO(NUM_IDS, last_stride=2).train()(images)


# ---- outputs -------------------------------------------------------------------

@pytest.mark.parametrize('global_branch, local_branch', [(True, True), (True, False),
                                                         (False, True)])
def test_train_outputs_per_branch_switch(images, global_branch, local_branch):
    net = ALFO(NUM_IDS, global_branch=global_branch, local_branch=local_branch).train()
    out = net(images)
    assert (net.global_branch, net.local_branch) == (global_branch, local_branch)
    assert (out.id_logits is None) != global_branch
    assert (out.attr_logits is None) != local_branch
    if global_branch:
        assert out.id_logits.shape == (B, NUM_IDS)
    if local_branch:
        assert out.attr_logits.shape == (B, 6, K_MARKET)
    loss = ALFOLoss(NUM_IDS, net.logit_widths, use_gpu=False)(
        out, torch.arange(B) % NUM_IDS, torch.zeros(B, 27, dtype=torch.long))
    loss.total.backward()
    assert net.conv1.weight.grad is not None


@pytest.mark.parametrize('kwargs, dim', [({}, 2048), ({'feature': 'global+local'}, 7 * 2048),
                                         ({'feature': 'local'}, 6 * 2048),
                                         ({'global_branch': False}, 6 * 2048),
                                         ({'local_branch': False}, 2048)])
def test_eval_feature_dimensions(images, kwargs, dim):
    net = ALFO(NUM_IDS, **kwargs).eval()
    with torch.no_grad():
        assert net(images).shape == (B, dim)


def test_eval_features_by_hand(model, images):
    model.eval()
    with torch.no_grad():
        fmap = model.featuremaps(images)
        whole = fmap.mean((2, 3))
        stripes = [F.normalize(fmap[:, :, s:s + 3].mean((2, 3)), dim=1) for s in range(6)]
        assert torch.allclose(model(images), whole, atol=1e-5)
        model.feature = 'global+local'
        want = torch.cat([F.normalize(whole, dim=1)] + stripes, dim=1)
        assert torch.allclose(model(images), want, atol=1e-5)
        model.feature = 'global'


def test_duke_schema_and_stride_2():
    net = ALFO(NUM_IDS, schema=DUKE_SCHEMA, last_stride=2).train()
    out = net(torch.randn(2, 3, 192, 32))  # stride 2: 6x1 map, 6 one-row stripes
    assert out.attr_logits.shape == (2, 6, 23)


@pytest.mark.parametrize('kwargs, message', [
    ({'last_stride': 3}, r'last_stride must be one of \(1, 2\), got 3'),
    ({'feature': 'parts'}, r"feature must be one of .*'parts'"),
    ({'attr_pred': 'max'}, r"attr_pred must be one of .*'max'"),
    ({'loss': 'arcface'}, r"loss must be one of \('softmax', 'triplet'\), got 'arcface'"),
    ({'global_branch': False, 'local_branch': False}, 'both off'),
])
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ALFO(NUM_IDS, **kwargs)


def test_no_local_branch_has_no_attribute_methods(images):
    net = ALFO(NUM_IDS, local_branch=False)
    assert net.global_branch and not net.local_branch
    assert 'vote_counts' not in net.state_dict()
    with pytest.raises(ConfigError, match='local_branch=False'):
        net.predict_attributes(images)


# ---- per-stripe heads ----------------------------------------------------------

def test_batched_heads_equal_a_per_stripe_per_attribute_loop(model, images):
    model.eval()
    with torch.no_grad():
        fmap = model.featuremaps(images)
        batched = model.attribute_logits(images)
    weight, bias = model.attribute_heads.weight, model.attribute_heads.bias
    g = overlapping_stripes(8, 6)
    for p, start in enumerate(g.starts):
        stripe = fmap[:, :, start:start + g.height].mean((2, 3))  # [B, 2048]
        column = 0
        for width in model.logit_widths:
            cols = slice(column, column + width)
            logits_pj = F.linear(stripe, weight[p, :, cols].t(), bias[p, cols])
            assert torch.allclose(batched[:, p, cols], logits_pj, atol=1e-5)
            column += width


def test_stripe_heads_have_their_own_parameters(images):
    net = ALFO(NUM_IDS).train()
    weight = net.attribute_heads.weight  # [P, C, K]
    for p in range(1, 6):
        assert not torch.equal(weight[0], weight[p])
    attr_logits = net(images).attr_logits
    attr_logits[:, 2].sum().backward()  # a loss on stripe 2 only
    grad = weight.grad
    assert grad[2].abs().sum() > 0
    assert all((grad[p] == 0).all() for p in range(6) if p != 2)


# ---- vote tally, attribute prediction, state dict --------------------------------

def test_record_votes_and_winning_stripes():
    net = ALFO(NUM_IDS, schema=DUKE_SCHEMA)
    assert (net.winning_stripes() == -1).all()  # nothing voted yet
    winners = torch.full((23,), -1)
    winners[:3] = torch.tensor([4, 1, 5])
    net.record_votes(winners)
    winners[:3] = torch.tensor([2, 1, 2])
    net.record_votes(winners)
    counts = net.vote_counts
    assert counts[0].tolist() == [0, 0, 1, 0, 1, 0]
    assert counts[1].tolist() == [0, 2, 0, 0, 0, 0]
    assert counts[3:].sum() == 0
    assert net.winning_stripes()[:4].tolist() == [2, 1, 2, -1]  # tie 2 vs 4 -> 2


def test_attribute_prediction_rules(model, images):
    model.eval()
    with torch.no_grad():
        stripe_logits = model.attribute_logits(images)  # [B, 6, 30]
        model.vote_counts.zero_()
        model.vote_counts[:, 3] = 1
        model.vote_counts[0, 5] = 2  # age: stripe 5; every other attribute: stripe 3
        model.vote_counts[26] = 0    # never voted on: the mean rule
        probs = model.attribute_probabilities(images)
        labels = model.predict_attributes(images)
        model.attr_pred = 'mean'
        mean_probs = model.attribute_probabilities(images)
        model.attr_pred = 'voted'
    assert len(probs) == 27 and probs[0].shape == (B, 4) and probs[1].shape == (B, 2)
    assert torch.allclose(probs[0], torch.softmax(stripe_logits[:, 5, :4], 1), atol=1e-6)
    yes = torch.sigmoid(stripe_logits[:, 3, 4])  # attribute 1 (backpack): column 4
    assert torch.allclose(probs[1], torch.stack((1 - yes, yes), 1), atol=1e-6)
    yes_mean = torch.sigmoid(stripe_logits[:, :, 29]).mean(1)
    assert torch.allclose(probs[26][:, 1], yes_mean, atol=1e-6)
    assert torch.allclose(mean_probs[0], torch.softmax(stripe_logits[:, :, :4], 2).mean(1),
                          atol=1e-6)
    with torch.no_grad():
        feature, probs_one_pass = model.features_and_attributes(images)
        assert torch.allclose(feature, model(images), atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(probs_one_pass, probs))
    assert labels.dtype == torch.long and labels.shape == (B, 27)
    assert torch.equal(labels[:, 0], probs[0].argmax(1))
    assert torch.equal(labels[:, 1], (yes > 0.5).long())


def test_state_dict_round_trip_keeps_tally_and_predictions(model, images, tmp_path):
    model.vote_counts.zero_()
    winners = torch.arange(27) % 6
    for _ in range(3):
        model.record_votes(winners)
    model.eval()
    with torch.no_grad():
        before = model.predict_attributes(images), model.attribute_probabilities(images)
    torch.save(model.state_dict(), tmp_path / 'alfo.pth')
    fresh = ALFO(NUM_IDS)
    fresh.load_state_dict(torch.load(tmp_path / 'alfo.pth', weights_only=True))
    assert torch.equal(fresh.winning_stripes(), winners)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh.predict_attributes(images), before[0])
        assert all(torch.allclose(a, b) for a, b in
                   zip(fresh.attribute_probabilities(images), before[1]))


# ---- torchreid integration ---------------------------------------------------------

def test_build_through_torchreid_factory(capsys):
    models.register()
    net = torchreid.models.build_model('alfo', NUM_IDS, loss='softmax', pretrained=False)
    assert isinstance(net, ALFO) and net.schema == MARKET_SCHEMA
    assert net.classifier.out_features == NUM_IDS
    duke = torchreid.models.build_model('alfo_duke', NUM_IDS, pretrained=False)
    assert duke.schema == DUKE_SCHEMA
    torchreid.models.show_avai_models()
    listed = capsys.readouterr().out
    assert "'alfo'" in listed and "'alfo_duke'" in listed


def test_pretrained_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    source = torchreid.models.build_model('resnet50', NUM_IDS, pretrained=False)
    source.layer4[2].bn3.running_mean.uniform_()
    torch.save({'state_dict': source.state_dict(), 'epoch': 3}, tmp_path / 'reid.pth')
    torch.manual_seed(2)
    net = ALFO(NUM_IDS, last_stride=2, pretrained=str(tmp_path / 'reid.pth'))
    assert torch.equal(net.conv1.weight, source.conv1.weight)
    assert torch.equal(net.layer4[2].bn3.running_mean, source.layer4[2].bn3.running_mean)
    # the identity classifier fits by shape but belongs to another training set
    assert not torch.equal(net.classifier.weight, source.classifier.weight)


def test_pretrained_true_is_imagenet_through_the_weights_module(monkeypatch, tmp_path):
    imagenet = torchreid.models.build_model('resnet50', 1000, pretrained=False).state_dict()
    imagenet = {k.replace('classifier', 'fc'): v for k, v in imagenet.items()}
    torch.save(imagenet, tmp_path / 'resnet50-19c8e357.pth')
    specs = []
    monkeypatch.setattr(weights, 'resolve',
                        lambda spec: specs.append(spec) or str(tmp_path / 'resnet50-19c8e357.pth'))
    net = ALFO(NUM_IDS, pretrained=True)
    assert specs == ['imagenet']
    assert torch.equal(net.layer3[0].conv2.weight, imagenet['layer3.0.conv2.weight'])
