"""The picture of a search: the query and its top-k gallery crops in a PNG grid.

Each crop is captioned with its rank and distance and a summary of its
predicted attributes (gender and age, the colour groups, the carried items
and other no/yes attributes predicted yes). When the file names carry person
ids (Market-1501 / DukeMTMC-reID names such as ``0002_c1s1_000451_03.jpg``),
a crop of the query's person is framed green, one of another person red;
grey otherwise (no id, or Market's distractor 0000 and junk -1).
"""
import math
import os.path as osp

from PIL import Image, ImageDraw, ImageFont

from alfo_torchreid.data.attributes import BINARY_CLASS_NAMES
from alfo_torchreid.data.datasets import parse_image_name
from alfo_torchreid.utils import compat
from alfo_torchreid.utils.atomic import replacing
from alfo_torchreid.utils.errors import DatasetError, ImageReadError

IMAGE_SIZE = (80, 160)  # width, height of a crop in the grid
CELL_WIDTH = 116
LINE_HEIGHT = 13
CAPTION_LINES = 4
FRAME = 4
MAX_COLUMNS = 11
SUMMARY_CLASSES = ('gender', 'age')  # shown by their class, e.g. "female adult"
GREEN, RED, GREY = (0, 170, 0), (210, 0, 0), (170, 170, 170)


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
    forms = schema.colour_forms()
    classes = ' '.join(prediction[n][0] for n in SUMMARY_CLASSES if n in prediction)
    colours = ' '.join(f'{form.removesuffix("colour").rstrip("_") or form} '
                       f'{prediction[form][0]}' for form in forms)
    worn = ' '.join(n for n in schema.names
                    if n not in schema.colour_members and n not in SUMMARY_CLASSES
                    and schema.class_names(n) == BINARY_CLASS_NAMES and prediction[n][0] == 'yes')
    return [line for line in (classes, colours, worn) if line]


def draw_ranking(query_path, query_prediction, hits, schema, out_path):
    """Writes the grid of a ranked list captioned with predicted attributes.

    Args:
        query_path: the query image.
        query_prediction: its named predictions (``named_predictions`` row).
        hits: ``(path, distance, named predictions)`` of the ranked items, best first.
        schema: the attributes' schema.
        out_path: the PNG to write.
    """
    draw_grid(query_path, attribute_summary(query_prediction, schema),
              [(path, [f'{rank}. {distance:.4g}'] + attribute_summary(prediction, schema))
               for rank, (path, distance, prediction) in enumerate(hits, 1)], out_path)


def draw_grid(query_path, query_caption, hits, out_path):
    """Writes the PNG grid (atomically).

    Args:
        query_path: the query image.
        query_caption: its caption lines.
        hits: ``(path, caption lines)`` of the ranked items, best first.
        out_path: the PNG to write.
    """
    cells = [(query_path, ['query'] + query_caption, GREY)]
    query_id = person_id(query_path)
    for path, caption in hits:
        pid = person_id(path)
        frame = GREY if query_id is None or pid is None else GREEN if pid == query_id else RED
        cells.append((path, caption, frame))
    columns = min(len(cells), MAX_COLUMNS)
    cell_height = IMAGE_SIZE[1] + 2 * FRAME + 4 + CAPTION_LINES * LINE_HEIGHT
    grid = Image.new('RGB', (columns * CELL_WIDTH, math.ceil(len(cells) / columns) * cell_height),
                     'white')
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=11)
    for i, (path, caption, frame) in enumerate(cells):
        x, y = (i % columns) * CELL_WIDTH, (i // columns) * cell_height
        left = x + (CELL_WIDTH - IMAGE_SIZE[0]) // 2
        draw.rectangle([left - FRAME, y, left + IMAGE_SIZE[0] + FRAME - 1,
                        y + IMAGE_SIZE[1] + 2 * FRAME - 1], fill=frame)
        grid.paste(_crop(path), (left, y + FRAME))
        for line_number, line in enumerate(caption[:CAPTION_LINES]):
            draw.text((x + 3, y + IMAGE_SIZE[1] + 2 * FRAME + 2 + line_number * LINE_HEIGHT),
                      _fit(draw, line, font), fill='black', font=font)
    with replacing(out_path) as f:
        grid.save(f, format='PNG')


def _crop(path):
    try:
        return compat.read_image(path).resize(IMAGE_SIZE)
    except ImageReadError:  # removed or damaged since it was indexed
        return Image.new('RGB', IMAGE_SIZE, GREY)


def _fit(draw, text, font):
    """``text`` cut to the cell's width."""
    while text and draw.textlength(text, font=font) > CELL_WIDTH - 6:
        text = text[:-2] + '…'
    return text
