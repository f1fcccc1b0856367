"""What a run reads: the attribute schemas and annotation files
(:mod:`.attributes`; schema files: :mod:`.schema_file`), the attribute-carrying
datasets registered into torchreid (:mod:`.datasets`), datasets of one's own
from a manifest (:mod:`.manifest`), the identity samplers (:mod:`.samplers`) and
the embedded toy dataset (:mod:`.toy`). Imports only :mod:`alfo_torchreid.utils`."""
from alfo_torchreid.data.attributes import (DUKE_SCHEMA, MARKET_SCHEMA, UNKNOWN, AttributeSchema,
                                            load_schema)
from alfo_torchreid.data.datasets import DATASETS, register

__all__ = ['AttributeSchema', 'DATASETS', 'DUKE_SCHEMA', 'MARKET_SCHEMA', 'UNKNOWN', 'load_schema',
           'register']
