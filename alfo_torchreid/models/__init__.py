"""ALFO's models and their registration into torchreid's model factory."""
from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA
from alfo_torchreid.models.alfo import ALFO, ALFOOutputs, StripeAttributeHeads
from alfo_torchreid.models.neck import NECKS, BNNeck, ResNet50BNNeck
from alfo_torchreid.models.stripes import StripeGeometry, overlapping_stripes, pool_stripes
from alfo_torchreid.utils import compat


def alfo_market(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs):
    """ALFO with Market-1501_attribute's 27 attributes, in torchreid's factory
    signature. ``use_gpu`` is accepted for torchreid's ``build_model`` and
    unused (the engine places the model); ``kwargs`` go to :class:`ALFO`."""
    return ALFO(num_classes, schema=MARKET_SCHEMA, loss=loss, pretrained=pretrained, **kwargs)


def alfo_duke(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs):
    """ALFO with DukeMTMC-attribute's 23 attributes; as :func:`alfo_market` otherwise."""
    return ALFO(num_classes, schema=DUKE_SCHEMA, loss=loss, pretrained=pretrained, **kwargs)


def resnet50_bnneck(num_classes, loss='softmax', pretrained=True, use_gpu=True, **kwargs):
    """The strong baseline's ResNet-50 with a BNNeck (:class:`ResNet50BNNeck`,
    last stride 1), in torchreid's factory signature; ``kwargs`` go to it."""
    return ResNet50BNNeck(num_classes, loss=loss, pretrained=pretrained, **kwargs)


MODELS = {'alfo': alfo_market, 'alfo_duke': alfo_duke, 'resnet50_bnneck': resnet50_bnneck}


def model_name(schema):
    """The name in :data:`MODELS` of an ALFO with ``schema``'s heads
    (``'alfo'`` for a schema of neither dataset: the name of any ALFO)."""
    return 'alfo_duke' if schema == DUKE_SCHEMA else 'alfo'


def register():
    """Adds :data:`MODELS` to torchreid's model factory, so that
    ``torchreid.models.build_model('alfo', ...)`` builds ALFO and
    ``show_avai_models()`` lists it. Idempotent."""
    compat.model_factory().update(MODELS)


__all__ = ['ALFO', 'ALFOOutputs', 'BNNeck', 'NECKS', 'ResNet50BNNeck', 'StripeAttributeHeads',
           'StripeGeometry', 'MODELS', 'alfo_market', 'alfo_duke', 'model_name', 'resnet50_bnneck',
           'overlapping_stripes', 'pool_stripes', 'register']
