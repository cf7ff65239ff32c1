"""Per-frame region similarity J and contour accuracy F (``docs/metrics.md``).

Both functions take masks of shape (H, W) or (T, H, W) as numpy arrays or torch tensors
of any dtype (non-zero means foreground) and return float64 tensors with the leading
shape kept: a 0-d tensor for one frame, shape (T,) for a clip. All frames are scored in
one batched pass, so the cost is a handful of tensor ops per clip rather than a Python
loop per frame; the values equal the DAVIS reference evaluator's to the last bit of the
count ratios.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["jaccard", "f_measure", "boundary_map", "boundary_radius"]


def jaccard(pred, gt, void=None) -> torch.Tensor:
    """Region similarity ``|P ∩ G| / |P ∪ G|`` over non-void pixels, per frame.

    Args:
        pred, gt: (H, W) or (T, H, W) masks; non-zero is foreground.
        void: optional mask of the same shape; its pixels are ignored.
    Returns:
        float64 tensor of shape () or (T,); a frame whose union is empty scores 1.
    """
    pred, gt, void, squeeze = _as_frames(pred, gt, void)
    if void is None:  # both counts are zero outside the masks' joint box
        pred, gt = _crop_to_content(pred, gt)
    intersection, union = pred & gt, pred | gt
    if void is not None:
        intersection, union = intersection & ~void, union & ~void
    intersection = _count_per_frame(intersection).to(torch.float64)
    union = _count_per_frame(union).to(torch.float64)
    scores = torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
    return scores[0] if squeeze else scores


def f_measure(pred, gt, void=None, bound_th: float = 0.008) -> torch.Tensor:
    """Contour accuracy: F-score of boundary pixels matched within a disk tolerance.

    Args:
        pred, gt: (H, W) or (T, H, W) masks; non-zero is foreground.
        void: optional mask; void pixels are cleared in both masks before anything else.
        bound_th: tolerance as a fraction of the image diagonal (< 1), or a radius in
            pixels (>= 1).
    Returns:
        float64 tensor of shape () or (T,).
    """
    pred, gt, void, squeeze = _as_frames(pred, gt, void)
    if void is not None:
        pred, gt = pred & ~void, gt & ~void
    height, width = pred.shape[-2:]
    radius = boundary_radius(height, width, bound_th)

    pred, gt = _crop_to_content(pred, gt)
    pred_boundary, gt_boundary = boundary_map(pred), boundary_map(gt)
    n_pred = _count_per_frame(pred_boundary).to(torch.float64)
    n_gt = _count_per_frame(gt_boundary).to(torch.float64)
    pred_packed, gt_packed = _pack_rows(pred_boundary), _pack_rows(gt_boundary)
    matched_pred = _count_near(pred_packed, gt_packed, radius)
    matched_gt = _count_near(gt_packed, pred_packed, radius)

    # Empty boundaries follow the reference: nothing predicted -> P=1, nothing to find -> R=1.
    precision = torch.where(n_pred > 0, matched_pred / n_pred.clamp_min(1), torch.ones_like(n_pred))
    recall = torch.where(n_gt > 0, matched_gt / n_gt.clamp_min(1), torch.ones_like(n_gt))
    precision = torch.where((n_pred > 0) & (n_gt == 0), torch.zeros_like(precision), precision)
    recall = torch.where((n_pred == 0) & (n_gt > 0), torch.zeros_like(recall), recall)

    total = precision + recall
    scores = torch.where(total > 0, 2 * precision * recall / total.clamp_min(1e-300), torch.zeros_like(total))
    return scores[0] if squeeze else scores


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Tolerance radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` if >= 1."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def boundary_map(masks: torch.Tensor) -> torch.Tensor:
    """Boundary pixels of bool masks (T, H, W), exactly as DAVIS' ``seg2bmap``.

    A pixel is boundary when it differs from its east, south or south-east neighbour
    (pixels past the edge read as 0); the last row compares east only, the last column
    south only, and the bottom-right pixel is never boundary, so the image border itself
    creates no boundary.
    """
    east = torch.zeros_like(masks)
    south = torch.zeros_like(masks)
    south_east = torch.zeros_like(masks)
    east[:, :, :-1] = masks[:, :, 1:]
    south[:, :-1, :] = masks[:, 1:, :]
    south_east[:, :-1, :-1] = masks[:, 1:, 1:]
    boundary = (masks ^ east) | (masks ^ south) | (masks ^ south_east)
    boundary[:, -1, :] = masks[:, -1, :] ^ east[:, -1, :]
    boundary[:, :, -1] = masks[:, :, -1] ^ south[:, :, -1]
    boundary[:, -1, -1] = False
    return boundary


def _count_per_frame(masks: torch.Tensor) -> torch.Tensor:
    """(T,) int64 foreground pixels of each bool (T, H, W) frame. On the CPU through numpy,
    whose count is several times faster than torch's bool reductions."""
    if masks.device.type == "cpu":
        return torch.from_numpy(np.count_nonzero(masks.reshape(masks.shape[0], -1).numpy(), axis=1).astype(np.int64))
    return masks.flatten(1).sum(dim=1)


