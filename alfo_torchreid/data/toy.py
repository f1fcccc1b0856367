"""A small synthetic Market-1501 / DukeMTMC-reID, the embedded default dataset.

:func:`make_toy_dataset` writes a tree that torchreid's own ``Market1501`` and
``DukeMTMCreID`` classes read unchanged, with the real folder layout, file
names and id conventions, and an attribute annotation ``.mat`` with the
structure of ``market_attribute.mat`` / ``duke_attribute.mat``::

    root/market1501/Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}/
        0002_c1s1_000451_03.jpg        pid, camera, sequence, frame, box
    root/market1501/market_attribute.mat
    root/dukemtmc-reid/DukeMTMC-reID/{bounding_box_train,bounding_box_test,query}/
        0001_c2_f0046182.jpg           pid, camera, frame
    root/dukemtmc-reid/duke_attribute.mat

Id conventions copied from the real sets:
  * Market: train and test ids are disjoint 4-digit ids interleaved in
    1..1501; ``bounding_box_test`` also holds pid ``0000`` images (the
    README's "distractors", false detections; torchreid keeps them in the
    gallery as wrong matches) and pid ``-1`` images (the README's "junk",
    which torchreid drops).
  * Duke: no pid 0 / -1 images; instead gallery-only distractor identities,
    each seen by one camera, which the attribute file's test split includes.
  * Every query identity is in the gallery under another camera, and every
    camera of an identity holds at least one of its gallery images.

Each identity has a :class:`Look`: attributes (gender, age, hair, sleeves,
lower-body garment, hat, bags, colours) plus identity-only details (skin,
shades, a garment pattern, body build) so that identities are separable beyond
their attributes. Each image draws that look with pose jitter, in front of its
camera's background and under its camera's colour cast, noise and resolution.
Everything is deterministic given ``seed``.
"""
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import scipy.io
from PIL import Image

from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA, AttributeSchema
from alfo_torchreid.utils.errors import ConfigError, DatasetError

MARKER_FILE = 'toy_dataset.json'

# Field orders of the real annotation files (scipy.io.loadmat of
# market_attribute.mat / duke_attribute.mat); train and test differ.
MARKET_FIELD_ORDER = {
    'test': ('age', 'backpack', 'bag', 'handbag', 'clothes', 'down', 'up', 'hair',
             'hat', 'gender', 'upblack', 'upwhite', 'upred', 'uppurple', 'upyellow',
             'upgray', 'upblue', 'upgreen', 'downblack', 'downwhite', 'downpink',
             'downpurple', 'downyellow', 'downgray', 'downblue', 'downgreen',
             'downbrown', 'image_index'),
    'train': ('age', 'backpack', 'bag', 'handbag', 'downblack', 'downblue',
              'downbrown', 'downgray', 'downgreen', 'downpink', 'downpurple',
              'downwhite', 'downyellow', 'upblack', 'upblue', 'upgreen', 'upgray',
              'uppurple', 'upred', 'upwhite', 'upyellow', 'clothes', 'down', 'up',
              'hair', 'hat', 'gender', 'image_index'),
}
DUKE_FIELD_ORDER = {
    'train': ('backpack', 'bag', 'handbag', 'boots', 'gender', 'hat', 'shoes', 'top',
              'downblack', 'downwhite', 'downred', 'downgray', 'downblue',
              'downgreen', 'downbrown', 'upblack', 'upwhite', 'upred', 'uppurple',
              'upgray', 'upblue', 'upgreen', 'upbrown', 'image_index'),
    'test': ('boots', 'shoes', 'top', 'gender', 'hat', 'backpack', 'bag', 'handbag',
             'downblack', 'downwhite', 'downred', 'downgray', 'downblue',
             'downgreen', 'downbrown', 'upblack', 'upwhite', 'upred', 'upgray',
             'upblue', 'upgreen', 'uppurple', 'upbrown', 'image_index'),
}
# The real files list their splits in these orders.
_SPLIT_ORDER = {'market1501': ('test', 'train'), 'dukemtmcreid': ('train', 'test')}
_VARIABLE = {'market1501': 'market_attribute', 'dukemtmcreid': 'duke_attribute'}
# A fixed .mat header instead of scipy's timestamp, so that same seed = same bytes.
_MAT_HEADER = b'MATLAB 5.0 MAT-file, Platform: posix, Created by alfo_torchreid.data.toy'


@dataclass(frozen=True)
class ToyLayout:
    """Where and how one real dataset stores its images and annotation."""
    dataset: str
    schema: AttributeSchema
    dataset_dir: str          # under root, as torchreid's ``dataset_dir``
    data_dir: str             # under dataset_dir, holding the three folders
    attribute_file: str       # under dataset_dir
    max_pid: int
    max_cams: int
    low_res_cams: Tuple[int, ...]  # 1-based cameras that see the scene blurred

    def image_name(self, pid, cam, frame, rng):
        person = f'{pid:04d}' if pid >= 0 else '-1'  # junk is '-1_c1s1_...', not '-001'
        if self.dataset == 'market1501':
            # 0002_c1s1_000451_03.jpg: sequence 1..6, 6-digit frame, box index
            return (f'{person}_c{cam}s{rng.integers(1, 7)}_{frame:06d}'
                    f'_{rng.integers(1, 9):02d}.jpg')
        return f'{person}_c{cam}_f{frame:07d}.jpg'  # 0001_c2_f0046182.jpg


