"""ALFO (attribute-local feature overlap network) for torchreid.

``import alfo_torchreid`` registers into torchreid:

* datasets ``market1501_attr`` and ``dukemtmcreid_attr`` (torchreid's Market-1501
  and DukeMTMC-reID whose samples also carry attribute labels);
* models ``alfo`` (Market-1501_attribute schema) and ``alfo_duke``.

Then ``torchreid.data.ImageDataManager(sources='market1501_attr', ...)`` and
``torchreid.models.build_model('alfo', ...)`` work as for torchreid's own.
"""
import warnings

# We evaluate with our own vectorised evaluator (alfo_torchreid.evaluation.metrics), so
# torchreid's advice to build its Cython one does not apply.
warnings.filterwarnings('ignore', message='Cython evaluation', category=UserWarning)
# `python -m alfo_torchreid.data.datasets` runs a module this package has imported to
# register it; its command line reads no module state, so runpy's caution is moot.
warnings.filterwarnings('ignore', message="'alfo_torchreid.data.datasets' found in sys.modules",
                        category=RuntimeWarning)

from alfo_torchreid import data, models  # noqa: E402
from alfo_torchreid.data import DUKE_SCHEMA, MARKET_SCHEMA, AttributeSchema  # noqa: E402
from alfo_torchreid.models import ALFO  # noqa: E402

__version__ = '0.1.0'

data.register()
models.register()

__all__ = ['ALFO', 'AttributeSchema', 'DUKE_SCHEMA', 'MARKET_SCHEMA', '__version__']
