"""The README's commands, run as written, in README order.

Every ```` ```bash ```` block of README.md is split into commands (a trailing
backslash continues a line, ``#`` starts a comment); every ```` ```python ````
block is one program. They run one after the other, in README order whatever
order the tests are taken in (:class:`ReadmeSession`), in one scratch folder that
holds the project's ``configs/`` and the files a user would bring (``query.jpg``,
``other.jpg``, ``photos/``: toy query images), in this process:
``python tools/X.py ARGS`` calls tools/X.py's ``main(ARGS)``, ``make demo``
runs tools/demo.py (its set-up is the one this suite runs in).

So that they run on the CPU in seconds, and nothing else, these are substituted
(:data:`SUBSTITUTIONS`, :data:`APPENDED`):

* ``reid-data`` and the demo's ``toy-data`` are the session's small toy tree;
* every training trains one epoch at 128x64 from no pretrained weights (the
  appended overrides of ``tools/main.py``, the same values in Python), so a
  checkpoint ``model.pth.tar-N`` the README names is ``model.pth.tar-1``;
* ``tools/make_toy_dataset.py`` writes the suite's small toy tree.

Commands that need a network, several GPUs or hours are skipped with the
reason (:data:`SKIPPED`); the reason names the test that covers them.

After each step, the ``latest.pth.tar`` of every run that no later step resumes
is removed (a few hundred MB each; what later steps read, the numbered
snapshots, histories and metrics, stays).
"""
import contextlib
import io
import re
import runpy
import shlex
import shutil
import traceback

import pytest

from alfo_torchreid import config
from alfo_run import REPO, market_split
from conftest import TOY_SETTINGS, remove_resume_states

README = REPO / 'README.md'

SHRINK = {'train.max_epoch': '1', 'data.height': '128', 'data.width': '64',
          'data.workers': '0', 'model.pretrained': ''}
APPENDED = {
    'tools/main.py': [word for pair in SHRINK.items() for word in pair],
    'tools/make_toy_dataset.py': [
        word for key, value in TOY_SETTINGS['market1501'].items()
        for word in ('--' + key.replace('_', '-'), str(value))],
}
SUBSTITUTIONS = [
    (r'(?<![\w/-])reid-data(?![\w-])', '{toy_root}'),
    (r'model\.pth\.tar-\d+', 'model.pth.tar-1'),
    (r'pretrained=True', 'pretrained=False'),
    (r'max_epoch=\d+', 'max_epoch=1'),
    (r'height=256, width=128', 'height=128, width=64'),
]
NETWORK = 'needs the network (offline here; tests/test_download*.py and test_weights.py ' \
          'serve the same downloads from a local server)'
SKIPPED = [
    (r'^make test$', 'is the command that runs this suite'),
    (r'tools/download\.py(?!.*--layout)', NETWORK),
    (r'model\.pretrained resnet50', NETWORK),
    (r'^torchrun ', 'needs several GPUs or machines; tests/engine/test_distributed.py runs '
                    'tools/main.py under two gloo processes'),
    (r'tools/reproduce\.py.*--table strong', 'trains three runs per seed (the --quick form: '
                                              'minutes on the CPU); tests/test_strong.py trains '
                                              'the strong recipe on the toy set and '
                                              'tests/test_reproduce.py checks the strong '
                                              "table's runs and rows"),
    (r'tools/reproduce\.py(?!.*--quick)', 'trains six full runs per seed (hours on a GPU); '
                                          'tests/test_reproduce.py runs the same pipeline '
                                          'with --quick'),
    (r'tools/reproduce\.py.*--quick', 'tests/test_reproduce.py runs this command (with a '
                                      'toy --root, --out and smaller images) four times: '
                                      'interrupted, continued, finished and once more'),
]


def readme_blocks(text):
    """``[(language, code)]`` of the README's fenced bash and python blocks."""
    return re.findall(r'^```(bash|python)\n(.*?)^```$', text, flags=re.M | re.S)


