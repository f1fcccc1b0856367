"""What a checkpoint's weights are: the description every checkpoint carries.

Like timm's pretrained configs, a checkpoint states what is needed to use its
weights the way they were trained, so that no tool relies on the user passing
the right config. Under the key :data:`KEY` a checkpoint holds::

    {'settings': {'model.name': 'alfo', 'alfo.last_stride': 1, ...,
                  'data.height': 256, 'data.width': 128,
                  'data.norm_mean': [...], 'data.norm_std': [...]},
     'normalize_feature': False,   # whether its test L2-normalised features
     'num_classes': 751,           # training identities
     'schema': {...}}              # AttributeSchema.to_dict(); None without attributes

``settings`` are config keys and their values (which keys a model has is the
config's business: :func:`alfo_torchreid.config.described_settings`), so a
difference names the key to change. Checkpoints written before descriptions
existed have none (:func:`of_checkpoint` gives None): the config decides, as
it did then.
"""
from alfo_torchreid.utils.errors import CheckpointError

KEY = 'description'


def describe(settings, num_classes, schema=None, normalize_feature=False):
    """A checkpoint's description.

    Args:
        settings (dict): config key -> value, the model's and its input's.
        num_classes (int): training identities.
        schema: the model's ``AttributeSchema`` (its ``to_dict()`` is stored), or None.
        normalize_feature (bool): whether retrieval L2-normalises the features.
    """
    return {'settings': {key: _plain(value) for key, value in settings.items()},
            'normalize_feature': bool(normalize_feature), 'num_classes': int(num_classes),
            'schema': None if schema is None else schema.to_dict()}


def _plain(value):
    """Lists for tuples (a yacs list and a YAML one compare equal)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def of_checkpoint(checkpoint, fpath=''):
    """The description in a loaded checkpoint, or None for one without.

    Raises:
        CheckpointError: a description that is not one.
    """
    found = checkpoint.get(KEY) if isinstance(checkpoint, dict) else None
    if found is None:
        return None
    if not isinstance(found, dict) or not isinstance(found.get('settings'), dict) or \
            'num_classes' not in found:
        raise CheckpointError(f'checkpoint "{fpath}" has a malformed {KEY!r} (expected a dict '
                              'with "settings" and "num_classes")')
    return found


def differences(described, settings):
    """The keys of ``settings`` (config key -> value) whose value differs from
    the description's: ``[(key, the checkpoint's value, the config's value)]``.
    Keys the description does not hold are not compared (callers give the
    config's values of the description's keys)."""
    saved = described['settings']
    return [(key, saved[key], _plain(value)) for key, value in settings.items()
            if key in saved and saved[key] != _plain(value)]


def format_differences(found):
    """``'data.height 128 (config: 256), data.width 64 (config: 128)'``."""
    return ', '.join(f'{key} {saved!r} (config: {given!r})' for key, saved, given in found)
