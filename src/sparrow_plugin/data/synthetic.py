"""The synthetic referring-video benchmark: moving shapes, written in the MeViS layout.

Each video shows a few coloured shapes on a noisy background. Objects move in straight
lines, bounce off the walls, stand still, cross and occlude each other; some are exact
copies of each other and can only be told apart by how they move or where they are.
Every video gets expressions of five kinds, each true of its target by construction:

==============  =================================  =========================================
kind            example                            what tells the target apart
==============  =================================  =========================================
appearance      "the red circle", "the big ..."    colour, shape, size
motion          "the blue square moving left"      motion alone (an identical copy moves
                                                   differently)
spatial         "the green star above the red ..."  position relative to an anchor (an
                                                   identical copy stands elsewhere)
multi           "the two yellow shapes"            several objects; the mask is their union
no_target       "the purple triangle"              nothing in the video matches
==============  =================================  =========================================

A third split, ``valid_hard``, holds what tracking from one prompted frame gets wrong: each
video has one appearance expression whose target

==============  ============================================================================
kind            what happens to the target
==============  ============================================================================
late_entry      out of the frame on the first 2 or 3 frames, then comes in from an edge
occlusion       stands still while a bigger shape passes over it and hides it completely
crossing        crosses a big shape of its colour or its shape, which passes over it
==============  ============================================================================

A fourth split, ``valid_cross``, holds the identity crossings TSF is meant for: in each
video two identical copies (same colour, shape and size) move towards each other on nearly
the same line, meet mid-clip (one passes over the other) and go on, so only how each one
moves tells them apart after the crossing. Both get an expression of kind
``crossing_identity`` ("the red circle moving left").

Output (``docs/data_formats.md``), for the splits ``train``, ``valid_u``, ``valid_hard`` and
``valid_cross``::

    <root>/<split>/JPEGImages/<video>/<frame>.jpg
    <root>/<split>/meta_expressions.json   (+ "kind" per expression, "objects" per video)
    <root>/<split>/mask_dict.json          (visible-pixel masks, COCO RLE, null if unseen)
    <root>/<split>/boxes_coco.json         (COCO detection JSON of the same masks)

The same seed gives byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from sparrow_plugin.errors import ConfigError, DatasetError

__all__ = [
    "COLOURS",
    "SHAPES",
    "MOTIONS",
    "MOTION_PHRASES",
    "RELATIONS",
    "EXPRESSION_KINDS",
    "HARD_KINDS",
    "CROSS_KINDS",
    "SyntheticConfig",
    "generate_benchmark",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 45),
    "purple": (160, 65, 210),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES: dict[str, tuple[float, float]] = {"small": (8.0, 10.0), "big": (14.0, 16.0)}
# unit velocity per motion label; "bouncing" objects move diagonally and reflect off walls
MOTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "still": "standing still",
}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
RELATIONS = ("above", "below", "left of", "right of")
EXPRESSION_KINDS = ("appearance", "motion", "spatial", "multi", "no_target")
HARD_KINDS = ("late_entry", "occlusion", "crossing")
CROSS_KINDS = ("crossing_identity",)
SPLITS = ("train", "valid_u", "valid_hard", "valid_cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}
NUMBER_WORDS = {2: "two", 3: "three"}


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic benchmark.

    Attributes:
        width, height: frame size in pixels.
        num_frames: frames per video.
        train_videos, valid_videos, hard_videos, cross_videos: videos in the ``train``,
            ``valid_u``, ``valid_hard`` and ``valid_cross`` splits.
        speed: (min, max) pixels per frame for moving objects.
        jpeg_quality: JPEG quality of the written frames.
    """

    width: int = 160
    height: int = 120
    num_frames: int = 8
    train_videos: int = 800
    valid_videos: int = 80
    hard_videos: int = 60
    cross_videos: int = 40
    speed: tuple[float, float] = (3.0, 5.0)
    jpeg_quality: int = 92

    def __post_init__(self):
        if self.width < 64 or self.height < 64:
            raise ConfigError(f"frames must be at least 64x64 pixels, got {self.width}x{self.height}")
        if self.num_frames < 2:
            raise ConfigError(f"num_frames must be at least 2 (motion needs time), got {self.num_frames}")
        if not 0 < self.speed[0] <= self.speed[1]:
            raise ConfigError(f"speed must be (min, max) with 0 < min <= max, got {self.speed}")
        for name in ("train_videos", "valid_videos", "hard_videos", "cross_videos"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class _Object:
    colour: str
    shape: str
    size: str
    radius: float
    start: np.ndarray  # (x, y) centre at frame 0
    velocity: np.ndarray  # pixels per frame
    motion: str  # a MOTIONS key or "bouncing"
    bounces: bool = True
    track: np.ndarray = field(default=None)  # (T, 2) centres, filled by _simulate

    @property
    def looks(self) -> tuple[str, str, str]:
        return self.colour, self.shape, self.size


@dataclass
class _Expression:
    text: str
    kind: str
    targets: list[int]  # indices into the video's objects


def generate_benchmark(root: str | Path, seed: int = 0, config: SyntheticConfig | None = None, overwrite: bool = False) -> Path:
    """Write the ``train``, ``valid_u``, ``valid_hard`` and ``valid_cross`` splits under
    ``root``; return ``root``.

    ``root`` must be absent or empty, so that the videos of an earlier benchmark never mix
    with these; ``overwrite`` replaces the splits of an earlier one (and nothing else).
    Each split appears whole or not at all.
    """
    config = config or SyntheticConfig()
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DatasetError(root, "is a file; the synthetic benchmark needs a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise DatasetError(root, "folder is not empty; write the benchmark into a new folder, or pass --overwrite to replace its splits")
        for split in SPLITS:
            shutil.rmtree(root / split, ignore_errors=True)
    # Independent streams per split: valid_u does not change when train grows.
    sizes = (config.train_videos, config.valid_videos, config.hard_videos, config.cross_videos)
    for split, num_videos, stream in zip(SPLITS, sizes, range(len(SPLITS))):
        rng = np.random.default_rng([seed, stream])
        # written aside and moved into place whole: a split that is there is complete
        partial = root / f".{split}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        _write_split(partial, split, num_videos, rng, config)
        partial.rename(root / split)
    return root


def _write_split(split_dir: Path, split: str, num_videos: int, rng: np.random.Generator, config: SyntheticConfig):
    frames_dir = split_dir / "JPEGImages"
    frames_dir.mkdir(parents=True, exist_ok=True)
    meta: dict = {"videos": {}}
    mask_dict: dict = {}
    coco = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]}
    frame_names = [f"{t:05d}" for t in range(config.num_frames)]
    next_anno_id = 1
    for video_index in range(num_videos):
        video = f"{split}_{video_index:05d}"
        if split == "valid_hard":  # the three kinds in turn
            objects, expressions = _plan_hard_video(rng, config, HARD_KINDS[video_index % len(HARD_KINDS)])
        elif split == "valid_cross":
            objects, expressions = _plan_cross_video(rng, config)
        else:
            objects, expressions = _plan_video(rng, config)
        frames, visible = _render(objects, rng, config)
        (frames_dir / video).mkdir(exist_ok=True)
        for name, frame in zip(frame_names, frames):
            (frames_dir / video / f"{name}.jpg").write_bytes(_encode_jpeg(frame, config.jpeg_quality))

        anno_ids = []
        for obj_index in range(len(objects)):
            anno_ids.append(next_anno_id)
            mask_dict[str(next_anno_id)] = [_encode_rle(visible[obj_index, t]) for t in range(config.num_frames)]
            next_anno_id += 1

        meta["videos"][video] = {
            "frames": frame_names,
            # not part of MeViS: what each object is, for the tiny host's pre-training
            "objects": {
                str(i): {"anno_id": anno_ids[i], "colour": o.colour, "shape": o.shape, "size": o.size, "motion": o.motion}
                for i, o in enumerate(objects)
            },
            "expressions": {
                str(i): {
                    "exp": e.text,
                    "obj_id": list(e.targets),
                    "anno_id": [anno_ids[k] for k in e.targets],
                    "kind": e.kind,
                }
                for i, e in enumerate(expressions)
            },
        }
        _add_coco_frames(coco, video, frame_names, objects, visible, config)

    (split_dir / "meta_expressions.json").write_text(json.dumps(meta, indent=1))
    (split_dir / "mask_dict.json").write_text(json.dumps(mask_dict))
    (split_dir / "boxes_coco.json").write_text(json.dumps(coco))