LAYOUTS = {
    'market1501': ToyLayout('market1501', MARKET_SCHEMA, 'market1501',
                            'Market-1501-v15.09.15', 'market_attribute.mat',
                            max_pid=1501, max_cams=6, low_res_cams=(6,)),
    'dukemtmcreid': ToyLayout('dukemtmcreid', DUKE_SCHEMA, 'dukemtmc-reid',
                              'DukeMTMC-reID', 'duke_attribute.mat',
                              max_pid=7140, max_cams=8, low_res_cams=()),
}


@dataclass
class ToyDataset:
    """What :func:`make_toy_dataset` wrote.

    Attributes:
        root: the ``root`` torchreid's dataset classes take.
        dataset: ``'market1501'`` or ``'dukemtmcreid'``.
        data_dir: folder holding ``bounding_box_train``, ``bounding_box_test``, ``query``.
        attribute_file: the annotation ``.mat``.
        train_labels, test_labels: ``{pid: 0-based label vector}`` in the
            schema's order, as written to the ``.mat``; test includes Duke's
            gallery-only distractor identities.
        num_train, num_query, num_gallery: images written per folder
            (gallery counts pid 0 and -1 images too).
        num_cams: cameras of the set.
        settings: every argument of the call that wrote it (also in ``toy_dataset.json``).
    """
    root: Path
    dataset: str
    data_dir: Path
    attribute_file: Path
    train_labels: Dict[int, np.ndarray]
    test_labels: Dict[int, np.ndarray]
    num_train: int
    num_query: int
    num_gallery: int
    num_cams: int
    settings: dict

    def summary(self):
        """A few lines saying what was written."""
        return '\n'.join([
            f'{self.dataset} toy dataset in {self.data_dir}',
            f'  train   : {len(self.train_labels)} ids, {self.num_train} images',
            f'  query   : {self.num_query} images of {self.settings["num_test_ids"]} ids',
            f'  gallery : {self.num_gallery} images{self._gallery_extras()}',
            f'  cameras : {self.num_cams}',
            f'  attributes: {self.attribute_file} ({len(self.test_labels)} test ids)',
        ])

    def _gallery_extras(self):
        s = self.settings
        extras = [f'{count} {what}' for count, what in (
            (s['num_distractor_images'], 'pid-0000 distractors'),
            (s['num_junk_images'], 'pid -1 junk, dropped by torchreid'),
            (s['num_distractor_ids'], 'gallery-only ids')) if count]
        return f" (with {', '.join(extras)})" if extras else ''


# ---------------------------------------------------------------- attribute file

def write_attribute_mat(path, schema, train_labels, test_labels, variable=None):
    """Writes an annotation ``.mat`` structured like the real ones.

    The file holds one variable (``market_attribute`` / ``duke_attribute``), a
    struct with ``train`` and ``test``; each is a struct of one ``uint8`` array
    of shape (1, N) per attribute holding ``label + 1`` (1/2, age 1..4) and
    ``image_index``, a (1, N) cell of 4-digit id strings, ids ascending.
    Fields follow the real files' per-split orders; attributes a custom schema
    adds come after them, ones it lacks are left out.

    Args:
        path: file to write.
        schema (AttributeSchema): the attributes and their order in the vectors.
        train_labels, test_labels (dict): ``{pid: 0-based label vector}``, one
            entry per schema attribute. A label of -1 is written as 0, as a few
            entries of the real Duke file are.
        variable (str): top-level variable name; default from ``schema.dataset``.
    """
    variable = variable or _VARIABLE.get(schema.dataset, f'{schema.dataset}_attribute')
    splits = {'train': train_labels, 'test': test_labels}
    split_order = _SPLIT_ORDER.get(schema.dataset, ('train', 'test'))
    real_orders = MARKET_FIELD_ORDER if schema.dataset == 'market1501' else DUKE_FIELD_ORDER
    content = {}
    for split in split_order:
        order = [n for n in real_orders[split] if n in schema.names]
        order += [n for n in schema.names if n not in order]
        content[split] = _split_struct(splits[split], schema, order)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {variable: content})
    data = bytearray(buffer.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b' ')
    Path(path).write_bytes(bytes(data))


def _split_struct(labels, schema, order):
    pids = sorted(labels)
    matrix = np.array([labels[p] for p in pids], dtype=np.int64).reshape(len(pids), len(schema))
    stored = matrix + 1
    if stored.size and (stored.min() < 0 or stored.max() > 255):
        raise ValueError(f'labels must lie in -1..254 to be stored as uint8, '
                         f'got {matrix.min()}..{matrix.max()}')
    struct = {name: stored[:, schema.index(name)].astype(np.uint8)[None, :]
              for name in order}
    image_index = np.empty((1, len(pids)), dtype=object)
    image_index[0, :] = [f'{p:04d}' for p in pids]
    struct['image_index'] = image_index
    return struct


# ---------------------------------------------------------------- appearance

