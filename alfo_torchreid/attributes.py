"""Pedestrian attribute schemas of Market-1501_attribute and DukeMTMC-attribute.

An :class:`AttributeSchema` fixes the order of the attributes that every label
vector, classifier head and metric of this package follows. Labels are 0-based:
the annotation files store 1/2 (no/yes) and Market's age 1..4; here they are
0/1 and 0..3, and -1 means "unknown" (junk and distractor images).
"""
from dataclasses import dataclass
from typing import Dict, Tuple

UNKNOWN = -1

MARKET_UPPER_COLOURS = ('upblack', 'upwhite', 'upred', 'uppurple', 'upyellow',
                        'upgray', 'upblue', 'upgreen')
MARKET_LOWER_COLOURS = ('downblack', 'downwhite', 'downpink', 'downpurple',
                        'downyellow', 'downgray', 'downblue', 'downgreen',
                        'downbrown')
DUKE_UPPER_COLOURS = ('upblack', 'upwhite', 'upred', 'uppurple', 'upgray',
                      'upblue', 'upgreen', 'upbrown')
DUKE_LOWER_COLOURS = ('downblack', 'downwhite', 'downred', 'downgray',
                      'downblue', 'downgreen', 'downbrown')


@dataclass(frozen=True)
class AttributeSchema:
    """The attributes of one annotation, in a fixed order.

    Attributes:
        dataset: short name of the annotation (``'market1501'``, ``'dukemtmcreid'``).
        names: attribute names, in the order of label vectors and model heads.
        num_classes: number of classes of each attribute (2 for binary ones).
        colour_groups: the annotators' one-of-k groups, e.g.
            ``{'upper_colour': ('upblack', ...)}``; each group is evaluated as one
            argmax prediction in the annotators' protocol.
    """
    dataset: str
    names: Tuple[str, ...]
    num_classes: Tuple[int, ...]
    colour_groups: Dict[str, Tuple[str, ...]]

    def __post_init__(self):
        if len(self.names) != len(self.num_classes):
            raise ValueError(
                f'{len(self.names)} attribute names but {len(self.num_classes)} class counts')
        for group, members in self.colour_groups.items():
            unknown = [m for m in members if m not in self.names]
            if unknown:
                raise ValueError(f'colour group {group!r} names unknown attributes {unknown}')

    def __len__(self):
        return len(self.names)

    def __hash__(self):
        return hash((self.dataset, self.names, self.num_classes))

    def index(self, name):
        """Position of attribute ``name`` in label vectors."""
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f'{self.dataset} has no attribute {name!r}; it has {list(self.names)}')

    @property
    def binary(self):
        """Indices of the binary attributes, in order."""
        return tuple(i for i, c in enumerate(self.num_classes) if c == 2)

    @property
    def multiclass(self):
        """Indices of the attributes with more than two classes, in order."""
        return tuple(i for i, c in enumerate(self.num_classes) if c > 2)

    def to_dict(self):
        """A plain-data form, for checkpoints and JSON."""
        return {'dataset': self.dataset, 'names': list(self.names),
                'num_classes': list(self.num_classes),
                'colour_groups': {k: list(v) for k, v in self.colour_groups.items()}}

    @classmethod
    def from_dict(cls, d):
        return cls(d['dataset'], tuple(d['names']), tuple(d['num_classes']),
                   {k: tuple(v) for k, v in d['colour_groups'].items()})


_MARKET_NAMES = ('age', 'backpack', 'bag', 'handbag', 'clothes', 'down', 'up',
                 'hair', 'hat', 'gender') + MARKET_UPPER_COLOURS + MARKET_LOWER_COLOURS

MARKET_SCHEMA = AttributeSchema(
    dataset='market1501',
    names=_MARKET_NAMES,
    # age: young, teenager, adult, old; every other attribute is no/yes.
    num_classes=tuple(4 if n == 'age' else 2 for n in _MARKET_NAMES),
    colour_groups={'upper_colour': MARKET_UPPER_COLOURS,
                   'lower_colour': MARKET_LOWER_COLOURS},
)

_DUKE_NAMES = ('backpack', 'bag', 'handbag', 'boots', 'gender', 'hat', 'shoes',
               'top') + DUKE_LOWER_COLOURS + DUKE_UPPER_COLOURS

DUKE_SCHEMA = AttributeSchema(
    dataset='dukemtmcreid',
    names=_DUKE_NAMES,
    num_classes=(2,) * len(_DUKE_NAMES),
    colour_groups={'upper_colour': DUKE_UPPER_COLOURS,
                   'lower_colour': DUKE_LOWER_COLOURS},
)

SCHEMAS = {s.dataset: s for s in (MARKET_SCHEMA, DUKE_SCHEMA)}