# ----------------------------------------------------------------------------- planning


def _plan_video(rng: np.random.Generator, config: SyntheticConfig) -> tuple[list[_Object], list[_Expression]]:
    """Choose objects and expressions; retry until the trajectories are clean."""
    # Scene weights and the 50% chances below balance the five kinds (about 0.5 each per video).
    planner = (_plan_motion_scene, _plan_spatial_scene, _plan_multi_scene, _plan_multi_scene)[int(rng.integers(4))]
    for _ in range(200):
        plan = planner(rng, config)
        if plan is None:
            continue
        objects, expressions, reserved = plan
        _add_fillers(objects, reserved, rng, config, count=int(rng.integers(1, 3)))
        for obj in objects:
            _simulate(obj, config)
        if not _trajectories_ok(objects, config):
            continue
        if rng.random() < 0.5:
            expressions += _appearance_expressions(objects, rng)
        if rng.random() < 0.5:
            expressions.append(_no_target_expression(objects, rng))
        return objects, expressions
    raise RuntimeError(f"could not plan a {planner.__name__} video in 200 tries; the frames are too small")


def _plan_hard_video(rng: np.random.Generator, config: SyntheticConfig, kind: str) -> tuple[list[_Object], list[_Expression]]:
    """One target in a ``kind`` situation, a filler beneath; retry until it holds."""
    planner = {"late_entry": _plan_late_entry, "occlusion": _plan_occlusion, "crossing": _plan_crossing}[kind]
    for _ in range(200):
        scene = planner(rng, config)  # the target first, what passes over it after
        fillers = list(scene)
        _add_fillers(fillers, set(), rng, config, count=1)
        objects = fillers[len(scene) :] + scene  # drawn first, so nothing else hides the target
        target = len(objects) - len(scene)
        for obj in objects:
            _simulate(obj, config)
        if _hard_scene_ok(objects, target, kind, config):
            looks = objects[target]
            return objects, [_Expression(f"the {looks.colour} {looks.shape}", kind, [target])]
    raise RuntimeError(f"could not plan a {kind} video in 200 tries; the frames are too small")


