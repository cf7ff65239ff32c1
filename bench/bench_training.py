"""Training step time and peak memory, for the embedded tiny host and for each released
host's architecture at tiny size (their tiny releases), measured side by side in one run.

A step is SPARROW's stage-1 losses on one batch of the host's recipe (the tiny recipes on
the synthetic benchmark, batch 2, 4 frames at 128 px for the released hosts' tiny_cpu
overlay) and their backward pass. Each host runs in a process of its own; its peak memory
is that process's resident-set high-water mark over the step (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs`` just before it: the model, the batch and the step's
activations and gradients), or, on a GPU, ``torch.cuda.max_memory_allocated``.

    .venv/bin/python bench/bench_training.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from sparrow_plugin import SparrowWrapper
from sparrow_plugin.data import ReferringVideoDataModule
from sparrow_plugin.data.collate import collate_referring
from sparrow_plugin.data.mevis import MeViSDataset
from sparrow_plugin.recipes import merged_recipe

sys.path.insert(0, str(Path(__file__).parent))
from timing import median_seconds, resident_kib  # noqa: E402


def peak_step_mib(step) -> float:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        step()
        return torch.cuda.max_memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current size
    step()
    return resident_kib("VmHWM") / 1024


def build(recipe: dict, host_path: str | None):
    init = recipe["model"]["init_args"]
    host_args = {"path": host_path} if host_path else init["host_args"]  # a tiny release replaces the recipe's downloads
    wrapper = SparrowWrapper(base=init["base"], host_args=host_args, config=init.get("config"), init_from=None)
    data_args = recipe["data"]["init_args"]
    data = ReferringVideoDataModule(
        data_args.get("root", "data/synthetic"), image_size=data_args["image_size"], train_frames=data_args.get("train_frames", 8),
        batch_size=data_args.get("batch_size", 2),
    )
    data.set_frame_request(wrapper.host.frame_request())
    dataset = data.dataset("train", "train")
    batch = collate_referring([dataset[i] for i in range(data_args.get("batch_size", 2))])
    return wrapper.model.train(), batch


HOSTS = {"tiny": "tiny (make train)", "videoglamm": "videoglamm (tiny release)", "unipixel": "unipixel (tiny release)", "glus": "glus (tiny release)"}


def measure(host: str, data: str, repeats: int) -> dict:
    """One host's row, in this process."""
    with tempfile.TemporaryDirectory() as folder:
        if host == "tiny":
            recipe, release = merged_recipe(["recipes/tiny/stage1.yaml"]), None
        else:
            texts = [e.text for e in MeViSDataset(data, "train", image_size=32).expressions]
            module = __import__(f"baselines.{host}.tiny", fromlist=["write_tiny_release"])
            release = str(module.write_tiny_release(Path(folder) / host, texts))
            recipe = merged_recipe([f"recipes/{host}/stage1.yaml", "recipes/overlays/tiny_cpu.yaml"])
        recipe.setdefault("model", {}).setdefault("init_args", {}).setdefault("config", {}).setdefault("tsf", {})["mode"] = "off"
        recipe["data"]["init_args"]["root"] = data
        model, batch = build(recipe, release)
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in parameters:
            p.grad = None
        model.training_losses(batch)["loss"].backward()

    seconds = median_seconds(step, repeats)
    return {"shape": list(batch.frames.shape), "params": sum(p.numel() for p in parameters), "seconds": seconds, "mib": peak_step_mib(step)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="data/synthetic")
    parser.add_argument("--host", choices=list(HOSTS), default=None, help="measure one host here and print its row as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.host is not None:
        print(json.dumps(measure(args.host, args.data, args.repeats)))
        return
    rows = {}
    for host in HOSTS:
        done = subprocess.run(
            [sys.executable, __file__, "--host", host, "--repeats", str(args.repeats), "--threads", str(args.threads), "--data", args.data],
            capture_output=True, text=True, check=True,
        )
        rows[host] = json.loads(done.stdout.strip().splitlines()[-1])
    device = "GPU memory allocated" if torch.cuda.is_available() else "the process's peak RSS during a step"
    print(f"stage-1 training step (losses + backward), TSF off, {args.threads} thread(s), median of {args.repeats}; memory: {device}")
    print(f"{'host':<26}{'batch (B, T, 3, S, S)':>24}{'trained params':>16}{'step ms':>10}{'peak MiB':>10}")
    for host, row in rows.items():
        print(f"{HOSTS[host]:<26}{str(tuple(row['shape'])):>24}{row['params']:>16,}{row['seconds'] * 1000:>10.0f}{row['mib']:>10.0f}")


if __name__ == "__main__":
    main()
