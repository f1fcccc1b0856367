"""Training: torchreid's engines extended with ALFO's focal-vote loss
(:mod:`.engine`) and mixed precision / channels-last steps (:mod:`.precision`).
``engine.run()`` is torchreid's own loop."""
from alfo_torchreid.engine.engine import (BaselineEngine, BaselineTripletEngine,
                                          ImageFocalVoteEngine, unwrap)
from alfo_torchreid.engine.precision import MixedPrecision

__all__ = ['BaselineEngine', 'BaselineTripletEngine', 'ImageFocalVoteEngine', 'MixedPrecision',
           'unwrap']