def _plan_cross_video(rng: np.random.Generator, config: SyntheticConfig) -> tuple[list[_Object], list[_Expression]]:
    """Two identical copies moving towards each other, meeting mid-clip, a filler beneath."""
    for _ in range(200):
        colour, shape, size = _random_looks(rng)
        direction = _pick(rng, ("left", "right", "up", "down"))
        first = _new_object(rng, config, colour, shape, size, motion=direction)
        second = _new_object(rng, config, colour, shape, size, motion=OPPOSITE[direction])
        second.radius = first.radius  # copies: the same size to the pixel
        # the centres meet mid-clip, a few pixels apart across the direction of motion, so
        # one passes over the other (it is drawn on top) and both are seen before and after
        meet = config.num_frames // 2 - 0.5
        across = np.array(MOTIONS[direction])[::-1] * rng.uniform(-0.3, 0.3) * first.radius
        second.start = first.start + (first.velocity - second.velocity) * meet + across
        objects = [first, second]
        _add_fillers(objects, set(), rng, config, count=1)
        objects = objects[2:] + objects[:2]  # the filler drawn first, beneath the copies
        for obj in objects:
            _simulate(obj, config)
        if _cross_scene_ok(objects, config):
            return objects, [
                _Expression(f"the {colour} {shape} {MOTION_PHRASES[o.motion]}", "crossing_identity", [index])
                for index, o in enumerate(objects) if index > 0
            ]
    raise RuntimeError("could not plan a valid_cross video in 200 tries; the frames are too small")


def _cross_scene_ok(objects: list[_Object], config: SyntheticConfig) -> bool:
    """The copies stay inside, overlap mid-clip, are apart on the first and last frames, and
    the filler never touches them."""
    filler, first, second = objects
    for obj in (first, second):
        if not all(_inside(p, obj.radius, config) for p in obj.track):
            return False
    gaps = np.linalg.norm(first.track - second.track, axis=1) - 2 * first.radius
    if gaps.min() >= -first.radius or gaps[0] < 4 or gaps[-1] < 4:
        return False
    return all(_closest_gap(filler, obj) >= 4 for obj in (first, second))


def _plan_late_entry(rng, config) -> list[_Object]:
    """The target comes in from outside: out of the frame on the first 2 or 3 frames, then
    entering from an edge (a little faster than other objects)."""
    direction = _pick(rng, ("left", "right", "up", "down"))
    target = _new_object(rng, config, *_random_looks(rng), motion=direction)
    absent = int(rng.integers(2, 4))
    unit = np.array(MOTIONS[direction])
    speed = 1.5 * float(rng.uniform(*config.speed))
    target.velocity = unit * speed
    axis = 0 if unit[0] else 1
    extent = config.width if axis == 0 else config.height
    outside = target.radius + speed * (absent - 0.5)  # its leading edge crosses in between frames absent - 1 and absent
    target.start[axis] = -outside if unit[axis] > 0 else extent + outside
    return [target]