PALETTE = {
    'black': (28, 28, 32), 'white': (232, 232, 228), 'red': (196, 32, 36),
    'purple': (112, 48, 150), 'yellow': (228, 204, 40), 'gray': (128, 128, 128),
    'blue': (38, 72, 190), 'green': (40, 146, 62), 'pink': (238, 138, 172),
    'brown': (118, 74, 38),
}
# Worn by people whose colour group is all "no" in the real annotation.
UNLISTED_COLOURS = {'orange': (236, 128, 36), 'beige': (214, 196, 150), 'teal': (36, 148, 150)}
SKIN_TONES = ((236, 196, 164), (214, 168, 128), (176, 124, 88), (120, 80, 52))
HAIR_COLOURS = ((24, 20, 18), (64, 40, 24), (110, 72, 40), (196, 160, 96))
GREY_HAIR = (188, 188, 184)
ACCESSORY_COLOURS = ((30, 30, 36), (90, 60, 40), (150, 40, 40), (40, 50, 110),
                     (200, 180, 140), (70, 110, 70))
DARK_SHOE_COLOURS = ((30, 30, 36), (72, 46, 30), (36, 40, 80))


@dataclass(frozen=True)
class _Prior:
    """How often each attribute occurs, roughly as in the real annotation."""
    female: float
    age: Tuple[float, ...]           # young, teenager, adult, old
    short_sleeves: float
    dress_if_female: float
    short_lower: float
    long_coat: float
    boots: float
    light_shoes: float
    hat: float
    backpack: float
    bag: float
    handbag: float
    upper_count: Tuple[float, ...]   # P(0, 1, 2 colours flagged in the group)
    lower_count: Tuple[float, ...]
    upper_weights: Dict[str, float]
    lower_weights: Dict[str, float]


PRIORS = {
    # Market was filmed in summer: short sleeves and shorts are common.
    'market1501': _Prior(
        female=0.45, age=(0.08, 0.5, 0.32, 0.1), short_sleeves=0.8, dress_if_female=0.35,
        short_lower=0.5, long_coat=0.0, boots=0.0, light_shoes=0.3, hat=0.15,
        backpack=0.3, bag=0.25, handbag=0.15, upper_count=(0.1, 0.9, 0.0),
        lower_count=(0.05, 0.95, 0.0),
        upper_weights=dict(black=.15, white=.22, red=.11, purple=.08, yellow=.09,
                           gray=.13, blue=.12, green=.10),
        lower_weights=dict(black=.25, white=.08, pink=.06, purple=.05, yellow=.05,
                           gray=.14, blue=.2, green=.07, brown=.1)),
    # Duke was filmed in winter: long sleeves, trousers, coats and boots.
    'dukemtmcreid': _Prior(
        female=0.42, age=(0.0, 0.3, 0.65, 0.05), short_sleeves=0.1, dress_if_female=0.0,
        short_lower=0.0, long_coat=0.2, boots=0.3, light_shoes=0.2, hat=0.18,
        backpack=0.5, bag=0.2, handbag=0.1, upper_count=(0.02, 0.98, 0.0),
        lower_count=(0.02, 0.95, 0.03),
        upper_weights=dict(black=.36, white=.1, red=.09, purple=.06, gray=.11,
                           blue=.12, green=.07, brown=.09),
        lower_weights=dict(black=.32, white=.08, red=.06, gray=.13, blue=.29,
                           green=.05, brown=.07)),
}


@dataclass(frozen=True)
class Look:
    """One identity's appearance: its attributes and identity-only details.

    Colours are names of :data:`PALETTE`; an empty ``upper``/``lower`` means a
    colour outside the annotated ones (drawn with ``unlisted``).
    """
    female: bool
    age: int
    long_hair: bool
    short_sleeves: bool
    dress: bool
    short_lower: bool
    long_coat: bool
    boots: bool
    light_shoes: bool
    hat: bool
    backpack: bool
    bag: bool
    handbag: bool
    upper: Tuple[str, ...]
    lower: Tuple[str, ...]
    # identity-only details
    unlisted: Tuple[int, int, int]
    skin: Tuple[int, int, int]
    hair_colour: Tuple[int, int, int]
    accessory: Tuple[int, int, int]
    shoe_colour: Tuple[int, int, int]
    shade: float            # brightness of the garments, 0.8..1.15
    pattern: int            # 0 plain, 1 stripes, 2 chest logo, 3 collar
    pattern_colour: Tuple[int, int, int]
    stripe_period: float    # in person heights
    build: float            # width factor of the body

    def labels(self, schema):
        """0-based label vector in ``schema``'s order (age 0..3, others 0/1)."""
        values = {
            'age': self.age, 'backpack': self.backpack, 'bag': self.bag,
            'handbag': self.handbag, 'hat': self.hat, 'gender': self.female,
            'hair': self.long_hair, 'up': self.short_sleeves, 'down': self.short_lower,
            'clothes': not self.dress, 'top': self.long_coat, 'boots': self.boots,
            'shoes': self.light_shoes,
        }
        values.update({'up' + c: True for c in self.upper})
        values.update({'down' + c: True for c in self.lower})
        return np.array([int(values.get(n, False)) for n in schema.names], dtype=np.int64)


