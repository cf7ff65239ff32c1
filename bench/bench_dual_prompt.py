"""What each part of SPARROW's inference costs per clip, measured side by side in one run:
the host's answer (one prefill, cached decoding), SAM2's image features, the [SEG]-prompted
decode (stage 1's path), and what the dual prompt adds: the proposer, the filtration head,
and the extra SAM2 objects of the kept boxes.

    .venv/bin/python bench/bench_dual_prompt.py [--stage2 outputs/tiny/stage2/checkpoints/last.ckpt]

Runs on the embedded tiny host after `make train` (its releases and checkpoints), on
synthetic valid_u clips (8 frames of 160x120, decoded at 128 px), median of repeats.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from sparrow_plugin import SparrowWrapper
from sparrow_plugin.data import ReferringVideoDataModule
from sparrow_plugin.data.collate import collate_referring

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/tiny/stage2.yaml")
    parser.add_argument("--stage2", default="outputs/tiny/stage2/checkpoints/last.ckpt")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    init = yaml.safe_load(open(args.recipe))["model"]["init_args"]
    wrapper = SparrowWrapper(base=init["base"], host_args=init["host_args"], config=init["config"], init_from=init["init_from"])
    wrapper.load_state_dict(torch.load(args.stage2, map_location="cpu", weights_only=True)["state_dict"], strict=False)
    model = wrapper.model.eval()
    data = ReferringVideoDataModule("data/synthetic", image_size=model.decoder.image_size)
    data.set_frame_request(model.host.frame_request())
    dataset = data.dataset("valid_u", "eval")
    batch = collate_referring([dataset[i] for i in range(args.clips)])
    clips = torch.arange(len(batch))
    frame0 = torch.zeros_like(clips)

    with torch.no_grad():
        prompt = model.host.build_inputs(model.encode(batch), batch.queries, None)
        generation = model.host.generate(prompt, max_new_tokens=model.config.max_new_tokens)
        states = generation.token_states[:, 0]
        tokens, queries = model.seg_adapter(states), model.query_embedding(states, "seg")
        features = model.decoder.encode(batch.frames)
        proposals = model.box_grounding.proposals(features, clips, frame0)
        levels = model.box_grounding.levels(features, clips, frame0, model.decoder.sam.no_mem_embed)
        kept = model.box_grounding.filter(queries, proposals, levels)
        boxes = torch.stack([proposals.boxes[i][kept.logits[i].argmax()] for i in range(len(batch))])
        parts = {
            "host: encode + answer (one prefill)": lambda: model.host.generate(model.host.build_inputs(model.encode(batch), batch.queries, None), max_new_tokens=model.config.max_new_tokens),
            "SAM2 image features, every frame": lambda: model.decoder.encode(batch.frames),
            "decode: [SEG] prompt, one object": lambda: model.decoder.decode(features, tokens, clip_index=clips),
            "proposer, one frame": lambda: model.box_grounding.proposals(features, clips, frame0),
            "filtration head, one frame": lambda: model.box_grounding.filter(queries, proposals, levels),
            "decode: box + [SEG], one extra object": lambda: model.decoder.decode(features, tokens, clip_index=clips, boxes=boxes[:, None] * model.decoder.image_size),
        }
        print(f"{len(batch)} clips of {batch.frames.shape[1]} frames, {args.threads} thread(s), median of {args.repeats}; "
              f"{model.box_grounding.proposer.config.num_queries} queries, decoder mode {model.config.decoder.mode}")
        print(f"{'part':<40}{'ms per clip':>12}")
        for name, work in parts.items():
            print(f"{name:<40}{median_seconds(work, args.repeats) * 1000 / len(batch):>12.2f}")


if __name__ == "__main__":
    main()