def _plan_occlusion(rng, config) -> list[_Object]:
    """A small still target; a big circle or square passes over it, centred on it mid-clip."""
    colour, shape, _ = _random_looks(rng)
    target = _new_object(rng, config, colour, shape, "small", motion="still")
    while True:
        looks = (_pick(rng, COLOURS), _pick(rng, ("circle", "square")))
        if looks[0] != colour and looks[1] != shape:
            break
    occluder = _new_object(rng, config, *looks, "big", motion=_pick(rng, ("left", "right", "up", "down")))
    occluder.start = target.start - occluder.velocity * (config.num_frames // 2)
    return [target, occluder]


def _plan_crossing(rng, config) -> list[_Object]:
    """The target and a big shape of its colour (or its shape) moving the opposite way;
    their centres meet mid-clip and the other one passes over it."""
    colour, shape, size = _random_looks(rng)
    direction = _pick(rng, ("left", "right", "up", "down"))
    target = _new_object(rng, config, colour, shape, size, motion=direction)
    if rng.random() < 0.5:
        other_looks = (colour, _pick(rng, [s for s in SHAPES if s != shape]))
    else:
        other_looks = (_pick(rng, [c for c in COLOURS if c != colour]), shape)
    other = _new_object(rng, config, *other_looks, "big", motion=OPPOSITE[direction])
    meet = config.num_frames // 2
    other.start = target.start + (target.velocity - other.velocity) * meet
    return [target, other]


def _hard_scene_ok(objects: list[_Object], target: int, kind: str, config: SyntheticConfig) -> bool:
    """Each non-bouncing object stays inside (the entering target once it is in), the
    occluded target is hidden whole mid-clip, and the filler never touches the target."""
    for index, obj in enumerate(objects):
        if index == target and kind == "late_entry":  # coming in: it must not leave by the far edge
            low, high = obj.radius + 1, np.array([config.width, config.height]) - obj.radius - 1
            if not all(p[axis] <= high[axis] if obj.velocity[axis] > 0 else p[axis] >= low for p in obj.track for axis in range(2) if obj.velocity[axis]):
                return False
        elif not obj.bounces and not all(_inside(p, obj.radius, config) for p in obj.track):
            return False
    if kind == "occlusion":
        mid = config.num_frames // 2
        hidden = _shape_mask(objects[target].shape, objects[target].track[mid], objects[target].radius, config.width, config.height)
        cover = _shape_mask(objects[-1].shape, objects[-1].track[mid], objects[-1].radius, config.width, config.height)
        if (hidden & ~cover).any():
            return False
    return all(_closest_gap(objects[index], objects[target]) >= 4 for index in range(target))  # the filler


def _closest_gap(a: _Object, b: _Object) -> float:
    """The least distance between the two shapes' circles over the clip (negative: overlap)."""
    return float((np.linalg.norm(a.track - b.track, axis=1) - (a.radius + b.radius)).min())


def _plan_motion_scene(rng, config):
    """Two identical objects that differ only in how they move."""
    colour, shape, size = _random_looks(rng)
    first, second = rng.choice(list(MOTIONS), size=2, replace=False)
    pair = [_new_object(rng, config, colour, shape, size, motion=m) for m in (first, second)]
    expressions = [
        _Expression(f"the {colour} {shape} {MOTION_PHRASES[m]}", "motion", [i]) for i, m in enumerate((first, second))
    ]
    return pair, expressions, set()


def _plan_spatial_scene(rng, config):
    """An anchor, a copy of the target in a relation to it, and an identical copy elsewhere."""
    anchor_looks = _random_looks(rng)
    target_looks = _random_looks(rng)
    if target_looks[:2] == anchor_looks[:2]:
        return None
    relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
    anchor = _new_object(rng, config, *anchor_looks, motion="still", margin=34)
    offset = {"above": (0, -1), "below": (0, 1), "left of": (-1, 0), "right of": (1, 0)}[relation]
    distance = anchor.radius + SIZES[target_looks[2]][1] + rng.uniform(6, 14)
    target_xy = anchor.start + distance * np.array(offset, dtype=float)
    target = _new_object(rng, config, *target_looks, motion="still")
    target.start = target_xy + rng.uniform(-4, 4, size=2) * np.array([offset[1] != 0, offset[0] != 0])
    # The copy sits on the opposite side, so the relation singles out one of them.
    copy = _new_object(rng, config, *target_looks, motion="still")
    copy.start = anchor.start - distance * np.array(offset, dtype=float) + rng.uniform(-4, 4, size=2)
    for obj in (target, copy):
        if not _inside(obj.start, obj.radius, config):
            return None
    opposite = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}[relation]
    expressions = [
        _Expression(f"the {target_looks[0]} {target_looks[1]} {rel} the {anchor_looks[0]} {anchor_looks[1]}", "spatial", [k])
        for k, rel in ((1, relation), (2, opposite))
    ]
    return [anchor, target, copy], expressions, set()


