"""benchmarks/gpu_check.py: its dry run end to end (what CI runs), and a failing
section recorded without stopping the others."""
import subprocess
import sys

import pytest
from alfo_run import REPO

SECTIONS = ('environment', 'cuda-tests', 'throughput', 'evaluation', 'loader', 'toy-training')


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / 'benchmarks'))
    import gpu_check
    return gpu_check


def test_the_dry_run_passes_every_section_and_writes_the_report(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'benchmarks' / 'gpu_check.py'),
                           str(tmp_path), '--dry-run'], capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (tmp_path / 'gpu_check.md').read_text()
    for name in SECTIONS:
        assert f'## {name}: ok' in report, name
    assert '| mode | dry run (CPU, tiny sizes) |' in report
    assert '0 failures, 0 errors' in report  # the CUDA tests: all skipped on the CPU
    for model in ('resnet50', 'pcb_p6', 'alfo'):
        assert f'| 96x32 | bf16+CL | {model} |' in report
    assert 'final test after epoch 2' in report  # trained to epoch 1, resumed to 2
    assert 'section "toy-training": ok' in (tmp_path / 'gpu_check.log').read_text()
    # what comes back from a lent machine: reports, no checkpoints
    assert sorted(p.name for p in (tmp_path / 'toy_run').iterdir()) == [
        'config.yaml', 'history.jsonl', 'metrics.json', 'train.log']
    assert not list(tmp_path.glob('**/*.pth.tar*'))


def test_a_failing_section_is_recorded_and_the_next_one_runs(gpu_check, tmp_path, monkeypatch):
    def broken(settings, device, out):
        settings.partial = 'half a table'
        raise ValueError('a fault of this section')

    monkeypatch.setitem(gpu_check.SECTIONS, 'throughput', broken)
    monkeypatch.setitem(gpu_check.SECTIONS, 'evaluation', lambda *args: 'a whole table')
    failed = gpu_check.run_sections(['throughput', 'evaluation'],
                                    gpu_check.copy.deepcopy(gpu_check.DRY), None, tmp_path,
                                    budget_s=100)
    report = (tmp_path / 'gpu_check.md').read_text()
    assert failed == 1
    assert '## throughput: FAILED' in report and 'ValueError: a fault of this section' in report
    assert 'measured before the failure:\n\nhalf a table' in report
    assert '## evaluation: ok' in report and 'a whole table' in report
    assert 'RUNNING' not in report


def test_a_section_past_its_limit_is_stopped(gpu_check, tmp_path, monkeypatch):
    def endless(settings, device, out):
        while True:
            pass

    monkeypatch.setitem(gpu_check.SECTIONS, 'loader', endless)
    settings = gpu_check.copy.deepcopy(gpu_check.DRY)
    settings.limits['loader'] = 1
    assert gpu_check.run_sections(['loader'], settings, None, tmp_path, budget_s=100) == 1
    assert 'SectionTimeout: time limit of 1 s reached' in (tmp_path / 'gpu_check.md').read_text()
