"""torchreid on today's stack (torch 2.14, numpy 2, Pillow 13) through alfo_torchreid.utils.compat."""
import numpy as np
import pytest
import torch
import torchreid
from PIL import Image

from alfo_torchreid.utils import checkpoints, compat
from alfo_torchreid.utils.errors import ImageReadError, UntrustedCheckpointError


def _model_and_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    optimizer = torchreid.optim.build_optimizer(model, optim='adam', lr=0.01)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler='multi_step',
                                                   stepsize=[2, 4])
    model(torch.randn(8, 6)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_torchreids_own_checkpoint_fails_in_torchreid_but_resumes_here(tmp_path):
    model, optimizer, scheduler = _model_and_optimizer()
    # exactly what torchreid's Engine.save_model writes (rank1 is numpy's cmc[0])
    torchreid.utils.save_checkpoint(
        {'state_dict': model.state_dict(), 'epoch': 7, 'rank1': np.float32(0.625),
         'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict()},
        str(tmp_path))
    path = tmp_path / 'model.pth.tar-7'
    with pytest.raises(Exception, match='weights_only'):
        torchreid.utils.resume_from_checkpoint(str(path), model)

    fresh, fresh_optimizer, fresh_scheduler = _model_and_optimizer()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh_optimizer.state.clear()
    epoch, checkpoint = checkpoints.load_training_state(path, fresh, None, fresh_optimizer,
                                                        fresh_scheduler)
    assert epoch == 7 and checkpoint['rank1'] == pytest.approx(0.625)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    state = optimizer.state_dict()['state'][0]
    assert torch.equal(fresh_optimizer.state_dict()['state'][0]['exp_avg'], state['exp_avg'])
    assert fresh_scheduler.last_epoch == scheduler.last_epoch == 1


class _RunsCode:
    def __reduce__(self):
        return (exec, ('raise SystemExit("code from the checkpoint ran")',))


def test_a_pickled_object_is_refused_without_running_it(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'payload': _RunsCode()}, path)
    with pytest.raises(UntrustedCheckpointError,
                       match=r'evil.pth" holds objects beyond tensors.*builtins.exec.*'
                             r'trust_checkpoint=True'):
        checkpoints.load_checkpoint(path)


def test_pretrained_weights_skip_and_list_what_does_not_fit(tmp_path):
    source = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 751))
    target = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 10))
    torch.save({'state_dict': {f'module.{k}': v for k, v in source.state_dict().items()}},
               tmp_path / 'w.pth')
    checkpoint = checkpoints.load_checkpoint(tmp_path / 'w.pth')
    loaded, skipped = checkpoints.load_matching_weights(target,
                                                      checkpoints.state_dict_of(checkpoint))
    assert loaded == ['0.weight', '0.bias'] and skipped == ['1.weight', '1.bias']
    assert torch.equal(target[0].weight, source[0].weight)


@pytest.mark.parametrize('content, message', [
    (None, 'does not exist'),
    (b'\xff\xd8\xff\xe0' + b'\x00' * 40, 'cannot be read'),
    (b'plain text, not an image', 'cannot be read'),
])
def test_read_image_fails_at_once_naming_the_file(tmp_path, content, message, monkeypatch):
    path = tmp_path / '0002_c1s1_000451_03.jpg'
    if content is not None:
        path.write_bytes(content)
    opened = []
    real_open = Image.open

    def open_once(*args, **kwargs):  # torchreid's read_image would retry forever
        opened.append(args[0])
        assert len(opened) == 1, 'the image was opened again'
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, 'open', open_once)
    with pytest.raises(ImageReadError, match=f'"{path}" {message}'):
        compat.read_image(str(path))
    assert opened == [str(path)]


def test_truncated_jpeg_is_refused(tmp_path):
    path = tmp_path / 'image.jpg'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 32, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageReadError, match='image file is truncated'):
        compat.read_image(str(path))


def test_every_torchreid_transform_runs_on_pillow_13():
    transforms = ['random_flip', 'random_crop', 'random_patch', 'color_jitter', 'random_erase']
    train, test = torchreid.data.transforms.build_transforms(64, 32, transforms=transforms)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 40, 3), np.uint8))
    for _ in range(3):
        assert train(image).shape == (3, 64, 32)
    assert test(image).shape == (3, 64, 32)


def test_alfo_models_are_in_torchreids_factory():
    import alfo_torchreid  # noqa: F401
    assert {'alfo', 'alfo_duke', 'pcb_p6'} <= set(compat.model_factory())
    model = torchreid.models.build_model('alfo_duke', 5, loss='softmax', pretrained=False)
    assert model.schema.dataset == 'dukemtmcreid'