def _plan_multi_scene(rng, config):
    """Two or three objects sharing a colour (or a shape) that nothing else has."""
    count = 2 if rng.random() < 0.75 else 3
    if rng.random() < 0.5:
        colour = _pick(rng, COLOURS)
        shapes = rng.choice(SHAPES, size=count, replace=False)
        group = [_new_object(rng, config, colour, s, _pick(rng, SIZES)) for s in shapes]
        text = f"the {NUMBER_WORDS[count]} {colour} shapes"
        reserved = {colour}
    else:
        shape = _pick(rng, SHAPES)
        colours = rng.choice(list(COLOURS), size=count, replace=False)
        group = [_new_object(rng, config, c, shape, _pick(rng, SIZES)) for c in colours]
        text = f"the {NUMBER_WORDS[count]} {PLURALS[shape]}"
        reserved = {shape}
    return group, [_Expression(text, "multi", list(range(count)))], reserved


def _add_fillers(objects: list[_Object], reserved: set[str], rng, config, count: int):
    """Distractors that look like nothing else in the video and use no reserved word.

    ``reserved`` holds the colour or shape a multi-object expression is named by, so
    that "the two green shapes" stays true.
    """
    for _ in range(count):
        while True:
            looks = _random_looks(rng)
            if looks[0] not in reserved and looks[1] not in reserved and all(o.looks[:2] != looks[:2] for o in objects):
                break
        motion = "bouncing" if rng.random() < 0.5 else str(rng.choice(list(MOTIONS)))
        objects.append(_new_object(rng, config, *looks, motion=motion))


def _appearance_expressions(objects: list[_Object], rng) -> list[_Expression]:
    """One appearance expression for an object named by colour+shape (+size if needed)."""
    candidates = []
    for index, obj in enumerate(objects):
        same = [o for o in objects if o.looks[:2] == obj.looks[:2]]
        if len(same) == 1:
            candidates.append(_Expression(f"the {obj.colour} {obj.shape}", "appearance", [index]))
        elif len(same) == 2 and same[0].size != same[1].size:
            candidates.append(_Expression(f"the {obj.size} {obj.colour} {obj.shape}", "appearance", [index]))
    if not candidates:
        return []
    return [candidates[int(rng.integers(len(candidates)))]]


def _no_target_expression(objects: list[_Object], rng) -> _Expression:
    """A colour+shape that is absent; preferably both words occur in the video separately."""
    present = {o.looks[:2] for o in objects}
    colours, shapes = {o.colour for o in objects}, {o.shape for o in objects}
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
    tricky = [(c, s) for c, s in absent if c in colours and s in shapes]
    pool = tricky if tricky and rng.random() < 0.7 else absent
    colour, shape = pool[int(rng.integers(len(pool)))]
    return _Expression(f"the {colour} {shape}", "no_target", [])


def _random_looks(rng) -> tuple[str, str, str]:
    return _pick(rng, COLOURS), _pick(rng, SHAPES), _pick(rng, SIZES)


def _pick(rng, options):
    options = list(options)
    return options[int(rng.integers(len(options)))]


def _new_object(rng, config, colour, shape, size, motion: str | None = None, margin: float = 0.0) -> _Object:
    radius = float(rng.uniform(*SIZES[size]))
    motion = motion or str(rng.choice(list(MOTIONS)))
    speed = float(rng.uniform(*config.speed))
    if motion == "bouncing":
        angle = float(rng.uniform(0, 2 * math.pi))
        velocity = speed * np.array([math.cos(angle), math.sin(angle)])
    else:
        velocity = speed * np.array(MOTIONS[motion])
    pad = radius + 1 + margin
    start = np.array([rng.uniform(pad, config.width - pad), rng.uniform(pad, config.height - pad)])
    return _Object(colour, shape, size, radius, start, velocity, motion, bounces=motion == "bouncing")


