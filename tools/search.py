#!/usr/bin/env python
"""Search a gallery by appearance and by predicted attributes with a trained ALFO.

    # extract the gallery once (again later: only new or changed images are extracted)
    python tools/search.py index --weights log/alfo_market/model/model.pth.tar-60 \\
        reid-data/market1501/Market-1501-v15.09.15/bounding_box_test --out gallery-index
    # the 20 nearest crops to a query, only those predicted female with a backpack
    python tools/search.py query gallery-index query.jpg --top 20 \\
        --where "gender=female,backpack=yes,upcolour=red" --out searches
    # re-ranked: re-ID distance + attribute disagreement
    python tools/search.py query gallery-index query.jpg --attr-weight 0.5

A query prints the ranking; with --out FOLDER it also writes there a PNG grid
of the top crops (captioned with distance and predicted attributes, true
matches framed green when file names carry person ids), <query name>.png, and
the ranking as JSON, <query name>.json. Nothing is written without --out.
"""
import argparse
import json
import logging
import os.path as osp
import sys

from alfo_torchreid.evaluation import rank_grid
from alfo_torchreid.evaluation.attribute_match import (format_prediction, named_predictions,
                                                       parse_where)
from alfo_torchreid.serving import gallery_index, inference, search
from alfo_torchreid.utils.atomic import write_file
from alfo_torchreid.utils.cli import HelpFormatter
from alfo_torchreid.utils.errors import SearchError, run_command
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=HelpFormatter,
                                     epilog=__doc__.split('\n\n', 1)[1])
    commands = parser.add_subparsers(dest='command', required=True,
                                     help='index: build or update; query: search it')
    index = commands.add_parser('index', help='build or update a gallery index',
                                formatter_class=HelpFormatter)
    index.add_argument('gallery', nargs='+', help='image files and folders of the gallery')
    inference.add_model_arguments(index)
    index.add_argument('--out', required=True, help='the index folder')
    index.add_argument('--backend', choices=search.BACKENDS, default=None,
                       help="default: the index's; for a new one faiss-ivfpq from "
                            f'{search.AUTO_IVFPQ_ITEMS:,} images on when FAISS is '
                            'installed, else torch')
    index.add_argument('--batch-size', type=int, default=64, help='images per forward pass')
    index.add_argument('--workers', type=int, default=0, help='image-reading processes')
    query = commands.add_parser('query', help='rank the gallery for a query image',
                                formatter_class=HelpFormatter)
    query.add_argument('index', help='the index folder')
    query.add_argument('query', help='the query image')
    query.add_argument('--top', type=int, default=20, help='items to rank')
    query.add_argument('--where', default='', help='keep only items whose predicted '
                       'attributes match, e.g. "gender=female,backpack=yes,upcolour=red"')
    query.add_argument('--attr-weight', type=float, default=0.0,
                       help='re-rank: add this times the query\'s median distance times '
                            'the attribute disagreement (0..1)')
    query.add_argument('--out', default='', help='folder for <query name>.png, the top crops, '
                       'and <query name>.json, the ranking (default: none, the ranking is '
                       'only printed)')
    inference.add_model_arguments(query, weights_default="the index's")
    return parser


def build_index(args):
    trained = inference.load_trained_alfo(args.weights, args.config, args.trust_checkpoint)
    index, report = gallery_index.build_index(args.out, trained, args.gallery, args.backend,
                                              args.batch_size, args.workers)
    print(f'Gallery index "{index.folder}": {len(index.paths)} images ({report.summary()}), '
          f'backend {index.backend}')
    inference.raise_if_skipped(report.predictions, index.folder)


def query_index(args):
    search.check_query_settings(args.top, args.attr_weight)
    index = gallery_index.load_index(args.index)
    where = parse_where(args.where, index.schema) if args.where else None
    weights = args.weights or index.meta['weights']
    config_file = args.config or ('' if args.weights else index.meta['config'])
    files = query_files(args.out, args.query) if args.out else None
    query_path = osp.abspath(args.query)
    if files:
        refuse_writing_over_inputs(files, {
            query_path: 'the query image',
            **dict.fromkeys(index.files(), 'a file of the gallery index'),
            **inference.model_files(weights, config_file)})
    trained = inference.load_trained_alfo(weights, config_file, args.trust_checkpoint)
    gallery_index.check_identity(index, trained)
    feature, attributes = inference.predict_image(trained, query_path)
    allowed = search.allowed_items(index, where)
    hits = search.rank_gallery(index, search.open_search(index),
                               trained.search_features(feature[None])[0], attributes, args.top,
                               allowed, args.attr_weight)
    named = named_predictions(index.attributes[[h.row for h in hits]], index.schema)
    query_named = named_predictions(attributes[None], index.schema)[0]
    print('query: ' + ', '.join(format_prediction(n, query_named[n])
                                for n in rank_grid.SUMMARY_CLASSES + tuple(
                                    index.schema.colour_forms()) if n in query_named))
    for hit, prediction in zip(hits, named):
        print(f'{hit.rank:3d}  {hit.distance:10.4f}  {hit.path}  '
              f'{" / ".join(rank_grid.attribute_summary(prediction, index.schema))}')
    passed = search.allowed_count(index, allowed)
    found = (f'{len(hits)} results; {passed:,} of {len(index.paths):,} items pass '
             f'--where "{args.where}"' if where else
             f'{len(hits)} results of {len(index.paths):,} items')
    if files is None:
        print(f'{found} (--out FOLDER writes the picture and the ranking)')
        return
    png, ranking = files
    rank_grid.draw_ranking(query_path, query_named,
                           [(h.path, h.distance, p) for h, p in zip(hits, named)],
                           index.schema, png, title=found)
    write_file(ranking, json.dumps(
        {'query': query_path, 'where': args.where, 'passed': passed, 'items': len(index.paths),
         'attr_weight': args.attr_weight,
         'hits': [dict(vars(h), attributes={n: list(v) for n, v in p.items()})
                  for h, p in zip(hits, named)]}, indent=1).encode())
    print(f'{found}; picture "{png}", ranking "{ranking}"')


def query_files(folder, query_path):
    """The picture and the ranking of a query in the ``--out`` folder:
    ``<folder>/<query name>.png`` and ``.json`` (their writers make the folder
    if missing, once the query has been ranked)."""
    if osp.exists(folder) and not osp.isdir(folder):
        raise SearchError(f'--out "{folder}" is a file; expected a folder for the picture and '
                          'the ranking')
    stem = osp.join(folder, osp.splitext(osp.basename(query_path))[0])
    return stem + '.png', stem + '.json'


def main(argv=None):
    args = build_parser().parse_args(argv)
    logging.basicConfig(format='warning: %(message)s', level=logging.WARNING)
    action = build_index if args.command == 'index' else query_index
    return run_command(lambda: action(args), args.debug)


if __name__ == '__main__':
    sys.exit(main())
