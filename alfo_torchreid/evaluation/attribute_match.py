"""People compared by their predicted attributes: names for the predictions,
the ``--where`` filter of a search, and the attribute-disagreement term that
re-ranks a re-ID ranking.

Predicted attributes travel as one float array ``[N, K]``: every attribute's
class probabilities, concatenated in schema order (``K = sum(schema.num_classes)``;
a binary attribute's two columns are P(no), P(yes)). The gallery index,
``tools/predict.py`` and the exported model's second output all use this
layout. A colour group (``upcolour``, ``downcolour``: see
:meth:`~alfo_torchreid.data.attributes.AttributeSchema.colour_forms`) reads as one
attribute whose predicted colour is the argmax of its colours' P(yes).
"""
import torch

from alfo_torchreid.utils.errors import SearchError


def split_attributes(probs, schema):
    """``[N, K]`` -> list of ``m`` tensors ``[N, c_j]``, schema order."""
    probs = torch.as_tensor(probs)
    if probs.ndim != 2 or probs.shape[1] != sum(schema.num_classes):
        raise SearchError(f'attribute probabilities of shape {tuple(probs.shape)} do not fit '
                          f'the {schema.dataset} schema ([N, {sum(schema.num_classes)}])')
    return probs.split(list(schema.num_classes), dim=1)


def predicted(probs, schema):
    """The predicted class of every attribute and colour form.

    Returns:
        dict: name -> (class index ``[N]`` long, its probability ``[N]``),
        the schema's attributes in order, then its colour forms (index into
        the form's colours, probability = that colour's P(yes)).
    """
    per_attribute = split_attributes(probs, schema)
    out = {name: _argmax(p) for name, p in zip(schema.names, per_attribute)}
    for form, colours in schema.colour_forms().items():
        yes = torch.stack([per_attribute[schema.index(m)][:, 1] for m in colours.values()], 1)
        out[form] = _argmax(yes)
    return out


def _argmax(p):
    best = p.max(dim=1)
    return best.indices, best.values


def choices(schema):
    """name -> the class names it can take: every attribute, then every colour form."""
    out = {name: schema.class_names(name) for name in schema.names}
    out.update((form, tuple(colours)) for form, colours in schema.colour_forms().items())
    return out


def named_predictions(probs, schema):
    """One dict per row of ``probs`` ``[N, K]``: name -> (class name, probability),
    as in ``{'gender': ('female', 0.93), 'upcolour': ('red', 0.81), ...}``."""
    names = choices(schema)
    columns = {name: (index.tolist(), p.tolist())
               for name, (index, p) in predicted(probs, schema).items()}
    return [{name: (names[name][index[row]], p[row]) for name, (index, p) in columns.items()}
            for row in range(len(probs))]


def named_labels(labels, schema):
    """True labels as :func:`named_predictions` gives predictions: one dict per
    row of ``labels`` ``[N, m]`` (schema order, ``-1``: unknown), name ->
    (class name, 1.0), or ``('?', 0.0)`` for an unknown label. A colour form
    takes the first of its colours labelled yes; ``('none', 1.0)`` when all
    are known and none is, ``('?', 0.0)`` when none is and some are unknown."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1, len(schema))
    one_hot = torch.cat([torch.nn.functional.one_hot(labels[:, a].clamp(min=0), c).float()
                         for a, c in enumerate(schema.num_classes)], dim=1)
    named = named_predictions(one_hot, schema)
    for row, names in zip(labels, named):
        names.update((name, ('?', 0.0)) for name, label in zip(schema.names, row.tolist())
                     if label < 0)
        for form, colours in schema.colour_forms().items():
            members = row[[schema.index(m) for m in colours.values()]]
            if not (members == 1).any():
                names[form] = ('none', 1.0) if (members >= 0).all() else ('?', 0.0)
    return named


def format_prediction(name, prediction):
    """``'gender: female 0.93'``."""
    return f'{name}: {prediction[0]} {prediction[1]:.2f}'


def parse_where(text, schema):
    """Parses a filter ``"gender=female,backpack=yes,upcolour=red"``.

    Names are the schema's attributes (``upred=yes``) and its colour forms
    (``upcolour=red``); values are their class names (:func:`choices`).

    Returns:
        list of (name, class index) pairs, all of which must hold.

    Raises:
        SearchError: one line naming the bad condition and listing the valid ones.
    """
    valid = choices(schema)
    conditions = []
    for condition in filter(None, (c.strip() for c in text.split(','))):
        name, sep, value = (part.strip() for part in condition.partition('='))
        if not sep or name not in valid or value not in valid[name]:
            reason = ('is not NAME=VALUE' if not sep else
                      f'has no attribute "{name}"' if name not in valid else
                      f'gives "{name}" the value "{value}"')
            listing = ', '.join(f'{n}={"|".join(v)}' for n, v in valid.items())
            raise SearchError(f'--where "{text}" {reason}; the {schema.dataset} schema has '
                              f'{listing}')
        conditions.append((name, valid[name].index(value)))
    if not conditions:
        raise SearchError(f'--where "{text}" holds no condition; expected NAME=VALUE pairs '
                          'separated by commas, e.g. "gender=female,upcolour=red"')
    return conditions


def where_mask(conditions, probs, schema):
    """``[N]`` bool: the rows of ``probs`` ``[N, K]`` whose predictions meet
    every condition of :func:`parse_where`."""
    labels = predicted(probs, schema)
    mask = torch.ones(len(probs), dtype=torch.bool)
    for name, value in conditions:
        mask &= labels[name][0] == value
    return mask


def attribute_disagreement(query_probs, gallery_probs, schema):
    """How much two people's predicted attributes disagree.

    ``A(q, g) = (1/m) * sum_j TV(p_q^j, p_g^j)``, the mean over the ``m``
    attributes of the total-variation distance ``TV(p, r) = 1/2 sum_c |p_c - r_c|``
    between their class probabilities: 0 when the predictions are the same,
    1 when both are certain and differ on every attribute.

    Args:
        query_probs: ``[Q, K]``; gallery_probs: ``[G, K]`` (module layout).

    Returns:
        float32 tensor ``[Q, G]`` in [0, 1].
    """
    total = 0
    for q, g in zip(split_attributes(query_probs, schema), split_attributes(gallery_probs, schema)):
        total = total + torch.cdist(q.float(), g.float(), p=1)
    return total / (2 * len(schema))


def attribute_reranked(distances, disagreement, weight, scale=None):
    """Re-ID distances re-ranked by attribute disagreement.

    ``D'(q, g) = D(q, g) + weight * s_q * A(q, g)``, with ``A`` from
    :func:`attribute_disagreement` and ``s_q`` the query's median re-ID distance
    to the gallery (``torch.median``: the lower middle value). So ``weight = 1``
    moves an item whose attributes disagree completely back by the query's
    typical distance, whatever the distances' scale (squared Euclidean, cosine,
    normalised or not); 0 leaves the ranking as it is.

    Args:
        distances: ``[Q, G]`` re-ID distances (tensor or numpy array).
        disagreement: ``[Q, G]``.
        weight (float): >= 0.
        scale: ``[Q]`` the ``s_q``; None: the median of each row of
            ``distances``, right when they cover the whole gallery.

    Returns:
        ``[Q, G]`` tensor of ``distances``' dtype.
    """
    distances = torch.as_tensor(distances)
    if scale is None:
        scale = distances.median(dim=1).values
    scale = torch.as_tensor(scale, dtype=distances.dtype).reshape(-1, 1)
    return distances + weight * scale * disagreement.to(distances.dtype)