def _inside(xy: np.ndarray, radius: float, config: SyntheticConfig) -> bool:
    return radius + 1 <= xy[0] <= config.width - radius - 1 and radius + 1 <= xy[1] <= config.height - radius - 1


def _simulate(obj: _Object, config: SyntheticConfig):
    """Centres over time; bouncing objects reflect off the walls."""
    position, velocity = obj.start.astype(float).copy(), obj.velocity.astype(float).copy()
    low = np.array([obj.radius + 1, obj.radius + 1])
    high = np.array([config.width - obj.radius - 1, config.height - obj.radius - 1])
    track = []
    for _ in range(config.num_frames):
        track.append(position.copy())
        position = position + velocity
        if obj.bounces:
            for axis in range(2):
                if position[axis] < low[axis]:
                    position[axis], velocity[axis] = 2 * low[axis] - position[axis], -velocity[axis]
                elif position[axis] > high[axis]:
                    position[axis], velocity[axis] = 2 * high[axis] - position[axis], -velocity[axis]
    obj.track = np.stack(track)


def _trajectories_ok(objects: list[_Object], config: SyntheticConfig) -> bool:
    """Objects that are not bouncing stay inside; identical copies never touch.

    Everything else may cross and occlude: that is part of the benchmark. A shape whose
    expression depends on it (every non-filler) must also stay mostly visible at frame 0.
    """
    for obj in objects:
        if not obj.bounces and not all(_inside(p, obj.radius, config) for p in obj.track):
            return False
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            gaps = np.linalg.norm(a.track - b.track, axis=1) - (a.radius + b.radius)
            if a.looks == b.looks and gaps.min() < 4:
                return False
            if gaps[0] < 2:  # apart on the first frame, so every object is introduced clearly
                return False
    return True


# ----------------------------------------------------------------------------- rendering


def _render(objects: list[_Object], rng, config: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and visible masks (N, T, H, W) bool; later objects on top."""
    num_frames, height, width = config.num_frames, config.height, config.width
    background = np.array(rng.uniform(30, 90, size=3))
    texture = rng.normal(0, 6, size=(height, width, 1))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    visible = np.zeros((len(objects), num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        canvas = np.broadcast_to(background, (height, width, 3)) + texture + rng.normal(0, 3, size=(height, width, 3))
        covered = np.zeros((height, width), dtype=bool)
        for index in reversed(range(len(objects))):  # top-most first, so "covered" is what lies above
            obj = objects[index]
            full = _shape_mask(obj.shape, obj.track[t], obj.radius, width, height)
            visible[index, t] = full & ~covered
            covered |= full
            shade = 1.0 + 0.08 * rng.standard_normal()
            canvas[visible[index, t]] = np.clip(np.array(COLOURS[obj.colour]) * shade, 0, 255)
        frames[t] = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return frames, visible


def _shape_mask(shape: str, centre: np.ndarray, radius: float, width: int, height: int) -> np.ndarray:
    cx, cy = float(centre[0]), float(centre[1])
    image = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=1)
    elif shape == "square":
        half = radius * 0.85
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=1)
    elif shape == "triangle":
        points = [(cx + radius * math.cos(a), cy - radius * math.sin(a)) for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)]
        draw.polygon(points, fill=1)
    elif shape == "star":
        points = []
        for k in range(10):
            r = radius if k % 2 == 0 else radius * 0.45
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + r * math.cos(angle), cy - r * math.sin(angle)))
        draw.polygon(points, fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.array(image, dtype=bool)


def _encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _encode_rle(mask: np.ndarray) -> dict | None:
    if not mask.any():
        return None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _add_coco_frames(coco: dict, video: str, frame_names, objects, visible, config: SyntheticConfig):
    for t, name in enumerate(frame_names):
        image_id = len(coco["images"]) + 1
        coco["images"].append(
            {"id": image_id, "file_name": f"JPEGImages/{video}/{name}.jpg", "width": config.width, "height": config.height}
        )
        for obj_index, obj in enumerate(objects):
            mask = visible[obj_index, t]
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            x0, y0 = int(xs.min()), int(ys.min())
            box = [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]
            coco["annotations"].append(
                {
                    "id": len(coco["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": SHAPES.index(obj.shape) + 1,
                    "bbox": box,
                    "area": int(mask.sum()),
                    "iscrowd": 0,
                }
            )
