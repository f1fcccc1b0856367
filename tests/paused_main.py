"""tools/main.py that stops at a known point of training, so that a test can
signal a run there instead of guessing when it gets there. SIGINT raises
KeyboardInterrupt as in a foreground run, however the tests were started.

With ``TEST_PAUSE_AFTER_EPOCH=N`` the run writes the file named by
``TEST_PAUSED_FILE`` once epoch N's checkpoint and history line are on disk,
then waits for a signal (SIGINT raises KeyboardInterrupt there, as anywhere in
training). Nothing of this is in the package.
"""
import os
import runpy
import signal
import sys
from pathlib import Path

from alfo_torchreid.engine import engine as engine_module

REPO = Path(__file__).resolve().parents[1]
train = engine_module.ResumableEngineMixin.train


def train_then_pause(self, **kwargs):
    train(self, **kwargs)
    if self.epoch + 1 == int(os.environ['TEST_PAUSE_AFTER_EPOCH']):
        Path(os.environ['TEST_PAUSED_FILE']).write_text(str(os.getpid()))
        while True:
            signal.pause()


def command(*args):
    """The command line running tools/main.py with ``args`` through this file."""
    return [sys.executable, __file__, *map(str, args)]


if __name__ == '__main__':
    # A test suite started as a background job (`make test &`) passes SIGINT
    # on ignored, and Python keeps it ignored; Ctrl-C reaches a foreground run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    engine_module.ResumableEngineMixin.train = train_then_pause
    sys.exit(runpy.run_path(str(REPO / 'tools' / 'main.py'))['main'](sys.argv[1:]))
