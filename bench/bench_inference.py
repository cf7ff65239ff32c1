"""Inference on a user's video, measured side by side in one run: four tables.

(a) latency against the clip's length: the whole ``predict`` per clip, the LLM prefills
    it makes (one per clip: the answer is decoded from the cache), and SAM2's share with its
    cost per frame;
(b) the plug-in's overhead: ``box+seg`` (the dual prompt; TSF is train-only, so it adds
    nothing at inference) against the ``seg`` path alone, on the same clips;
(c) decoding a long mp4: every frame, against the host's 16 frames (``read_frames``, which
    seeks) and against 1 frame per second (``read_video(fps=1)``);
(d) several expressions on one video (decoded once) against one ``predict`` per expression.

Runs on the embedded tiny host's models after ``make train`` (the stage-2 checkpoint), on
clips made from the synthetic benchmark's frames:

    .venv/bin/python bench/bench_inference.py [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from sparrow_plugin import SparrowWrapper
from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.data.video_clip import VideoClipDataset
from sparrow_plugin.frames import uniform_frames
from sparrow_plugin.video_io import read_frames, read_video, write_video

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402


def load_model(recipe: str, checkpoint: str):
    init = yaml.safe_load(open(recipe))["model"]["init_args"]
    wrapper = SparrowWrapper(base=init["base"], host_args=init["host_args"], config=init["config"], init_from=init["init_from"])
    wrapper.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"], strict=False)
    return wrapper.model.eval()


class Counters:
    """LLM prefills and SAM2 time of the model's calls (wrapped, not changed)."""

    def __init__(self, model):
        self.prefills, self.sam2_seconds = 0, 0.0
        step, encode, decode = model.host._lm_step, model.decoder.encode, model.decoder.decode

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

        model.host._lm_step, model.decoder.encode, model.decoder.decode = counted_step, timed(encode), timed(decode)

    def reset(self):
        self.prefills, self.sam2_seconds = 0, 0.0


def clip_frames(dataset: MeViSDataset, count: int) -> np.ndarray:
    """``count`` frames of 160x120: the synthetic videos' frames one after another."""
    frames = []
    for expression in dataset.expressions:
        frames += [dataset.read_frame(expression.video, name) for name in expression.frames]
        if len(frames) >= count:
            return np.stack(frames[:count])
    raise SystemExit(f"the synthetic benchmark has fewer than {count} frames")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/tiny/stage2.yaml")
    parser.add_argument("--checkpoint", default="outputs/tiny/stage2/checkpoints/last.ckpt")
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"{args.checkpoint}: not found; run `make train` first (the bench times its stage-2 model)")
    torch.set_num_threads(args.threads)
    model = load_model(args.recipe, args.checkpoint)
    counters = Counters(model)
    valid = MeViSDataset(args.data, "valid_u", image_size=model.decoder.image_size)
    query = valid.expressions[0].text
    size = model.decoder.image_size
    print(f"tiny host after make train, {args.threads} thread(s), median of {args.repeats}; query {query!r}")

    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        folder = Path(folder)

        def batch_of(frames: np.ndarray, queries: list[str]):
            path = write_video(folder / f"clip{len(frames)}.mp4", frames, fps=8)
            dataset = VideoClipDataset(path, queries, None, size, model.host.frame_request(), progress=False)
            return collate_referring([dataset[i] for i in range(len(queries))])

        # (a) latency against the clip's length
        print("\n(a) one clip, one expression: latency against its length")
        print(f"{'frames':>7}{'predict ms':>12}{'LLM prefills':>14}{'SAM2 ms':>10}{'SAM2 ms/frame':>15}{'answer':>10}")
        for count in (4, 8, 16, 32, 64):
            batch = batch_of(clip_frames(valid, count), [query])
            seconds = median_seconds(lambda: model.predict(batch), args.repeats)
            counters.reset()
            prediction = model.predict(batch)[0]
            print(f"{count:>7}{seconds * 1000:>12.1f}{counters.prefills:>14}{counters.sam2_seconds * 1000:>10.1f}"
                  f"{counters.sam2_seconds * 1000 / count:>15.2f}{'+'.join(prediction.grounding_tokens) or 'none':>10}")

        # (b) the plug-in's overhead: box+seg against seg alone
        batch = batch_of(clip_frames(valid, 16), [e.text for e in valid.expressions[:4]])
        timings = {}
        for prompt in ("seg", "box+seg"):
            model.config.prompt = prompt
            timings[prompt] = median_seconds(lambda: model.predict(batch), args.repeats)
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
        frames = clip_frames(valid, 32)
        path = write_video(folder / "shared.mp4", frames, fps=8)
        queries = [e.text for e in valid.expressions[:4]]

        def together():
            dataset = VideoClipDataset(path, queries, None, size, model.host.frame_request(), progress=False)
            return [model.predict(collate_referring([dataset[i]])) for i in range(len(queries))]

        def apart():
            return [model.predict(collate_referring([VideoClipDataset(path, [q], None, size, model.host.frame_request(), progress=False)[0]])) for q in queries]

        shared, separate = median_seconds(together, args.repeats), median_seconds(apart, args.repeats)
        print("\n(d) 4 expressions on one 32-frame video")
        print(f"{'how':<36}{'ms':>10}")
        print(f"{'one video state (decoded once)':<36}{shared * 1000:>10.1f}")
        print(f"{'one predict per expression':<36}{separate * 1000:>10.1f}")
        print(f"one predict per expression / one state: {separate / shared:.2f}x (SAM2's image features are not shared yet)")


if __name__ == "__main__":
    main()
