"""What a run reads: the attribute schemas and annotation files
(:mod:`.attributes`), the attribute-carrying datasets registered into torchreid
(:mod:`.datasets`), the identity samplers (:mod:`.samplers`) and the embedded
toy dataset (:mod:`.toy`). Imports only :mod:`alfo_torchreid.utils`."""
from alfo_torchreid.data.attributes import DUKE_SCHEMA, MARKET_SCHEMA, UNKNOWN, AttributeSchema
from alfo_torchreid.data.datasets import DATASETS, register

__all__ = ['AttributeSchema', 'DATASETS', 'DUKE_SCHEMA', 'MARKET_SCHEMA', 'UNKNOWN', 'register']