def sample_look(rng, dataset):
    """Draws one identity's :class:`Look` from the dataset's prior."""
    prior = PRIORS[dataset]
    schema = LAYOUTS[dataset].schema
    female = rng.random() < prior.female
    dress = female and rng.random() < prior.dress_if_female
    pattern_colours = list(PALETTE.values()) + list(UNLISTED_COLOURS.values())
    return Look(
        female=female,
        age=int(rng.choice(4, p=prior.age)),
        long_hair=rng.random() < (0.8 if female else 0.08),
        short_sleeves=rng.random() < prior.short_sleeves,
        dress=dress,
        short_lower=rng.random() < prior.short_lower,
        long_coat=rng.random() < prior.long_coat,
        boots=rng.random() < prior.boots,
        light_shoes=rng.random() < prior.light_shoes,
        hat=rng.random() < prior.hat,
        backpack=rng.random() < prior.backpack,
        bag=rng.random() < prior.bag,
        handbag=rng.random() < prior.handbag,
        upper=_sample_colours(rng, schema.colour_groups['upper_colour'], 'up',
                              prior.upper_count, prior.upper_weights),
        lower=_sample_colours(rng, schema.colour_groups['lower_colour'], 'down',
                              prior.lower_count, prior.lower_weights),
        unlisted=_pick(rng, list(UNLISTED_COLOURS.values())),
        skin=_pick(rng, SKIN_TONES),
        hair_colour=_pick(rng, HAIR_COLOURS),
        accessory=_pick(rng, ACCESSORY_COLOURS),
        shoe_colour=_pick(rng, DARK_SHOE_COLOURS),
        shade=float(rng.uniform(0.8, 1.15)),
        pattern=int(rng.integers(4)),
        pattern_colour=_pick(rng, pattern_colours),
        stripe_period=float(rng.uniform(0.03, 0.06)),
        build=float(rng.uniform(0.9, 1.12)),
    )


def _pick(rng, options):
    return tuple(options[rng.integers(len(options))])


def _sample_colours(rng, names, prefix, count_probs, weights):
    colours = [n[len(prefix):] for n in names]
    count = int(rng.choice(len(count_probs), p=count_probs))
    p = np.array([weights[c] for c in colours])
    chosen = rng.choice(len(colours), size=count, replace=False, p=p / p.sum())
    return tuple(colours[i] for i in sorted(chosen))


@dataclass(frozen=True)
class Camera:
    """One camera's scene and sensor."""
    wall: np.ndarray        # (3,) RGB of the upper background
    ground: np.ndarray      # (3,) RGB of the floor
    horizon: float          # where the floor begins, fraction of image height
    gain: np.ndarray        # (3,) per-channel colour cast
    noise: float            # std of the sensor noise, in 0..255 units
    low_res: bool           # seen at half resolution


def make_cameras(rng, num_cams, low_res_cams=()):
    """``num_cams`` cameras with distinct scenes and colour casts (index 0 = c1)."""
    # Muted scenes (grey plus a little colour), casts that keep colours nameable.
    return [Camera(wall=rng.uniform(70, 190) + rng.uniform(-35, 35, 3),
                   ground=rng.uniform(50, 140) + rng.uniform(-20, 20, 3),
                   horizon=float(rng.uniform(0.55, 0.8)),
                   gain=rng.uniform(0.88, 1.12, 3) * rng.uniform(0.8, 1.15),
                   noise=float(rng.uniform(2, 8)), low_res=c + 1 in low_res_cams)
            for c in range(num_cams)]


class _Canvas:
    """An RGB float image and a person-centred frame to paint shapes in.

    Shapes are signed distances ``d`` (negative inside) in person-height
    units: (u, v) = (horizontal offset from the body axis, height below the
    top of the head). Painting with coverage ``0.5 - d / pixel`` anti-aliases
    the edges without supersampling.
    """

    def __init__(self, image, cx, top, scale, lean, flip):
        height, width = image.shape[:2]
        y = (np.arange(height, dtype=np.float32)[:, None] + 0.5) / height
        x = (np.arange(width, dtype=np.float32)[None, :] + 0.5 - width / 2) / height
        self.image = image
        self.v = np.broadcast_to((y - top) / scale, (height, width))
        self.u = flip * (x - cx - lean * (y - top - 0.5 * scale)) / scale
        self.pixel = 1.0 / (height * scale)

    def paint(self, distance, rgb, coverage=1.0):
        alpha = np.clip(0.5 - distance / self.pixel, 0.0, 1.0) * coverage
        rows = np.flatnonzero(alpha.max(axis=1) > 0)
        if rows.size:  # blend only the rows the shape touches: most shapes are small
            alpha, image = alpha[rows[0]:rows[-1] + 1, :, None], self.image[rows[0]:rows[-1] + 1]
            image += alpha * (np.asarray(rgb, np.float32) - image)

    def box(self, u0, u1, v0, v1):
        return np.maximum(np.abs(self.u - (u0 + u1) / 2) - (u1 - u0) / 2,
                          np.abs(self.v - (v0 + v1) / 2) - (v1 - v0) / 2)

    def ellipse(self, cu, cv, ru, rv):
        return (_norm((self.u - cu) / ru, (self.v - cv) / rv) - 1.0) * min(ru, rv)

    def capsule(self, a, b, radius):
        """A segment from point ``a`` to ``b`` thickened by ``radius``."""
        du, dv = b[0] - a[0], b[1] - a[1]
        t = np.clip(((self.u - a[0]) * du + (self.v - a[1]) * dv) / (du * du + dv * dv), 0, 1)
        return _norm(self.u - a[0] - t * du, self.v - a[1] - t * dv) - radius

    def trapezoid(self, v0, v1, half_width0, half_width1):
        """Symmetric about the body axis, half width growing linearly from v0 to v1."""
        t = np.clip((self.v - v0) / (v1 - v0), 0, 1)
        half_width = half_width0 + (half_width1 - half_width0) * t
        return np.maximum(np.abs(self.u) - half_width, np.maximum(v0 - self.v, self.v - v1))


