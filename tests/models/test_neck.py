"""BNNeck (alfo_torchreid.models.neck) by hand: which feature the identity
classifier, the triplet and center losses and the evaluator read, in the
strong baseline (resnet50_bnneck) and in ALFO with ``neck='bnneck'``."""
import pytest
import torch
import torch.nn.functional as F
import torchreid

import alfo_torchreid  # noqa: F401  (registers resnet50_bnneck)
from alfo_torchreid import config
from alfo_torchreid.models import ALFO, NECKS, BNNeck
from alfo_torchreid.utils.errors import ConfigError

B, N = 6, 5
EPS = 1e-5  # BatchNorm1d's
# float32 sums over 2048 channels of values ~1: a few ulps of their size
ATOL = 1e-4


def images():
    torch.manual_seed(0)
    return torch.randn(B, 3, 64, 32)


def pooled(model, x):
    """``f_t`` by hand: the average of the 2048-channel map over its positions."""
    return model.featuremaps(x).mean(dim=(2, 3))


def batch_normalised(f, neck):
    """The neck's training-mode output by hand: batch mean and biased variance,
    scaled by its weight, no shift."""
    mean, var = f.mean(0), f.var(0, unbiased=False)
    return (f - mean) / torch.sqrt(var + EPS) * neck.weight


def running_normalised(f, neck):
    """The neck's eval-mode output by hand: running statistics."""
    return (f - neck.norm.running_mean) / torch.sqrt(neck.norm.running_var + EPS) * neck.weight


def strong_baseline(loss='triplet'):
    torch.manual_seed(1)
    return torchreid.models.build_model('resnet50_bnneck', N, loss=loss, pretrained=False)


def test_baseline_is_registered_with_last_stride_1():
    model = strong_baseline()
    assert 'resnet50_bnneck' in torchreid.models.__dict__['__model_factory']
    assert model.layer4[0].conv2.stride == (1, 1)  # last stride 1, as BoT


def test_classifier_has_no_bias_and_neck_shift_is_frozen():
    for model in (strong_baseline(), ALFO(N, num_parts=2, neck='bnneck')):
        assert model.classifier.bias is None
        names = dict(model.named_parameters())
        assert 'neck.weight' in names and 'neck.bias' not in names
        # torchreid's loop opens every parameter at each epoch: the shift is no parameter
        torchreid.utils.open_all_layers(model)
        assert dict(model.named_buffers())['neck.bias'].eq(0).all()


def test_baseline_train_paths():
    model = strong_baseline().train()
    x = images()
    with torch.no_grad():
        f_t = pooled(model, x)
        logits, feature = model(x)
    # the triplet (and center) loss reads f_t, before the neck
    torch.testing.assert_close(feature, f_t, atol=ATOL, rtol=0)
    # the classifier reads f_i, after the neck, and has no bias
    f_i = batch_normalised(f_t, model.neck)
    torch.testing.assert_close(logits, f_i @ model.classifier.weight.T, atol=ATOL, rtol=0)


def test_baseline_softmax_returns_logits_only():
    model = strong_baseline('softmax').train()
    with torch.no_grad():
        assert model(images()).shape == (B, N)


def test_baseline_evaluator_reads_feature_after_neck():
    model = strong_baseline()
    model.neck.norm.running_mean.uniform_(-1, 1)  # statistics as training leaves them
    model.neck.norm.running_var.uniform_(0.5, 2)
    model.eval()
    x = images()
    with torch.no_grad():
        expected = running_normalised(pooled(model, x), model.neck)
        torch.testing.assert_close(model(x), expected, atol=ATOL, rtol=0)


def test_alfo_paths_with_bnneck():
    torch.manual_seed(2)
    model = ALFO(N, num_parts=2, neck='bnneck').train()
    x = images()
    with torch.no_grad():
        f_t = pooled(model, x)
        out = model(x)
        torch.testing.assert_close(out.features, f_t, atol=ATOL, rtol=0)  # triplet's
        f_i = batch_normalised(f_t, model.neck)
        torch.testing.assert_close(out.id_logits, f_i @ model.classifier.weight.T,
                                   atol=ATOL, rtol=0)
        model.eval()
        retrieval = running_normalised(pooled(model, x), model.neck)
        torch.testing.assert_close(model(x), retrieval, atol=ATOL, rtol=0)
        # the evaluator's extraction (features and attributes in one pass) reads the same
        features, _ = model.features_and_attributes(x)
        torch.testing.assert_close(features, retrieval, atol=ATOL, rtol=0)


def test_alfo_global_plus_local_normalises_the_feature_after_neck():
    torch.manual_seed(3)
    model = ALFO(N, num_parts=2, neck='bnneck', feature='global+local').eval()
    x = images()
    with torch.no_grad():
        out = model(x)
        whole = running_normalised(pooled(model, x), model.neck)
        torch.testing.assert_close(out[:, :2048], F.normalize(whole, dim=1), atol=ATOL, rtol=0)


def test_alfo_without_neck_is_unchanged():
    model = ALFO(N, num_parts=2)
    assert model.neck is None and model.classifier.bias is not None


def test_bad_neck_and_neck_without_global_branch_are_refused():
    with pytest.raises(ConfigError, match='neck must be one of'):
        ALFO(N, num_parts=2, neck='bn')
    with pytest.raises(ConfigError, match='needs the global branch'):
        ALFO(N, num_parts=2, neck='bnneck', global_branch=False)


def test_the_config_offers_the_necks_the_models_build():
    assert config.NECKS is NECKS  # one list, not a copy that could drift


def test_neck_trains_its_scale_only():
    neck = BNNeck(4)
    optimizer = torch.optim.Adam(neck.parameters(), lr=0.1, weight_decay=5e-4)
    neck(torch.randn(8, 4)).pow(3).sum().backward()
    optimizer.step()
    assert not torch.equal(neck.weight, torch.ones(4))
    assert neck.bias.eq(0).all()
