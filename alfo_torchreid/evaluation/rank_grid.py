"""The picture of a search: the query and its top-k gallery crops in a PNG grid.

Each crop is captioned with its rank and distance and a summary of its
predicted attributes (gender and age, the colour groups, the carried items
and other no/yes attributes predicted yes); given its true labels (visrank),
the truth follows, each part green where it agrees and red where it does not.
Captions wrap to the cell, never cut. When the file names carry person
ids (Market-1501 / DukeMTMC-reID names such as ``0002_c1s1_000451_03.jpg``),
a crop of the query's person is framed green, one of another person red;
grey otherwise (no id, or Market's distractor 0000 and junk -1).
"""
import os.path as osp
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from alfo_torchreid.data.attributes import BINARY_CLASS_NAMES
from alfo_torchreid.data.datasets import parse_image_name
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.atomic import replacing
from alfo_torchreid.utils.errors import DatasetError, ImageReadError

IMAGE_SIZE = (80, 160)  # width, height of a crop in the grid
CELL_WIDTH = 116
FONT_SIZE = 11
LINE_HEIGHT = 13
MARGIN = 3  # pixels between a caption and its cell's edge
FRAME = 4
MAX_COLUMNS = 11
SUMMARY_CLASSES = ('gender', 'age')  # shown by their class, e.g. "female adult"
GREEN, RED, GREY, BLACK = (0, 170, 0), (210, 0, 0), (170, 170, 170), (0, 0, 0)
# the title of a grid whose captions show the true attributes (truth_lines)
TRUTH_LEGEND = ('under each crop: rank and distance, the predicted attributes, then the true '
                'ones: "= ..." agrees with the prediction, "x ..." (red) does not')
NO_TRUTH = 'true: none known'  # the caption of a crop without labels (distractor, junk)


def person_id(path):
    """The person id in a Market/Duke file name, or None (no id, 0 or -1)."""
    try:
        pid, _ = parse_image_name(osp.basename(path), num_cams=9, max_pid=10 ** 6)
    except DatasetError:
        return None
    return pid if pid > 0 else None


def attribute_summary(prediction, schema):
    """Short caption lines for one image's named predictions (as
    :func:`~alfo_torchreid.evaluation.attribute_match.named_predictions` gives them)."""
    return [line for line in _summary_groups(prediction, schema) if line]


def _summary_groups(prediction, schema):
    """The three parts of :func:`attribute_summary`, '' where empty: gender and
    age, the colour forms, the no/yes attributes that are yes."""
    forms = schema.colour_forms()
    classes = ' '.join(prediction[n][0] for n in SUMMARY_CLASSES if n in prediction)
    colours = ' '.join(f'{form.removesuffix("colour").rstrip("_") or form} '
                       f'{prediction[form][0]}' for form in forms)
    worn = ' '.join(n for n in schema.names
                    if n not in schema.colour_members and n not in SUMMARY_CLASSES
                    and schema.class_names(n) == BINARY_CLASS_NAMES and prediction[n][0] == 'yes')
    return classes, colours, worn


def truth_lines(prediction, truth, schema):
    """Caption lines of an image's true attributes under its predicted ones
    (:func:`attribute_summary`): a grey ``'true:'``, then part by part
    ``'= ...'`` in green where the truth reads as the prediction, ``'x ...'``
    in red where it does not.

    Args:
        prediction: the image's named predictions.
        truth: its named true labels
            (:func:`~alfo_torchreid.evaluation.attribute_match.named_labels`),
            or None when it has none (a distractor or junk image): one grey line.
    """
    if truth is None:
        return [(NO_TRUTH, GREY)]
    return [('true:', GREY)] + [
        (f'= {true}', GREEN) if said == true else (f'x {true or "none"}', RED)
        for said, true in zip(_summary_groups(prediction, schema), _summary_groups(truth, schema))
        if said or true]


def draw_ranking(query_path, query_prediction, hits, schema, out_path, title='', truths=None):
    """Writes the grid of a ranked list captioned with predicted attributes.

    Args:
        query_path: the query image.
        query_prediction: its named predictions (``named_predictions`` row).
        hits: ``(path, distance, named predictions)`` of the ranked items, best first.
        schema: the attributes' schema.
        out_path: the PNG to write.
        title: a line above the grid (e.g. the search's filter); '' for none.
        truths: the items' named true labels (:func:`truth_lines`; None for an
            item without), in the order of ``hits``; None: not shown.
    """
    draw_grid(ranking_layout(query_path, query_prediction, hits, schema, title, truths),
              out_path)


