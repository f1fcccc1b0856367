"""tools/export.py and alfo_torchreid.serving.export: ONNX and TorchScript, checked
against PyTorch."""
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from alfo_run import run_tool

from alfo_torchreid.data.attributes import MARKET_SCHEMA
from alfo_torchreid.serving import export
from alfo_torchreid.utils.errors import ExportError

onnxruntime = pytest.importorskip('onnxruntime', reason='the export extra is not installed')


@pytest.fixture(scope='module')
def reference(alfo_model):
    """images -> PyTorch's outputs, from an ALFO built here from the checkpoint."""
    def outputs(images):
        with torch.no_grad():
            feature, probs = alfo_model.features_and_attributes(images)
        return feature.numpy(), torch.cat(probs, 1).numpy()
    return outputs


# torch's TorchScript-based ONNX exporter (its dynamo one needs onnxscript) and
# torch.jit announce their removal
@pytest.mark.filterwarnings('ignore:The feature will be removed:DeprecationWarning')
@pytest.mark.filterwarnings('ignore:You are using the legacy TorchScript-based ONNX export')
def test_onnx_export_matches_pytorch_with_any_batch(alfo_weights, reference, tmp_path, capsys):
    out = tmp_path / 'alfo.onnx'
    status, printed, _ = run_tool('export', '--weights', alfo_weights, '--format', 'onnx',
                                  '--out', out)
    assert status == 0 and f'Exported "{out}"' in printed
    session = onnxruntime.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    assert session.get_inputs()[0].shape[0] == 'batch'
    # one image: the export was traced with 2 and checked with 3
    images = torch.randn(1, 3, 128, 64, generator=torch.Generator().manual_seed(1))
    feature, attributes = session.run(['feature', 'attributes'], {'images': images.numpy()})
    want_feature, want_attributes = reference(images)
    assert feature.shape == (1, 2048) and attributes.shape == (1, 56)
    assert np.abs(feature - want_feature).max() <= 1e-4
    assert np.abs(attributes - want_attributes).max() <= 1e-4
    described = json.loads((tmp_path / 'alfo.onnx.json').read_text())
    assert described['input']['shape'] == ['batch', 3, 128, 64]
    gender = next(c for c in described['outputs']['attributes']['columns']
                  if c['attribute'] == 'gender')
    start = sum(MARKET_SCHEMA.num_classes[:MARKET_SCHEMA.index('gender')])
    assert gender == {'attribute': 'gender', 'classes': ['male', 'female'],
                      'columns': [start, start + 2]}
    assert max(described['max_abs_diff_vs_pytorch'].values()) <= 1e-4


@pytest.mark.filterwarnings('ignore:`torch.jit:FutureWarning')
def test_torchscript_export_matches_pytorch(trained_alfo, reference, tmp_path):
    report = export.export_model(trained_alfo, 'torchscript', tmp_path / 'alfo.pt')
    loaded = torch.jit.load(report.path)
    images = torch.randn(1, 3, 128, 64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad(), torch.jit.optimized_execution(False):
        feature, attributes = loaded(images)
    want_feature, want_attributes = reference(images)
    assert np.abs(feature.numpy() - want_feature).max() <= 1e-4
    assert np.abs(attributes.numpy() - want_attributes).max() <= 1e-4


def test_an_export_that_differs_is_not_written(trained_alfo, tmp_path, monkeypatch):
    def exporter_off_by_a_little(network, example, check, partial):
        partial.file.write(b'model')
        with torch.no_grad():
            feature, attributes = network(check)
        return feature, attributes + 2e-4

    monkeypatch.setattr(export, '_export_torchscript', exporter_off_by_a_little)
    monkeypatch.setattr(export, 'CHECK_BATCH', 1)
    with pytest.raises(ExportError, match=r'differs from PyTorch by 2\.0\de-04 \(> 0\.0001'):
        export.export_model(trained_alfo, 'torchscript', tmp_path / 'alfo.pt')
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('out', ['model/model.pth.tar-1', 'config.yaml'])
def test_an_export_never_writes_over_its_weights_or_config(alfo_weights, tmp_path, capsys, out):
    run = tmp_path / 'run'
    shutil.copytree(alfo_weights.parent.parent, run)
    before = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
    status, _, err = run_tool('export', '--weights', run / 'model' / alfo_weights.name,
                              '--out', run / out)
    what = 'the config' if out == 'config.yaml' else 'the weights'
    assert status == 2 and err.strip() == (
        f'error: --out would write "{run / out}" over {what} "{run / out}", which this command '
        'reads: give another --out')
    assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == before


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(ExportError, match=r'needs onnxruntime: pip install '
                                          r'alfo-torchreid\[export\]'):
        export.import_export_libraries()
