"""Inference on a user's video, measured side by side in one run: five tables.

(a) latency against the clip's length: a whole prediction per clip (``SparrowPredictor``:
    answer, then tracking), the LLM prefills it makes (one per clip: the answer is decoded
    from the cache), and SAM2's share with its cost per frame;
(b) the plug-in's overhead: ``box+seg`` (the dual prompt; TSF is train-only, so it adds
    nothing at inference) against the ``seg`` path alone, on the same clips;
(c) decoding a long mp4: every frame, against the host's 16 frames (``read_frames``, which
    seeks) and against 1 frame per second (``read_video(fps=1)``);
(d) several expressions on one video (one state: frames and SAM2 features shared) against
    one prediction per expression;
(f) memory on long videos: peak resident memory of ``SparrowPredictor`` (frames and
    features on demand) against ``SparrowModel.predict`` on the whole clip held in memory,
    each in its own process, at 250 and 2000 frames.

Runs on the embedded tiny host's models after ``make train`` (the stage-2 checkpoint), on
clips made from the synthetic benchmark's frames:

    .venv/bin/python bench/bench_inference.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.frames import resize_frames, uniform_frames
from sparrow_plugin.interfaces import VideoBatch
from sparrow_plugin.predictor import SparrowPredictor
from sparrow_plugin.video_io import read_frames, read_video, write_video

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds, resident_kib  # noqa: E402

LONG_VIDEOS = (250, 2000)  # frames, for (f)


class Counters:
    """LLM prefills and SAM2 time (image encoder and tracking steps) of the model's calls
    (wrapped, not changed)."""

    def __init__(self, model):
        self.prefills, self.sam2_seconds = 0, 0.0
        step, sam = model.host._lm_step, model.decoder.sam

        def counted_step(*args, past_key_values=None, **kwargs):
            self.prefills += past_key_values is None
            return step(*args, past_key_values=past_key_values, **kwargs)

        def timed(function):
            def wrapper(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self.sam2_seconds += time.perf_counter() - start
            return wrapper

        model.host._lm_step = counted_step
        sam.encode_frames, sam.track_step = timed(sam.encode_frames), timed(sam.track_step)

    def reset(self):
        self.prefills, self.sam2_seconds = 0, 0.0


def clip_frames(dataset: MeViSDataset, count: int) -> np.ndarray:
    """``count`` frames of 160x120: the synthetic videos' frames one after another (again
    from the start when they run out)."""
    frames = []
    while len(frames) < count:
        for expression in dataset.expressions:
            frames += [dataset.read_frame(expression.video, name) for name in expression.frames]
            if len(frames) >= count:
                break
    return np.stack(frames[:count])


def predict(predictor: SparrowPredictor, video: Path, queries: list[str]) -> list:
    """One state, every query added, every mask propagated; the answers."""
    state = predictor.init_state(video)
    answers = [predictor.add_expression(state, query) for query in queries]
    for _ in predictor.propagate(state):
        pass
    return answers


def memory_child(recipe: str, checkpoint: str, video: str, how: str, query: str) -> None:
    """(f) in a fresh process: the peak resident memory of one prediction on ``video``."""
    torch.set_num_threads(1)
    predictor = SparrowPredictor.from_checkpoint(recipe, checkpoint)
    model = predictor.model
    loaded = resident_kib("VmRSS")
    start = time.perf_counter()
    with torch.no_grad():
        if how == "predictor":
            predict(predictor, Path(video), [query])
        else:  # the whole clip in memory, as a batch
            frames = read_video(video).frames
            pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255)
            height, width = pixels.shape[-2:]
            request, size = model.host.frame_request(), model.decoder.image_size
            picked = request.sample(len(pixels))
            batch = VideoBatch(
                frames=resize_frames(pixels, (size, size))[None], masks=None, object_masks=None, full_masks=None, queries=[query], kinds=["all"],
                keys=[("long", "0")], obj_ids=[[]], frame_names=[[f"{t:05d}" for t in range(len(pixels))]], original_sizes=[(height, width)],
                frame_indices=torch.arange(len(pixels))[None], llm_frames=resize_frames(pixels[picked], request.size(height, width), request.interpolation)[None],
                llm_frame_indices=torch.as_tensor(picked)[None],
            )
            model.predict(batch)
    print(json.dumps({"loaded_mib": loaded / 1024, "peak_mib": resident_kib("VmHWM") / 1024, "seconds": time.perf_counter() - start}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/tiny/stage2.yaml")
    parser.add_argument("--checkpoint", default="outputs/tiny/stage2/checkpoints/last.ckpt")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-child", nargs=3, metavar=("VIDEO", "HOW", "QUERY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint}: not found; run `make train` first (the bench times its stage-2 model)")
    if args.memory_child:
        return memory_child(args.recipe, args.checkpoint, *args.memory_child)
    torch.set_num_threads(args.threads)
    predictor = SparrowPredictor.from_checkpoint(args.recipe, args.checkpoint)
    model = predictor.model
    counters = Counters(model)
    valid = MeViSDataset(args.data, "valid_u", image_size=model.decoder.image_size)
    query = valid.expressions[0].text
    print(f"tiny host after make train, {args.threads} thread(s), median of {args.repeats}; query {query!r}")

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)

        def video_of(count: int) -> Path:
            return write_video(folder / f"clip{count}.mp4", clip_frames(valid, count), fps=8)

        # (a) latency against the clip's length
        print("\n(a) one clip, one expression: latency against its length")
        print(f"{'frames':>7}{'predict ms':>12}{'LLM prefills':>14}{'SAM2 ms':>10}{'SAM2 ms/frame':>15}{'answer':>10}")
        for count in (4, 8, 16, 32, 64):
            video = video_of(count)
            seconds = median_seconds(lambda: predict(predictor, video, [query]), args.repeats)
            counters.reset()
            answer = predict(predictor, video, [query])[0]
            print(f"{count:>7}{seconds * 1000:>12.1f}{counters.prefills:>14}{counters.sam2_seconds * 1000:>10.1f}"
                  f"{counters.sam2_seconds * 1000 / count:>15.2f}{'+'.join(answer.grounding_tokens) or 'none':>10}")

        # (b) the plug-in's overhead: box+seg against seg alone
        video, queries = video_of(16), [e.text for e in valid.expressions[:4]]
        timings = {}
        for prompt in ("seg", "box+seg"):
            model.config.prompt = prompt
            timings[prompt] = median_seconds(lambda: [predict(predictor, video, [q]) for q in queries], args.repeats)
        model.config.prompt = "box+seg"
        print("\n(b) 4 expressions x 16 frames: the dual prompt's overhead (goal: at most 1.10x)")
        print(f"{'path':<10}{'ms per expression':>20}")
        for prompt, seconds in timings.items():
            print(f"{prompt:<10}{seconds * 1000 / 4:>20.1f}")
        print(f"box+seg / seg: {timings['box+seg'] / timings['seg']:.2f}x")

        # (c) decoding a long video
        long_frames = np.concatenate([clip_frames(valid, 64)] * 28)  # 1792 frames, 60 s at 30 fps
        long_video = write_video(folder / "long.mp4", long_frames, fps=30, keyframe_interval=30)
        host_frames = uniform_frames(len(long_frames), 16)
        decode = {
            "every frame": lambda: read_video(long_video),
            "the host's 16 frames": lambda: read_frames(long_video, host_frames),
            "1 frame per second": lambda: read_video(long_video, fps=1),
        }
        seconds = {name: median_seconds(work, args.repeats) for name, work in decode.items()}
        print(f"\n(c) decoding a {len(long_frames)}-frame mp4 (160x120, 30 fps, a keyframe each second) (goal: at least 5x)")
        print(f"{'what':<24}{'ms':>10}{'every frame / this':>20}")
        for name, value in seconds.items():
            print(f"{name:<24}{value * 1000:>10.1f}{seconds['every frame'] / value:>19.1f}x")

        # (d) several expressions on one video
        video = video_of(32)
        shared = median_seconds(lambda: predict(predictor, video, queries), args.repeats)
        separate = median_seconds(lambda: [predict(predictor, video, [q]) for q in queries], args.repeats)
        print("\n(d) 4 expressions on one 32-frame video")
        print(f"{'how':<44}{'ms':>10}")
        print(f"{'one state (frames, SAM2 features shared)':<44}{shared * 1000:>10.1f}")
        print(f"{'one state per expression':<44}{separate * 1000:>10.1f}")
        print(f"one state per expression / one state: {separate / shared:.2f}x")

        # (f) memory on long videos, each measure in its own process
        print("\n(f) peak resident memory of one prediction on a long video (160x120 frames, 1 thread)")
        print(f"{'frames':>7}{'how':>34}{'model loaded MiB':>18}{'peak MiB':>10}{'growth MiB':>12}{'s':>8}")
        for count in LONG_VIDEOS:
            video = write_video(folder / f"long{count}.mp4", clip_frames(valid, count), fps=30, keyframe_interval=30)
            for how, label in (("predictor", "SparrowPredictor (on demand)"), ("in-memory", "predict on the clip in memory")):
                done = subprocess.run(
                    [sys.executable, __file__, "--recipe", args.recipe, "--checkpoint", args.checkpoint, "--memory-child", str(video), how, query],
                    capture_output=True, text=True, check=True,
                )
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{count:>7}{label:>34}{figures['loaded_mib']:>18.0f}{figures['peak_mib']:>10.0f}"
                      f"{figures['peak_mib'] - figures['loaded_mib']:>12.0f}{figures['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
