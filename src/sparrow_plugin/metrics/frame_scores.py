"""Per-frame region similarity J and contour accuracy F (``docs/metrics.md``).

Both functions take masks of shape (H, W) or (T, H, W) as numpy arrays or torch tensors
of any dtype (non-zero means foreground) and return float64 tensors with the leading
shape kept: a 0-d tensor for one frame, shape (T,) for a clip. The values equal the DAVIS
reference evaluator's to the last bit of the count ratios.

How: a clip is packed 64 pixels to a word (numpy's ``packbits`` on the CPU, torch ops for
masks on a GPU) and cropped to the words that hold its content. Every later step works on
whole words of the whole clip at once: the boundary map is three XORs of shifted words,
the disk dilation a few dozen shifted ORs, the counts popcounts. The cost is a few hundred
array operations per clip whatever the number of frames, objects or boundary pixels,
where the reference loops over frames and dilates each one pixel by pixel.

Inside a crop, a frame's rows are laid end to end as one bit stream, each row followed by
at least ``r`` zero bits: a horizontal shift of the stream by up to ``r`` pixels never
carries a pixel into a neighbouring row, so shifts need no per-row bookkeeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["jaccard", "f_measure", "boundary_map", "boundary_radius"]

_BITS = 64  # pixels per word


def jaccard(pred, gt, void=None) -> torch.Tensor:
    """Region similarity ``|P ∩ G| / |P ∪ G|`` over non-void pixels, per frame.

    Args:
        pred, gt: (H, W) or (T, H, W) masks; non-zero is foreground.
        void: optional mask of the same shape; its pixels are ignored.
    Returns:
        float64 tensor of shape () or (T,); a frame whose union is empty scores 1.
    """
    pred, gt, void, squeeze, device = _as_frames(pred, gt, void)
    scores = np.concatenate([_jaccard_of(*chunk) for chunk in _frame_chunks(pred, gt, void)])
    return _result(scores, squeeze, device)


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
    pred, gt, void, squeeze, device = _as_frames(pred, gt, void)
    radius = boundary_radius(*pred.shape[1:], bound_th)
    scores = np.concatenate([_f_measure_of(*chunk, radius) for chunk in _frame_chunks(pred, gt, void)])
    return _result(scores, squeeze, device)


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Tolerance radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` if >= 1."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def _jaccard_of(pred, gt, void) -> np.ndarray:
    clip = _PackedClip.of(pred, gt, void, spare_bits=0)
    intersection = clip.words.count(clip.pred & clip.gt).astype(np.float64)
    union = clip.words.count(clip.pred | clip.gt).astype(np.float64)
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def _f_measure_of(pred, gt, void, radius: int) -> np.ndarray:
    clip = _PackedClip.of(pred, gt, void, spare_bits=radius)
    count = clip.words.count
    pred_boundary, gt_boundary = clip.boundary(clip.pred), clip.boundary(clip.gt)
    n_pred = count(pred_boundary).astype(np.float64)
    n_gt = count(gt_boundary).astype(np.float64)
    matched_pred = count(pred_boundary & clip.dilate(gt_boundary, radius)).astype(np.float64)
    matched_gt = count(gt_boundary & clip.dilate(pred_boundary, radius)).astype(np.float64)

    # Empty boundaries follow the reference: nothing predicted -> P=1, nothing to find -> R=1.
    precision = np.where(n_pred > 0, matched_pred / np.maximum(n_pred, 1), 1.0)
    recall = np.where(n_gt > 0, matched_gt / np.maximum(n_gt, 1), 1.0)
    precision = np.where((n_pred > 0) & (n_gt == 0), 0.0, precision)
    recall = np.where((n_pred == 0) & (n_gt > 0), 0.0, recall)
    total = precision + recall
    return np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)


_CHUNK_BYTES = 1 << 19  # packed words per chunk on the CPU: a few such arrays stay in cache


def _frame_chunks(pred, gt, void):
    """(pred, gt, void) over runs of frames. Frames are scored independently; on the CPU a
    run small enough for the cache makes every word operation about twice as fast as on a
    whole 480p clip. A GPU takes the clip at once."""
    if isinstance(pred, torch.Tensor):
        yield pred, gt, void
        return
    num_frames, height, width = pred.shape
    per_chunk = max(1, _CHUNK_BYTES // (height * (-(-width // _BITS) + 1) * 8))
    for start in range(0, num_frames, per_chunk):
        part = slice(start, start + per_chunk)
        yield pred[part], gt[part], void[part] if void is not None else None


def _result(scores: np.ndarray, squeeze: bool, device: torch.device) -> torch.Tensor:
    scores = torch.from_numpy(np.asarray(scores, dtype=np.float64)).to(device)
    return scores[0] if squeeze else scores


def boundary_map(masks) -> torch.Tensor:
    """Boundary pixels of (T, H, W) masks, exactly as DAVIS' ``seg2bmap``, as bool.

    A pixel is boundary when it differs from its east, south or south-east neighbour
    (pixels past the edge read as 0); the last row compares east only, the last column
    south only, and the bottom-right pixel is never boundary, so the image border itself
    creates no boundary. The same code as :func:`f_measure`'s, unpacked to pixels.
    """
    masks, _, _, _, _ = _as_frames(masks, masks, None)
    clip = _PackedClip.of(masks, masks, None, spare_bits=1)
    return clip.unpack(clip.boundary(clip.pred))


class _NumpyWords:
    """Packed words on the CPU: numpy uint64, whose shifts are logical."""

    @staticmethod
    def pack(masks: np.ndarray) -> np.ndarray:
        """(T, H, W) bool or integer masks -> uint64 (T, H, ceil(W / 64)); pixel x is bit
        x % 64 of word x // 64."""
        num_frames, height, width = masks.shape
        packed = np.zeros((num_frames, height, -(-width // _BITS) * 8), dtype=np.uint8)
        packed[..., : -(-width // 8)] = np.packbits(masks, axis=-1, bitorder="little")
        return packed.view("<u8")

    @staticmethod
    def unpack(words: np.ndarray, width: int) -> torch.Tensor:
        bits = np.unpackbits(np.ascontiguousarray(words).view(np.uint8), axis=-1, bitorder="little")
        return torch.from_numpy(bits[..., :width].astype(bool))

    @staticmethod
    def shift_right(words, bits: int):
        return words >> bits

    @staticmethod
    def constant(value: int):
        return np.uint64(value)

    @staticmethod
    def count(words) -> np.ndarray:
        """(T, ...) words -> (T,) int64 set bits per frame."""
        return np.bitwise_count(words.reshape(words.shape[0], -1)).sum(axis=1, dtype=np.int64)

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def zeros(like, shape):
        return np.zeros(shape, dtype=like.dtype)

    @staticmethod
    def any(values, axis: int):
        return values.any(axis=axis)

    @staticmethod
    def nonzero(values) -> np.ndarray:
        return np.flatnonzero(values)


class _TorchWords:
    """Packed words on a GPU: torch int64 (torch has no uint64 shifts), right shifts masked
    to be logical."""

    @staticmethod
    def pack(masks: torch.Tensor) -> torch.Tensor:
        num_frames, height, width = masks.shape
        words = -(-width // _BITS)
        padded = torch.zeros(num_frames, height, words * _BITS, dtype=torch.uint8, device=masks.device)
        padded[..., :width] = masks != 0
        pixels = padded.view(num_frames, height, words * 8, 8)
        packed = pixels[..., 0].clone()  # bytes of 8 pixels, bit i = pixel i
        for bit in range(1, 8):
            packed |= pixels[..., bit] << bit
        return packed.view(torch.int64)  # 8 little-endian bytes per word

    @staticmethod
    def unpack(words: torch.Tensor, width: int) -> torch.Tensor:
        bits = (words.unsqueeze(-1) >> torch.arange(_BITS, device=words.device)) & 1
        return bits.flatten(-2)[..., :width].bool()

    @staticmethod
    def shift_right(words, bits: int):
        return (words >> bits) & ((1 << (_BITS - bits)) - 1) if bits else words

    @staticmethod
    def constant(value: int) -> int:
        """A 64-bit pattern as the int64 value with the same bits."""
        return value - (1 << _BITS) if value >= 1 << (_BITS - 1) else value

    @staticmethod
    def count(words) -> np.ndarray:
        """Set bits per frame (SWAR: pairs, nibbles, bytes, then a multiply-add)."""
        words = words.reshape(words.shape[0], -1)
        words = words - ((words >> 1) & 0x5555555555555555)
        words = (words & 0x3333333333333333) + ((words >> 2) & 0x3333333333333333)
        words = (words + (words >> 4)) & 0x0F0F0F0F0F0F0F0F
        per_word = (words * 0x0101010101010101) >> 56
        return per_word.sum(dim=1).cpu().numpy()

    zeros_like = staticmethod(torch.zeros_like)

    @staticmethod
    def zeros(like, shape):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def any(values, axis: int):
        return values.any(dim=axis)

    @staticmethod
    def nonzero(values) -> np.ndarray:
        return values.nonzero().flatten().cpu().numpy()


@dataclass
class _PackedClip:
    """A (prediction, ground truth) clip packed into words and cropped to its content.

    ``pred`` and ``gt`` are (T, rows, used_words + spare) arrays: the crop's words, then
    spare zero words that keep the rows of the bit stream apart (module docstring).
    ``last_row``: the crop ends at the image's last row. ``last_column``: (word, bit) of
    the image's last column, when the crop holds it. Those are where ``seg2bmap``'s edge
    rules apply; the crop's other edges border zero pixels, as in the full frame.
    """

    words: _NumpyWords | _TorchWords
    pred: object
    gt: object
    used_words: int
    last_row: bool
    last_column: tuple[int, int] | None
    frame_shape: tuple[int, int]
    origin: tuple[int, int]  # (row, word) of the crop's first word in the frame

    @classmethod
    def of(cls, pred, gt, void, spare_bits: int) -> _PackedClip:
        """Pack (T, H, W) frames from :func:`_as_frames`, clear void pixels, crop."""
        words = _TorchWords() if isinstance(pred, torch.Tensor) else _NumpyWords()
        height, width = pred.shape[1:]
        pred, gt = words.pack(pred), words.pack(gt)
        if void is not None:
            keep = ~words.pack(void)
            pred, gt = pred & keep, gt & keep
        occupied = words.any(pred | gt, axis=0)  # (H, words)
        rows = words.nonzero(words.any(occupied, axis=1))
        columns = words.nonzero(words.any(occupied, axis=0))
        if rows.size == 0:  # nothing anywhere: one empty word scores as the empty frame does
            rows = columns = np.zeros(1, dtype=np.int64)
        # a row and a word of margin above and to the left: a zero pixel just outside the
        # content there is boundary when its south or east neighbour is foreground
        top, bottom = max(int(rows[0]) - 1, 0), int(rows[-1]) + 1
        left, right = max(int(columns[0]) - 1, 0), int(columns[-1]) + 1
        spare = max(1, -(-spare_bits // _BITS))
        cropped = []
        for masks in (pred, gt):
            buffer = words.zeros(masks, (masks.shape[0], bottom - top, right - left + spare))
            buffer[..., : right - left] = masks[:, top:bottom, left:right]
            cropped.append(buffer)
        last_word = (width - 1) // _BITS
        last_column = (last_word - left, (width - 1) % _BITS) if right == last_word + 1 else None
        return cls(words, *cropped, right - left, bottom == height, last_column, (height, width), (top, left))

    def boundary(self, masks):
        """``seg2bmap`` on packed masks: XORs with the east, south and south-east neighbours."""
        words = self.words
        east = self._shifted(masks, -1)
        south = words.zeros_like(masks)
        south[:, :-1] = masks[:, 1:]
        south_east = self._shifted(south, -1)
        boundary = (masks ^ east) | (masks ^ south) | (masks ^ south_east)
        if self.last_row:  # east only
            boundary[:, -1] = masks[:, -1] ^ east[:, -1]
        if self.last_column is not None:
            # there east and south-east read 0, so the general rule gives m | s; south only is m ^ s
            word, bit = self.last_column
            column = words.constant(1 << bit)
            boundary[..., word] &= ~(masks[..., word] & south[..., word] & column)
            if self.last_row:  # the bottom-right pixel is never boundary
                boundary[:, -1, word] &= ~column
        boundary[..., self.used_words :] = 0  # the stream carried the next row's first pixel there
        return boundary

    def dilate(self, masks, radius: int):
        """Dilation by the disk ``dy² + dx² <= radius²`` (outside the image reads 0).

        The disk is a stack of horizontal segments, one per row offset ``dy``, of half width
        ``isqrt(radius² - dy²)``. The masks are widened one needed half width after another
        (each from the last by two shifts, at most tripling it), and each widened copy is
        OR-ed in moved by ``±dy`` rows for every ``dy`` of that half width.
        """
        offsets_of: dict[int, list[int]] = {}
        for dy in range(radius + 1):
            offsets_of.setdefault(math.isqrt(radius * radius - dy * dy), []).append(dy)
        dilated = self.words.zeros_like(masks)
        widened, width = masks, 0
        for target in sorted(offsets_of):
            while width < target:
                step = min(target, 3 * width + 1) - width
                widened = widened | self._shifted(widened, step) | self._shifted(widened, -step)
                width += step
            for dy in offsets_of[target]:
                _or_rows_shifted(dilated, widened, dy)
                if dy:
                    _or_rows_shifted(dilated, widened, -dy)
        return dilated

    def _shifted(self, masks, pixels: int):
        """The masks' bit stream moved ``pixels`` towards higher x (negative: lower), zero-filled."""
        stream = masks.reshape(-1)
        out = self.words.zeros_like(stream)
        count = stream.shape[0]
        words, bits = divmod(abs(pixels), _BITS)
        if words < count:
            if pixels > 0:
                out[words:] = stream[: count - words] << bits
                if bits and words + 1 < count:
                    out[words + 1 :] |= self.words.shift_right(stream[: count - words - 1], _BITS - bits)
            else:
                out[: count - words] = self.words.shift_right(stream[words:], bits)
                if bits and words + 1 < count:
                    out[: count - words - 1] |= stream[words + 1 :] << (_BITS - bits)
        return out.reshape(masks.shape)

    def unpack(self, masks) -> torch.Tensor:
        """Packed crop -> bool (T, H, W) frames of the full size."""
        height, width = self.frame_shape
        top, left = self.origin
        pixels = self.words.unpack(masks[..., : self.used_words], self.used_words * _BITS)
        frames = torch.zeros((masks.shape[0], height, width), dtype=torch.bool, device=pixels.device)
        x0 = left * _BITS
        x1 = min(x0 + pixels.shape[-1], width)
        frames[:, top : top + pixels.shape[1], x0:x1] = pixels[..., : x1 - x0]
        return frames


def _or_rows_shifted(out, values, offset: int) -> None:
    """out[:, y] |= values[:, y + offset] wherever both rows are in the crop."""
    height = out.shape[1]
    if abs(offset) >= height:
        return
    if offset >= 0:
        out[:, : height - offset] |= values[:, offset:]
    else:
        out[:, -offset:] |= values[:, : height + offset]


def _as_frames(pred, gt, void):
    """(T, H, W) arrays the packers take: numpy for CPU data, torch for tensors on a GPU.
    Returns pred, gt, void, whether the input was one frame, and the device for results."""
    arrays = [_as_array(value, name) for value, name in ((pred, "pred"), (gt, "gt"), (void, "void")) if value is not None]
    on_gpu = any(isinstance(array, torch.Tensor) for array in arrays)
    device = next((array.device for array in arrays if isinstance(array, torch.Tensor)), torch.device("cpu"))
    if on_gpu:
        arrays = [torch.as_tensor(array, device=device) for array in arrays]
    pred, gt = arrays[0], arrays[1]
    void = arrays[2] if len(arrays) == 3 else None
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if pred.ndim not in (2, 3):
        raise ValueError(f"masks must be (H, W) or (T, H, W), got shape {tuple(pred.shape)}")
    if void is not None and void.shape != pred.shape:
        raise ValueError(f"void must have the masks' shape {tuple(pred.shape)}, got {tuple(void.shape)}")
    squeeze = pred.ndim == 2
    if squeeze:
        pred, gt = pred[None], gt[None]
        void = void[None] if void is not None else None
    return pred, gt, void, squeeze, device


def _as_array(value, name: str):
    """numpy (bool or integer) for CPU data; torch tensors stay torch on a GPU."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            return value
        value = value.numpy() if value.dtype != torch.bfloat16 else value.float().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if value.dtype != bool and not np.issubdtype(value.dtype, np.integer):
        value = value != 0  # packbits takes booleans and integers
    return value