def _norm(x, y):
    return np.sqrt(x * x + y * y)  # np.hypot is several times slower here


def _lerp(a, b, t):
    return (a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t)


def draw_person(canvas, look, rng):
    """Paints ``look`` onto ``canvas`` in a random walking pose."""
    def shaded(rgb):  # the identity's own shade of a colour
        return np.clip(np.asarray(rgb, np.float32) * look.shade, 0, 255)
    upper = [shaded(PALETTE[c]) for c in look.upper] or [shaded(look.unlisted)]
    lower = [shaded(PALETTE[c]) for c in look.lower] or [shaded(look.unlisted)]
    shoes = (224, 220, 210) if look.light_shoes else look.shoe_colour
    head_r = 0.068 if look.age == 0 else 0.055  # children: a larger head for their height
    head_v = head_r * 1.25
    # Women: narrower shoulders and wider hips; teenagers slimmer, adults broader.
    build = look.build * (0.92 if look.age == 1 else 1.0)
    shoulder = (0.088 if look.female else 0.108) * build
    hip = (0.094 if look.female else 0.080) * build
    neck_v, waist_v, foot_v = head_v + head_r * 1.1, 0.5, 0.94

    stride, swing = rng.uniform(-0.01, 0.04), rng.uniform(0.0, 0.04)
    legs = [((s * 0.045 * build, waist_v), (s * (0.045 * build + stride), foot_v))
            for s in (-1, 1)]
    arms = [((s * (shoulder - 0.012), neck_v + 0.02),
             (s * (shoulder + 0.022 + swing), 0.47)) for s in (-1, 1)]
    limb = 0.034 * build

    if look.backpack:  # sticks out beside the back, straps over the shoulders
        canvas.paint(canvas.box(shoulder - 0.03, shoulder + 0.04, 0.17, 0.43), look.accessory)
    for i, (hip_pt, foot_pt) in enumerate(legs):
        canvas.paint(canvas.capsule(hip_pt, foot_pt, limb), look.skin)
        if not look.dress:
            end = _lerp(hip_pt, foot_pt, 0.4 if look.short_lower else 0.93)
            canvas.paint(canvas.capsule(hip_pt, end, limb + 0.004), lower[i % len(lower)])
        if look.boots:
            canvas.paint(canvas.capsule(_lerp(hip_pt, foot_pt, 0.72), foot_pt, limb + 0.006),
                         shoes)
        canvas.paint(canvas.ellipse(foot_pt[0] + 0.012, foot_pt[1] + 0.006, 0.045, 0.022),
                     shoes)
    if look.dress:
        hem = 0.7 if look.short_lower else 0.86
        dress = canvas.trapezoid(waist_v - 0.04, hem, hip, hip + 0.065)
        canvas.paint(dress, lower[0])
        if len(lower) > 1:
            canvas.paint(np.maximum(dress, (waist_v + hem) / 2 - canvas.v), lower[1])
    else:
        canvas.paint(canvas.trapezoid(waist_v - 0.03, waist_v + 0.06, hip, 0.06), lower[0])

    torso_bottom = 0.7 if look.long_coat else waist_v + 0.01
    torso = canvas.trapezoid(neck_v, torso_bottom, shoulder,
                             hip + (0.03 if look.long_coat else 0.0))
    canvas.paint(torso, upper[0])
    if len(upper) > 1:
        canvas.paint(np.maximum(torso, 0.33 - canvas.v), upper[1])
    _draw_pattern(canvas, look, torso, neck_v)
    if look.backpack:
        for s in (-1, 1):
            canvas.paint(canvas.box(s * shoulder * 0.55 - 0.007, s * shoulder * 0.55 + 0.007,
                                    neck_v, 0.3), look.accessory)
    if look.long_hair:  # falls over the back and shoulders
        canvas.paint(canvas.box(-head_r * 1.1, head_r * 1.1, head_v - head_r, 0.27),
                     _hair_colour(look))

    for s, (shoulder_pt, hand_pt) in zip((-1, 1), arms):
        canvas.paint(canvas.capsule(shoulder_pt, hand_pt, limb * 0.8), look.skin)
        sleeve_end = _lerp(shoulder_pt, hand_pt, 0.3 if look.short_sleeves else 0.9)
        canvas.paint(canvas.capsule(shoulder_pt, sleeve_end, limb * 0.85),
                     upper[0] * 0.88)
    if look.bag:  # shoulder bag at one hip, strap across the chest
        canvas.paint(canvas.capsule((shoulder * 0.6, neck_v), (-hip, 0.45), 0.007), look.accessory)
        canvas.paint(canvas.box(-hip - 0.06, -hip + 0.005, 0.43, 0.57), look.accessory)
    if look.handbag:  # hangs from the right hand, lighter than the other bags
        hand, colour = arms[1][1], np.asarray(look.accessory) * 0.8 + 40
        canvas.paint(canvas.capsule((hand[0] - 0.015, hand[1] + 0.045),
                                    (hand[0] + 0.015, hand[1] + 0.045), 0.02), colour)
        canvas.paint(canvas.box(hand[0] - 0.03, hand[0] + 0.03, hand[1] + 0.05, hand[1] + 0.12),
                     colour)

    canvas.paint(canvas.box(-0.02, 0.02, head_v, neck_v + 0.01), look.skin)
    canvas.paint(canvas.ellipse(0, head_v, head_r, head_r * 1.2), look.skin)
    hair_cap = canvas.ellipse(0, head_v - head_r * 0.1, head_r * 1.05, head_r * 1.2)
    canvas.paint(np.maximum(hair_cap, canvas.v - (head_v - head_r * 0.35)), _hair_colour(look))
    if look.hat:
        brim_v = head_v - head_r * 0.4
        canvas.paint(np.maximum(canvas.ellipse(0, brim_v, head_r * 1.1, head_r * 0.9),
                                canvas.v - brim_v), look.pattern_colour)
        canvas.paint(canvas.box(-head_r * 1.5, head_r * 1.5, brim_v - 0.006, brim_v + 0.008),
                     look.pattern_colour)