def bash_commands(code):
    """The commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r'\\\n\s*', ' ', code)
    lines = (line.split(' #')[0].strip() for line in joined.splitlines())
    return [line for line in lines if line and not line.startswith('#')]


def readme_steps():
    """``[(language, text)]``: one step per bash command or python block."""
    steps = []
    for language, code in readme_blocks(README.read_text()):
        if language == 'bash':
            steps += [('bash', command) for command in bash_commands(code)]
        else:
            steps.append(('python', code))
    return steps


STEPS = readme_steps()


def skip_reason(command):
    for pattern, reason in SKIPPED:
        if re.search(pattern, command):
            return reason
    return None


def substituted(text, toy_root):
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement.format(toy_root=toy_root), text)
    return text


@pytest.fixture(scope='module')
def scratch(module_tmp, toy_root):
    """The folder a user runs the README in: configs, the demo's toy-data, photos."""
    folder = module_tmp('readme')
    (folder / 'configs').symlink_to(REPO / 'configs')
    (folder / 'toy-data').symlink_to(toy_root)
    queries = sorted(market_split(toy_root, 'query').glob('*.jpg'))
    shutil.copy(queries[0], folder / 'query.jpg')
    shutil.copy(queries[-1], folder / 'other.jpg')
    (folder / 'photos').mkdir()
    for image in queries[1:4]:
        shutil.copy(image, folder / 'photos' / image.name)
    return folder


def resumed_folders(steps):
    """The ``data.save_dir`` of each run that one of ``steps`` resumes
    (``train.resume True``): the override, or the config file's."""
    folders = set()
    for _, text in steps:
        if 'train.resume True' in text:
            given = re.search(r'data\.save_dir (\S+)', text)
            config_file = re.search(r'--config-file (\S+)', text).group(1)
            folders.add(given.group(1) if given else
                        config.load_config(str(REPO / config_file)).data.save_dir)
    return folders


def run_bash(command, toy_root):
    """Runs one README command in this process; returns its exit status."""
    words = shlex.split(substituted(command, toy_root))
    if words == ['make', 'demo']:
        words = ['python', 'tools/demo.py']
    assert words[0] == 'python' and words[1].startswith('tools/'), \
        f'the README runs tools as "python tools/...": {command}'
    tool = words[1]
    argv = words[2:] + APPENDED.get(tool, [])
    main = runpy.run_path(str(REPO / tool), run_name='readme').get('main')
    if main is None:  # tools/demo.py is a script
        return _run_script(REPO / tool)
    return main(argv)


def _run_script(path):
    try:
        runpy.run_path(str(path), run_name='__main__')
    except SystemExit as stop:
        return stop.code
    return 0


def test_the_readme_has_two_set_up_commands_and_ci_runs_its_test_command():
    first_block = bash_commands(readme_blocks(README.read_text())[0][1])
    assert first_block == ['make demo', 'make test']
    ci = (REPO / '.ci' / 'run').read_text().split('\n')
    assert 'make test' in [line.strip() for line in ci]


def test_every_step_is_a_tool_a_python_program_or_skipped_with_a_reason():
    assert len(STEPS) > 20
    for language, text in STEPS:
        if language == 'bash' and not skip_reason(text):
            assert text == 'make demo' or re.match(r'python tools/\w+\.py', text), text


class ReadmeSession:
    """The README's steps run once each, in README order, whatever order
    pytest takes their tests in (``pytest -p randomly``): a step's test first
    runs the steps before it that have not run, as a user would have."""

    def __init__(self, scratch, toy_root):
        self.scratch, self.toy_root, self.failures = scratch, toy_root, []

    def failure(self, number):
        """What went wrong in step ``number`` (None: it ran well or is skipped),
        running it and the steps before it first where they have not run."""
        while len(self.failures) <= number:
            self.failures.append(self._run(len(self.failures)))
        return self.failures[number]

    def _run(self, number):
        language, text = STEPS[number]
        if language == 'bash' and skip_reason(text):
            return None
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = self._status(language, text)
        except Exception:  # the step's failure, reported by its own test
            return f'{text}\n{out.getvalue()[-3000:]}{traceback.format_exc()}'
        finally:
            remove_resume_states(self.scratch, keep=resumed_folders(STEPS[number + 1:]))
        output = out.getvalue() + err.getvalue()
        if status not in (0, None) or 'Traceback' in output:
            return f'{text}\nexit status {status}\n{output[-6000:]}'
        return None

    def _status(self, language, text):
        if language == 'bash':
            return run_bash(text, self.toy_root)
        exec(compile(substituted(text, self.toy_root), 'README.md', 'exec'), {})
        return 0


@pytest.fixture(scope='module')
def readme(scratch, toy_root):
    return ReadmeSession(scratch, toy_root)


@pytest.mark.parametrize('number', range(len(STEPS)),
                         ids=[f'{i:02d}-{text.splitlines()[0][:60]}'
                              for i, (_, text) in enumerate(STEPS)])
def test_readme_step(number, readme, monkeypatch):
    language, text = STEPS[number]
    reason = skip_reason(text) if language == 'bash' else None
    if reason:
        pytest.skip(reason)
    monkeypatch.chdir(readme.scratch)
    failure = readme.failure(number)
    assert failure is None, failure
