"""Random erasing as the strong configs get it: torchreid's ``random_erase``
transform, with BoT's settings (probability 0.5, area 2-40 % of the image,
aspect ratio 0.3-3.3, filled with the normalisation mean, after normalising),
and the statistics of what it erases."""
import contextlib
import io
import random

import torch
import torchreid

from alfo_torchreid import config, run as run_lib

STRONG = 'configs/strong/resnet50_bnneck_market.yaml'
H, W, DRAWS = 256, 128, 2000
# a binomial fraction of DRAWS draws at p = 0.5: 5 standard deviations
P_TOL = 5 * (0.25 / DRAWS) ** 0.5
# rounding h and w to whole pixels moves the area by at most (h + w) / 2 + 1/4
AREA_SLACK = ((H + W) / 2 + 0.25) / (H * W)


def train_transform(cfg):
    with contextlib.redirect_stdout(io.StringIO()):
        return torchreid.data.transforms.build_transforms(
            cfg.data.height, cfg.data.width, transforms=cfg.data.transforms,
            norm_mean=cfg.data.norm_mean, norm_std=cfg.data.norm_std)[0]


def eraser():
    cfg = config.load_config(STRONG)
    steps = train_transform(cfg).transforms
    kinds = [type(t).__name__ for t in steps]
    assert kinds[-2:] == ['Normalize', 'RandomErasing']  # erases the normalised image
    return steps[-1], cfg


def test_strong_configs_erase_with_bot_settings():
    erase, cfg = eraser()
    assert (erase.probability, erase.sl, erase.sh, erase.r1) == (0.5, 0.02, 0.4, 0.3)
    assert list(erase.mean) == list(cfg.data.norm_mean)


def test_data_erase_probability_reaches_the_training_images(toy_root):
    cfg = config.load_config(STRONG, ['data.root', str(toy_root), 'data.erase_probability',
                                      '0.25', 'data.height', '64', 'data.width', '32',
                                      'use_gpu', 'False', 'train.batch_size', '16'])
    with contextlib.redirect_stdout(io.StringIO()):
        datamanager = run_lib.build_datamanager(cfg)
    erase = datamanager.train_loader.dataset.transform.transforms[-1]
    assert type(erase).__name__ == 'RandomErasing' and erase.probability == 0.25


def erased_box(img, mean):
    """(h, w) of the erased rectangle of ``img`` (filled with 1 before), or None."""
    hit = (img == torch.tensor(mean).view(3, 1, 1)).all(0)  # [H, W]
    if not hit.any():
        return None
    rows, cols = hit.any(1).nonzero().flatten(), hit.any(0).nonzero().flatten()
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    assert int(hit.sum()) == h * w  # one filled rectangle
    return h, w


def test_erasing_probability_and_area_statistics():
    erase, _ = eraser()
    random.seed(0)
    boxes = [erased_box(erase(torch.ones(3, H, W)), erase.mean) for _ in range(DRAWS)]
    done = [b for b in boxes if b is not None]
    assert abs(len(done) / DRAWS - 0.5) < P_TOL
    areas = [h * w / (H * W) for h, w in done]
    assert min(areas) >= 0.02 - AREA_SLACK and max(areas) <= 0.4 + AREA_SLACK
    # the whole range is drawn: small and large patches both occur
    assert min(areas) < 0.05 and max(areas) > 0.35
    for h, w in done:  # aspect ratio in [0.3, 1/0.3], up to a pixel of rounding
        assert 0.3 * (w - 1) <= h + 1 and h - 1 <= (w + 1) / 0.3