def _hair_colour(look):
    return GREY_HAIR if look.age == 3 else look.hair_colour


def _draw_pattern(canvas, look, torso, neck_v):
    """The identity's own mark on its upper garment."""
    if look.pattern == 1:
        stripes = (np.sin(2 * np.pi * canvas.v / look.stripe_period) > 0.3).astype(np.float32)
        canvas.paint(torso, look.pattern_colour, coverage=0.6 * stripes)
    elif look.pattern == 2:
        canvas.paint(canvas.box(-0.035, 0.025, neck_v + 0.06, neck_v + 0.12), look.pattern_colour)
    elif look.pattern == 3:
        canvas.paint(np.maximum(torso, canvas.v - neck_v - 0.035), look.pattern_colour)


def _background(rng, camera, height, width):
    """The camera's scene: wall, floor and a few random objects, (H, W, 3) float."""
    y = (np.arange(height, dtype=np.float32) / height)[:, None, None]
    horizon = camera.horizon + rng.uniform(-0.05, 0.05)
    wall = camera.wall * (0.85 + 0.3 * y)
    image = np.where(y < horizon, wall, camera.ground * (0.8 + 0.3 * y))
    image = np.broadcast_to(image, (height, width, 3)).astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        y0, x0 = rng.integers(0, height - 4), rng.integers(-width // 4, width)
        h, w = rng.integers(4, height // 2), rng.integers(3, width // 2)
        colour = 0.5 * rng.uniform(0, 255, 3) + 0.5 * camera.wall
        image[y0:y0 + h, max(x0, 0):max(x0 + w, 0)] = colour
    return image


def _expose(image, rng, camera):
    """Camera colour cast, per-image light change, noise; (H, W, 3) uint8."""
    light = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * camera.noise
    image = image * (camera.gain * light).astype(np.float32) + noise
    out = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if camera.low_res:
        out = out.resize((image.shape[1] // 2, image.shape[0] // 2), Image.BILINEAR)
        out = out.resize((image.shape[1], image.shape[0]), Image.BILINEAR)
    return out


def render_image(look, camera, rng, height, width, kind='person'):
    """One image of ``look`` seen by ``camera``.

    ``kind``: ``'person'`` a detection around the person, with pose jitter;
    ``'junk'`` a poor detection showing part of the person (pid -1);
    ``'distractor'`` a false detection of the scene, sometimes cutting through
    a passer-by (pid 0).
    """
    image = _background(rng, camera, height, width)
    if kind == 'person':
        scale, cx, top = rng.uniform(0.86, 0.97), rng.uniform(-0.04, 0.04), rng.uniform(0.01, 0.05)
    elif kind == 'junk':
        side = 1 if rng.random() < 0.5 else -1
        scale, cx = rng.uniform(0.9, 1.3), side * rng.uniform(0.17, 0.25)
        top = rng.uniform(-0.3, 0.2)
    else:
        scale, cx, top = rng.uniform(1.5, 2.5), rng.uniform(-0.4, 0.4), rng.uniform(-1.5, -0.5)
    if kind != 'distractor' or rng.random() < 0.5:
        canvas = _Canvas(image, cx, top, scale, lean=rng.uniform(-0.08, 0.08) +
                         (0.08 if look.age == 3 else 0.0), flip=1 if rng.random() < 0.5 else -1)
        draw_person(canvas, look, rng)
    return _expose(image, rng, camera)


# ---------------------------------------------------------------- the tree

DEFAULTS = {
    'market1501': dict(num_distractor_images=24, num_junk_images=24, num_distractor_ids=0),
    'dukemtmcreid': dict(num_distractor_images=0, num_junk_images=0, num_distractor_ids=10),
}


def make_toy_dataset(root, dataset='market1501', num_train_ids=40, num_test_ids=30,
                     images_per_id=8, queries_per_id=2, cams_per_id=3, num_cams=None,
                     num_distractor_images=None, num_junk_images=None,
                     num_distractor_ids=None, height=128, width=64, seed=0):
    """Writes a toy Market-1501 or DukeMTMC-reID under ``root``.

    Counts, by construction (what torchreid reports is in brackets):
      * train: ``num_train_ids * images_per_id`` images [same; ``num_train_ids``
        ids; ``num_cams`` cameras when ``num_train_ids >= num_cams``].
      * query: ``num_test_ids * queries_per_id`` images, one per camera for
        ``queries_per_id`` of the id's cameras.
      * gallery: ``num_test_ids * images_per_id`` images spread over each test
        id's ``cams_per_id`` cameras, plus (Market) ``num_distractor_images``
        pid-0 and ``num_junk_images`` pid-(-1) images [torchreid drops the
        -1s and counts pid 0 as one more id], plus (Duke)
        ``num_distractor_ids * images_per_id`` images of gallery-only ids, one
        camera each [each one more id].

    Args:
        root: folder to write under (the ``root`` of torchreid's datasets).
        dataset: ``'market1501'`` or ``'dukemtmcreid'``.
        num_cams: default 6 (Market) / 8 (Duke), the real sets' counts and maxima.
        num_distractor_images, num_junk_images: Market only (default 24 each).
        num_distractor_ids: Duke only (default 10).
        height, width: image size in pixels.
        seed: everything written is a function of the arguments.

    Returns:
        ToyDataset.

    Raises:
        ConfigError: for counts the real layout cannot hold.
        DatasetError: if the target folder exists and was not written by this function.
    """
    if dataset not in LAYOUTS:
        raise ConfigError(f'toy dataset {dataset!r} is unknown; expected one of {sorted(LAYOUTS)}')
    layout = LAYOUTS[dataset]
    settings = dict(dataset=dataset, num_train_ids=num_train_ids, num_test_ids=num_test_ids,
                    images_per_id=images_per_id, queries_per_id=queries_per_id,
                    cams_per_id=cams_per_id, num_cams=num_cams or layout.max_cams,
                    height=height, width=width, seed=seed)
    for key, value in (('num_distractor_images', num_distractor_images),
                       ('num_junk_images', num_junk_images),
                       ('num_distractor_ids', num_distractor_ids)):
        settings[key] = DEFAULTS[dataset][key] if value is None else value
    _check_settings(layout, settings)

    root = Path(root)
    dataset_dir = root / layout.dataset_dir
    _clear_previous_toy(dataset_dir)
    data_dir = dataset_dir / layout.data_dir
    folders = {name: data_dir / name
               for name in ('bounding_box_train', 'query', 'bounding_box_test')}
    for folder in folders.values():
        folder.mkdir(parents=True)

    rng = np.random.default_rng([seed, list(LAYOUTS).index(dataset)])
    cameras = make_cameras(rng, settings['num_cams'], layout.low_res_cams)
    train_pids, test_pids, distractor_pids = _draw_pids(rng, layout, settings)
    writer = _ImageWriter(layout, cameras, rng, height, width)
    train_labels, test_labels = {}, {}
    n_ids, per_id = settings['cams_per_id'], settings['images_per_id']
    for i, pid in enumerate(train_pids):
        look = sample_look(rng, dataset)
        train_labels[pid] = look.labels(layout.schema)
        cams = _id_cameras(rng, i, n_ids, settings['num_cams'])
        writer.write_identity(folders['bounding_box_train'], pid, look,
                              [cams[k % n_ids] for k in range(per_id)])
    for i, pid in enumerate(test_pids):
        look = sample_look(rng, dataset)
        test_labels[pid] = look.labels(layout.schema)
        cams = _id_cameras(rng, i, n_ids, settings['num_cams'])
        writer.write_identity(folders['query'], pid, look, cams[:settings['queries_per_id']])
        writer.write_identity(folders['bounding_box_test'], pid, look,
                              [cams[k % n_ids] for k in range(per_id)])
    for pid in distractor_pids:
        look = sample_look(rng, dataset)
        test_labels[pid] = look.labels(layout.schema)
        writer.write_identity(folders['bounding_box_test'], pid, look,
                              [int(rng.integers(1, settings['num_cams'] + 1))] * per_id)
    for pid, count, kind in ((0, settings['num_distractor_images'], 'distractor'),
                             (-1, settings['num_junk_images'], 'junk')):
        if count:
            writer.write_clutter(folders['bounding_box_test'], pid, count, kind, dataset)

    attribute_file = dataset_dir / layout.attribute_file
    write_attribute_mat(attribute_file, layout.schema, train_labels, test_labels)
    (dataset_dir / MARKER_FILE).write_text(json.dumps(settings, indent=1) + '\n')
    num_train, num_query, num_gallery = (writer.counts[f] for f in folders.values())
    return ToyDataset(root=root, dataset=dataset, data_dir=data_dir,
                      attribute_file=attribute_file, train_labels=train_labels,
                      test_labels=test_labels, num_train=num_train, num_query=num_query,
                      num_gallery=num_gallery, num_cams=settings['num_cams'], settings=settings)


def _check_settings(layout, s):
    def need(ok, what):
        if not ok:
            raise ConfigError(f'toy {layout.dataset}: {what}')
    need(2 <= s['num_cams'] <= layout.max_cams,
         f'num_cams={s["num_cams"]}, expected 2..{layout.max_cams} (torchreid checks the range)')
    need(2 <= s['cams_per_id'] <= s['num_cams'],
         f'cams_per_id={s["cams_per_id"]}, expected 2..num_cams={s["num_cams"]} '
         '(every query needs a gallery match in another camera)')
    need(1 <= s['queries_per_id'] <= s['cams_per_id'],
         f'queries_per_id={s["queries_per_id"]}, expected 1..cams_per_id={s["cams_per_id"]} '
         '(one query per camera)')
    need(s['images_per_id'] >= s['cams_per_id'],
         f'images_per_id={s["images_per_id"]}, expected >= cams_per_id={s["cams_per_id"]}')
    need(s['num_train_ids'] >= 1 and s['num_test_ids'] >= 1,
         f'num_train_ids={s["num_train_ids"]} and num_test_ids={s["num_test_ids"]} must be >= 1')
    total = s['num_train_ids'] + s['num_test_ids'] + s['num_distractor_ids']
    need(total <= layout.max_pid, f'{total} identities, expected at most {layout.max_pid}')
    need(min(s['num_distractor_images'], s['num_junk_images'], s['num_distractor_ids']) >= 0,
         'counts must be >= 0')
    if layout.dataset == 'market1501':
        need(s['num_distractor_ids'] == 0, 'num_distractor_ids is a Duke count; Market '
             'has pid-0 distractor images instead (num_distractor_images)')
    else:
        need(s['num_distractor_images'] == 0 and s['num_junk_images'] == 0,
             'DukeMTMC-reID has no pid 0 / -1 images; use num_distractor_ids')
    need(s['height'] >= 16 and s['width'] >= 8,
         f'image size {s["height"]}x{s["width"]}, expected at least 16x8')


def _clear_previous_toy(dataset_dir):
    """Removes a tree this module wrote before; refuses to touch anything else."""
    if not dataset_dir.exists():
        return
    if not (dataset_dir / MARKER_FILE).is_file():
        raise DatasetError(
            f'"{dataset_dir}" exists and holds no {MARKER_FILE}: it is not a toy dataset '
            'written by make_toy_dataset, so it is left alone; choose another root')
    shutil.rmtree(dataset_dir)


def _draw_pids(rng, layout, s):
    """Disjoint, interleaved 4-digit ids for train, test and gallery-only identities."""
    counts = (s['num_train_ids'], s['num_test_ids'], s['num_distractor_ids'])
    pids = rng.choice(np.arange(1, layout.max_pid + 1), size=sum(counts), replace=False)
    splits = np.split(pids, np.cumsum(counts)[:-1])
    return [sorted(int(p) for p in split) for split in splits]


def _id_cameras(rng, index, count, num_cams):
    """``count`` distinct 1-based cameras; the first cycles so all cameras get used."""
    first = index % num_cams
    others = rng.permutation([c for c in range(num_cams) if c != first])[:count - 1]
    return [first + 1] + [int(c) + 1 for c in others]


class _ImageWriter:
    """Renders and saves images with real-style, unique file names."""

    def __init__(self, layout, cameras, rng, height, width):
        self.layout, self.cameras, self.rng = layout, cameras, rng
        self.height, self.width = height, width
        self.frame = {}   # last frame number per pid: names never repeat
        self.counts = {}

    def _save(self, folder, pid, cam, image):
        # steps small enough for ~15000 images of one pid within Market's 6 digits
        start = self.frame.get(pid, int(self.rng.integers(1, 20000)))
        frame = start + int(self.rng.integers(5, 60))
        self.frame[pid] = frame
        image.save(folder / self.layout.image_name(pid, cam, frame, self.rng), quality=92)
        self.counts[folder] = self.counts.get(folder, 0) + 1

    def write_identity(self, folder, pid, look, cams):
        """One image of ``look`` per entry of ``cams`` (1-based camera ids)."""
        self.counts.setdefault(folder, 0)
        for cam in cams:
            image = render_image(look, self.cameras[cam - 1], self.rng, self.height, self.width)
            self._save(folder, pid, cam, image)

    def write_clutter(self, folder, pid, count, kind, dataset):
        """``count`` junk or distractor images under ``pid``, random passers-by."""
        for _ in range(count):
            cam = int(self.rng.integers(1, len(self.cameras) + 1))
            look = sample_look(self.rng, dataset)
            image = render_image(look, self.cameras[cam - 1], self.rng, self.height,
                                 self.width, kind=kind)
            self._save(folder, pid, cam, image)