def _crop_to_content(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop (T, H, W) masks to their joint foreground box plus a one-pixel margin.

    Exact for J, whose counts are zero outside that box, and for F: every boundary pixel
    lies inside it, and with the margin the crop's own last row and column hold no
    foreground, so the edge rules of :func:`boundary_map` give the same values as on the
    full frame. Only the tolerance radius depends on the full size, and it is computed
    before cropping.
    """
    occupied = (pred | gt).any(dim=0)
    rows = occupied.any(dim=1).nonzero()
    cols = occupied.any(dim=0).nonzero()
    if rows.numel() == 0:
        return pred[:, :1, :1], gt[:, :1, :1]
    height, width = occupied.shape
    top, bottom = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)
    left, right = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)
    return pred[:, top:bottom, left:right], gt[:, top:bottom, left:right]


_WORD = 32  # pixels per packed word; int64 lanes keep shifts and popcounts free of sign bits
_LOW = (1 << _WORD) - 1


def _count_near(points: torch.Tensor, targets: torch.Tensor, radius: int) -> torch.Tensor:
    """Per frame, how many ``points`` pixels have a ``targets`` pixel within the disk:
    ``(points & dilate(targets, disk(radius))).sum()``, outside the image read as 0, as the
    official evaluator's ``cv2.dilate`` with ``skimage.morphology.disk`` computes it.

    The dilation runs on rows packed 32 pixels to a word, so its cost does not grow with
    the number of boundary pixels: the disk is a stack of horizontal segments, one per row
    offset ``dy`` with half width ``floor(sqrt(r² - dy²))``; the targets widened by k pixels
    grow one k at a time, and each is OR-ed in, shifted by ``±dy``, for the rows whose half
    width is k.

    Args:
        points, targets: (T, H, W) masks packed by :func:`_pack_rows`.
    Returns:
        float64 (T,) counts.
    """
    height = points.shape[1]
    rows_of_half_width: dict[int, list[int]] = {}
    for dy in range(radius + 1):
        rows_of_half_width.setdefault(math.isqrt(radius * radius - dy * dy), []).append(dy)
    dilated = torch.zeros_like(targets)
    widened = targets.clone()
    for k in range(radius + 1):
        if k:
            widened |= _shift_pixels(targets, k) | _shift_pixels(targets, -k)
        for dy in rows_of_half_width.get(k, []):
            for offset in {dy, -dy}:
                _or_rows_shifted(dilated, widened, offset, height)
    return _popcount(points & dilated).sum(dim=(1, 2)).to(torch.float64)


def _pack_rows(masks: torch.Tensor) -> torch.Tensor:
    """bool (T, H, W) -> int64 (T, H, ceil(W / 32)): pixel x of a row is bit x % 32 of word
    x // 32. On the CPU through numpy's packbits, several times faster than torch ops."""
    if masks.device.type != "cpu":
        return _pack_rows_torch(masks)
    num_frames, height, width = masks.shape
    packed = np.zeros((num_frames, height, -(-width // _WORD) * 4), dtype=np.uint8)
    packed[..., : -(-width // 8)] = np.packbits(masks.numpy(), axis=-1, bitorder="little")
    return torch.from_numpy(packed.view("<u4").astype(np.int64))


def _pack_rows_torch(masks: torch.Tensor) -> torch.Tensor:
    """:func:`_pack_rows` in torch ops, for masks on a GPU."""
    num_frames, height, width = masks.shape
    words = -(-width // _WORD)
    pixels = F.pad(masks, (0, words * _WORD - width)).view(torch.uint8).view(num_frames, height, words * 4, 8)
    packed = pixels[..., 0].clone()  # bytes of 8 pixels, bit i = pixel i
    for bit in range(1, 8):
        packed |= pixels[..., bit] << bit
    packed = packed.view(num_frames, height, words, 4).to(torch.int64)
    return packed[..., 0] | packed[..., 1] << 8 | packed[..., 2] << 16 | packed[..., 3] << 24


def _shift_pixels(rows: torch.Tensor, k: int) -> torch.Tensor:
    """Packed rows moved by ``k`` pixels towards higher x (``k`` < 0: lower), zero-filled."""
    words, bits = divmod(abs(k), _WORD)
    if k > 0:
        moved = (rows << bits) & _LOW
        carry = rows >> (_WORD - bits) if bits else None
    else:
        moved = rows >> bits
        carry = (rows << (_WORD - bits)) & _LOW if bits else None
    out = torch.zeros_like(rows)
    count = rows.shape[-1]
    step = words if k > 0 else -words
    _or_words_shifted(out, moved, step, count)
    if carry is not None:
        _or_words_shifted(out, carry, step + (1 if k > 0 else -1), count)
    return out


def _or_words_shifted(out: torch.Tensor, values: torch.Tensor, step: int, count: int) -> None:
    """out[..., j + step] |= values[..., j] wherever both are in range."""
    if abs(step) >= count:
        return
    if step >= 0:
        out[..., step:] |= values[..., : count - step]
    else:
        out[..., :step] |= values[..., -step:]


def _or_rows_shifted(out: torch.Tensor, values: torch.Tensor, offset: int, height: int) -> None:
    """out[:, y] |= values[:, y + offset] wherever both rows are in the image."""
    if abs(offset) >= height:
        return
    if offset >= 0:
        out[:, : height - offset] |= values[:, offset:]
    else:
        out[:, -offset:] |= values[:, : height + offset]


def _popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each 32-bit value held in int64 (SWAR: pairs, nibbles, bytes, then a sum)."""
    words = words - ((words >> 1) & 0x55555555)
    words = (words & 0x33333333) + ((words >> 2) & 0x33333333)
    words = (words + (words >> 4)) & 0x0F0F0F0F
    return ((words * 0x01010101) & _LOW) >> 24


def _as_frames(pred, gt, void):
    """Cast inputs to bool tensors of shape (T, H, W); report whether input was one frame."""
    pred, gt = _to_bool_tensor(pred, "pred"), _to_bool_tensor(gt, "gt")
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if pred.dim() not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {tuple(pred.shape)}")
    if void is not None:
        void = _to_bool_tensor(void, "void").to(pred.device)
        if void.shape != pred.shape:
            raise ValueError(f"void must have the masks' shape {tuple(pred.shape)}, got {tuple(void.shape)}")
    squeeze = pred.dim() == 2
    if squeeze:
        pred, gt = pred.unsqueeze(0), gt.unsqueeze(0)
        void = void.unsqueeze(0) if void is not None else None
    return pred, gt.to(pred.device), void, squeeze


def _to_bool_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach() != 0 if value.dtype != torch.bool else value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value != 0))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
