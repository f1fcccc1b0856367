"""Overlapping horizontal stripes of a feature map (docs/method.md, "Stripe geometry").

ALFO cuts the backbone's feature map ``[B, C, H, W]`` into ``P`` horizontal
stripes of equal height ``h`` whose tops are ``s`` rows apart, so that the
stripes tile the map from its first to its last row::

    (P - 1) * s + h = H

The default geometry takes the largest stride that still lets neighbouring
stripes overlap (``h > s``): stripes as distinct as possible while sharing
rows. For ``P = 6``: ``H = 16`` gives ``h = 6, s = 2``; ``H = 8`` gives
``h = 3, s = 1``; ``H = 7`` gives ``h = 2, s = 1``. A map of exactly ``P`` rows
can only be cut into ``P`` disjoint one-row stripes; a shorter one cannot be
cut at all.
"""
from functools import lru_cache
from typing import NamedTuple, Optional, Tuple

import torch

from alfo_torchreid.utils.errors import ConfigError


class StripeGeometry(NamedTuple):
    """Where the ``num_parts`` stripes lie on a feature map of ``map_height`` rows.

    Stripe ``i`` covers rows ``[i * stride, i * stride + height)``.
    """
    map_height: int
    num_parts: int
    height: int
    stride: int

    @property
    def starts(self) -> Tuple[int, ...]:
        """First row of each stripe, top to bottom."""
        return tuple(i * self.stride for i in range(self.num_parts))

    @property
    def overlap(self) -> int:
        """Rows shared by neighbouring stripes (0 when they only touch)."""
        return max(self.height - self.stride, 0) if self.num_parts > 1 else 0


@lru_cache(maxsize=None)
def overlapping_stripes(map_height: int, num_parts: int = 6,
                        stripe_height: Optional[int] = None,
                        stripe_stride: Optional[int] = None) -> StripeGeometry:
    """The stripe geometry for a feature map of ``map_height`` rows.

    Args:
        map_height: rows ``H`` of the feature map.
        num_parts: number of stripes ``P``.
        stripe_height: ``h``, to override the default geometry; the stride then
            follows from ``(P - 1) * s + h = H``.
        stripe_stride: ``s``, to override the default geometry; the height then
            follows from the same equation. Both may be given if they satisfy it.

    Raises:
        ConfigError: the map is too short for ``num_parts`` stripes, or the
            overrides do not tile it.
    """
    H, P = map_height, num_parts
    if P < 1:
        raise ConfigError(f'num_parts must be at least 1, got {P}')
    if H < P:
        raise ConfigError(
            f'the feature map has {H} rows (H={H}), too few for num_parts={P} stripes: '
            f'each stripe needs a row of its own. Use a taller input, last_stride=1 '
            f'(twice the rows) or fewer stripes')
    if P == 1:
        return StripeGeometry(H, 1, H, H)
    if stripe_height is None and stripe_stride is None:
        s = max((H - 1) // P, 1)  # the largest s with h = H - (P-1)s > s
        return StripeGeometry(H, P, H - (P - 1) * s, s)
    s = stripe_stride if stripe_stride is not None else (H - stripe_height) // (P - 1)
    h = stripe_height if stripe_height is not None else H - (P - 1) * s
    if s < 1 or h < 1 or (P - 1) * s + h != H:
        raise ConfigError(
            f'stripe height {stripe_height} and stride {stripe_stride} cannot tile a feature map '
            f'of H={H} rows with num_parts={P} stripes: they must satisfy '
            f'(num_parts - 1) * stride + height = H with height, stride >= 1')
    return StripeGeometry(H, P, h, s)


def pooling_matrix(geometry: StripeGeometry, width: int, device=None, dtype=torch.float32):
    """Weights that average a flattened ``H x W`` map over the whole map and each stripe.

    Returns:
        ``[H * W, 1 + P]``: column 0 holds ``1 / (H W)`` everywhere; column
        ``1 + i`` holds ``1 / (h W)`` on the cells of stripe ``i``, 0 elsewhere.
    """
    H, h = geometry.map_height, geometry.height
    row = torch.arange(H, device=device).unsqueeze(1)  # [H, 1]
    top = torch.arange(geometry.num_parts, device=device) * geometry.stride  # [P]
    in_stripe = (row >= top) & (row < top + h)  # [H, P]
    weights = torch.cat((torch.full((H, 1), 1 / (H * width), device=device, dtype=dtype),
                         in_stripe.to(dtype) / (h * width)), dim=1)
    return weights.repeat_interleave(width, dim=0)


def pool_stripes(feature_map, geometry: StripeGeometry):
    """Average-pools the whole map and every stripe (as PCB) in one matrix product.

    One product instead of two pools: its backward pass spreads a single
    gradient over the full-size map, so the stripes cost a training step
    about as little as the global pool alone.

    Args:
        feature_map: ``[B, C, H, W]`` with ``H == geometry.map_height``.
        geometry: from :func:`overlapping_stripes`.

    Returns:
        ``[B, 1 + P, C]``, contiguous: row 0 is the global average pool; row
        ``1 + i`` the mean of stripe ``i`` (top to bottom) over its
        ``height x W`` window.
    """
    weights = pooling_matrix(geometry, feature_map.shape[3], feature_map.device,
                             feature_map.dtype)
    return (feature_map.flatten(2) @ weights).transpose(1, 2).contiguous()