def ranking_layout(query_path, query_prediction, hits, schema, title='', truths=None):
    """The :class:`Layout` that :func:`draw_ranking` draws (same arguments)."""
    captions = []
    for rank, (path, distance, prediction) in enumerate(hits, 1):
        caption = [f'{rank}. {distance:.4g}'] + attribute_summary(prediction, schema)
        if truths is not None:
            caption += truth_lines(prediction, truths[rank - 1], schema)
        captions.append((path, caption))
    return grid_layout(query_path, attribute_summary(query_prediction, schema), captions, title)


@dataclass
class Cell:
    """One image of the grid: its top-left corner ``(x, y)`` in pixels, its
    frame colour and its caption as ``(text, colour)`` lines, each of which
    fits :data:`CELL_WIDTH` less the margins."""
    path: str
    x: int
    y: int
    frame: tuple
    lines: list


@dataclass
class Layout:
    """Where everything of a grid goes: ``size`` (width, height) in pixels,
    the wrapped ``title`` lines above the cells, and the cells."""
    size: tuple
    title: list
    cells: list


def grid_layout(query_path, query_caption, hits, title=''):
    """Places the query and its ranked items in rows of :data:`MAX_COLUMNS`.

    Args:
        query_path: the query image.
        query_caption: its caption lines.
        hits: ``(path, caption lines)`` of the ranked items, best first; a
            caption line is a string (black) or ``(text, RGB colour)``.
        title: a line above the grid; '' for none.

    Returns:
        :class:`Layout`: caption lines too wide for a cell are wrapped (no
        character is cut off), and every row is as tall as its longest
        caption needs.
    """
    measure = _font().getlength
    query_id = person_id(query_path)
    items = [(query_path, ['query'] + list(query_caption), GREY)]
    for path, caption in hits:
        pid = person_id(path)
        items.append((path, caption, GREY if query_id is None or pid is None else
                      GREEN if pid == query_id else RED))
    wrapped = [[piece for line in caption for piece in _wrap(line, CELL_WIDTH - 2 * MARGIN,
                                                               measure)]
               for _, caption, _ in items]
    columns = min(len(items), MAX_COLUMNS)
    title_lines = _wrap(title, columns * CELL_WIDTH - 2 * MARGIN, measure) if title else []
    top = len(title_lines) * LINE_HEIGHT + (MARGIN if title_lines else 0)
    cells, row_top = [], top
    for row_start in range(0, len(items), columns):
        row_lines = max(len(lines) for lines in wrapped[row_start:row_start + columns])
        for i in range(row_start, min(row_start + columns, len(items))):
            path, _, frame = items[i]
            cells.append(Cell(path, (i - row_start) * CELL_WIDTH, row_top, frame, wrapped[i]))
        row_top += IMAGE_SIZE[1] + 2 * FRAME + 4 + row_lines * LINE_HEIGHT
    return Layout((columns * CELL_WIDTH, row_top), title_lines, cells)


def draw_grid(layout, out_path):
    """Writes the PNG of a :class:`Layout` (atomically)."""
    grid = Image.new('RGB', layout.size, 'white')
    draw = ImageDraw.Draw(grid)
    font = _font()
    for number, (text, colour) in enumerate(layout.title):
        draw.text((MARGIN, number * LINE_HEIGHT), text, fill=colour, font=font)
    for cell in layout.cells:
        left = cell.x + (CELL_WIDTH - IMAGE_SIZE[0]) // 2
        draw.rectangle([left - FRAME, cell.y, left + IMAGE_SIZE[0] + FRAME - 1,
                        cell.y + IMAGE_SIZE[1] + 2 * FRAME - 1], fill=cell.frame)
        grid.paste(_crop(cell.path), (left, cell.y + FRAME))
        for number, (text, colour) in enumerate(cell.lines):
            draw.text((cell.x + MARGIN, cell.y + IMAGE_SIZE[1] + 2 * FRAME + 2 +
                       number * LINE_HEIGHT), text, fill=colour, font=font)
    with replacing(out_path) as f:
        grid.save(f, format='PNG')


def _font():
    return ImageFont.load_default(size=FONT_SIZE)


def _crop(path):
    try:
        return compat.read_image(path).resize(IMAGE_SIZE)
    except ImageReadError:  # removed or damaged since it was indexed
        return Image.new('RGB', IMAGE_SIZE, GREY)


def _wrap(line, width, measure):
    """A caption line (a string, black, or ``(text, colour)``) as ``(text,
    colour)`` lines of at most ``width`` pixels (``measure``: text -> pixels),
    broken at spaces; a word wider than ``width`` is broken where it must."""
    text, colour = (line, BLACK) if isinstance(line, str) else line
    lines = []
    for word in text.split():
        if lines and measure(f'{lines[-1]} {word}') <= width:
            lines[-1] = f'{lines[-1]} {word}'
            continue
        while measure(word) > width:
            cut = max(n for n in range(1, len(word)) if measure(word[:n]) <= width or n == 1)
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return [(piece, colour) for piece in lines]
