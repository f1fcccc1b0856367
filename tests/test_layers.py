"""The layers contract (.importlinter, docs/architecture.md): the package keeps
it, and an upward import or one between independent layers breaks it."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alfo_run import REPO

LINT_IMPORTS = Path(sys.executable).with_name('lint-imports')

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(),
                                reason='import-linter (the test extra) is not installed')


def lint(root):
    """lint-imports on the package under ``root``: the CompletedProcess."""
    return subprocess.run([str(LINT_IMPORTS), '--no-cache', '.importlinter'], cwd=root,
                          env={'PYTHONPATH': str(root), 'PATH': '/usr/bin:/bin'},
                          capture_output=True, text=True, timeout=300)


def package_with(tmp_path, module, line):
    """A copy of the package and contract with ``line`` appended to ``module``."""
    shutil.copytree(REPO / 'alfo_torchreid', tmp_path / 'alfo_torchreid',
                    ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copy(REPO / '.importlinter', tmp_path)
    with open(tmp_path / 'alfo_torchreid' / module, 'a') as f:
        f.write(f'\n{line}\n')
    return tmp_path


def test_the_package_keeps_its_layers():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout
    assert 'Contracts: 1 kept, 0 broken.' in proc.stdout


@pytest.mark.parametrize('module, line, message', [
    ('utils/atomic.py', 'from alfo_torchreid import run',
     'alfo_torchreid.utils is not allowed to import alfo_torchreid.run'),
    ('data/toy.py', 'from alfo_torchreid.models import ALFO',
     'alfo_torchreid.data is not allowed to import alfo_torchreid.models'),
    ('serving/export.py', 'from alfo_torchreid.engine import unwrap',
     'alfo_torchreid.serving is not allowed to import alfo_torchreid.engine'),
])
def test_an_upward_import_breaks_the_contract(tmp_path, module, line, message):
    proc = lint(package_with(tmp_path, module, line))
    assert proc.returncode == 1
    assert 'Contracts: 0 kept, 1 broken.' in proc.stdout
    assert message in proc.stdout
    importer = 'alfo_torchreid.' + module[:-3].replace('/', '.')
    assert f'- {importer} -> ' in proc.stdout
