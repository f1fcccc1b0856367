"""alfo_torchreid.utils.own_inputs: an output that is one of the inputs, however spelled."""
import os

import pytest

from alfo_torchreid.utils.errors import OutputError
from alfo_torchreid.utils.own_inputs import refuse_writing_over_inputs


def test_an_output_reaching_an_input_by_any_path_is_refused(tmp_path):
    weights = tmp_path / 'run' / 'model.pth'
    weights.parent.mkdir()
    weights.write_bytes(b'weights')
    (tmp_path / 'hard').hardlink_to(weights)
    (tmp_path / 'soft').symlink_to(weights)
    inputs = {str(weights): 'the weights'}
    for out in (weights, tmp_path / 'run' / '..' / 'run' / 'model.pth', tmp_path / 'hard',
                tmp_path / 'soft'):
        with pytest.raises(OutputError, match=f'--out would write "{out}" over the weights'):
            refuse_writing_over_inputs([tmp_path / 'new.onnx', out], inputs)


def test_new_files_and_other_files_pass(tmp_path):
    (tmp_path / 'a').write_bytes(b'a')
    (tmp_path / 'b').write_bytes(b'a')  # same bytes, another file
    refuse_writing_over_inputs([tmp_path / 'b', tmp_path / 'new', ''],
                               {str(tmp_path / 'a'): 'an input', '': 'nothing',
                                str(tmp_path / 'missing'): 'a missing input'})
    assert sorted(os.listdir(tmp_path)) == ['a', 'b']
