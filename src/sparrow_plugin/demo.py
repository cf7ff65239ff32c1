"""``sparrow demo``: a web page on ``sparrow predict VIDEO "expression"`` (Gradio).

    sparrow demo --config RECIPE [--config more.yaml] --ckpt_path CKPT [--host 127.0.0.1]
                 [--port 7860] [--fps N] [--synthetic_root data/synthetic]

Upload a video (mp4, webm, mov: what PyAV decodes) or pick one of the synthetic benchmark's,
type an expression and press Segment: the page shows the overlay video (each object
outlined, its kept box and score on the frames it prompted), the model's answer and a
table of the objects. :func:`build_demo` makes the page over any backend
``run_request(video_path, expression) -> {"overlay": mp4 path, "answer": str, "boxes": rows}``;
the default one is a :class:`~sparrow_plugin.predictor.SparrowPredictor` loaded once at
start, which writes ``sparrow predict``'s folder layout (``prediction.json``, ``overlay.mp4``)
that the page reads.

Gradio is an optional dependency (``pip install 'sparrow-plugin[demo]'``), imported only
when a page is built. Its analytics and version check are off: the server and the page
call nothing outside the machine.
"""

from __future__ import annotations

import json
import os
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Callable

from sparrow_plugin.errors import DatasetError, SparrowError

__all__ = ["BOX_COLUMNS", "build_demo", "demo_command", "box_rows", "browser_playable"]

INSTALL_HINT = "the demo needs Gradio: pip install 'sparrow-plugin[demo]'"
BOX_COLUMNS = ["object", "box (x1, y1, x2, y2, pixels)", "score", "prompted frames"]
# the splits offered by --synthetic_root: the held-out ones (the model trained on train's videos)
_SYNTHETIC_SPLITS = ("valid_u", "valid_hard", "valid_cross")
_SYNTHETIC_FPS = 10.0  # a folder of frames has no rate; the mp4 made for the page gets this one
# what Chromium, Firefox and Safari decode in a <video>; write_video falls back to MPEG-4
# part 2 where its FFmpeg has no H.264 encoder, which no browser plays
_BROWSER_CODECS = {"h264", "vp8", "vp9", "av1"}

RunRequest = Callable[[str, str], dict]


def _gradio():
    """The gradio module, with analytics off everywhere in it (the Blocks below say so too,
    but other parts of gradio read only the variable)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as error:
        raise SparrowError(f"{INSTALL_HINT} ({error})") from None
    return gradio


# ----------------------------------------------------------------------------- the page


def build_demo(run_request: RunRequest, synthetic_root: str | Path | None = None, description: str = ""):
    """The page (a ``gradio.Blocks``, not launched) over ``run_request``; with
    ``synthetic_root``, a dropdown of the benchmark's held-out videos too. A
    :class:`~sparrow_plugin.errors.SparrowError` of the request (a video that does not
    decode, an expression past the host's context) is shown in the page as its message."""
    gr = _gradio()
    choices = _synthetic_choices(Path(synthetic_root)) if synthetic_root is not None else []
    # the page's own files (the mp4s made of synthetic frame folders), under the temp folder
    # that Gradio serves files from; removed when the page is (the closures below hold it)
    work = tempfile.TemporaryDirectory(prefix="sparrow-demo-page-")

    def refuse(message: str):
        # shown until closed, and no traceback in the server's log: the user's mistake, not a bug
        return gr.Error(message, duration=None, print_exception=False)

    def segment(video: str | None, expression: str | None):
        if not video:
            raise refuse("no video: upload one (mp4, webm, mov) or pick a synthetic video")
        expression = (expression or "").strip()
        if not expression:
            raise refuse('empty expression: type what to segment, e.g. "the red circle"')
        from sparrow_plugin.cli import _sparrow_error_in
        from sparrow_plugin.video_io import probe_video

        try:
            probe_video(video)  # a broken upload is refused before the model runs
            result = run_request(video, expression)
        except Exception as error:
            cause = _sparrow_error_in(error)  # the user's error, or the one another wraps (as `sparrow` finds it)
            if cause is None:
                raise  # a bug: Gradio shows "Error" and the server logs the traceback
            # the file by the name the user knows, not Gradio's upload folder
            raise refuse(str(cause).replace(str(Path(video).parent) + os.sep, "")) from None
        return result["overlay"], result["answer"], result["boxes"]

    def pick(folder: str | None):
        if not folder:
            return gr.skip()
        return str(_synthetic_mp4(Path(folder), Path(work.name)))

    with gr.Blocks(title="SPARROW demo", analytics_enabled=False) as demo:
        gr.Markdown("# SPARROW: segment what an expression refers to in a video\n" + description)
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="video (mp4, webm, mov)", sources=["upload"], elem_id="video")
                if choices:
                    synthetic = gr.Dropdown(choices, value=None, label="or pick a synthetic video", elem_id="synthetic")
                    synthetic.change(pick, synthetic, video)
                expression = gr.Textbox(label="expression", placeholder="the red circle", elem_id="expression")
                button = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column():
                overlay = gr.Video(label="overlay", interactive=False, autoplay=True, loop=True, elem_id="overlay")
                answer = gr.Textbox(label="the model's answer", interactive=False, elem_id="answer")
                boxes = gr.Dataframe(
                    headers=BOX_COLUMNS, label="objects", interactive=False, wrap=True,
                    column_widths=["12%", "34%", "14%", "40%"], elem_id="objects",
                )
        # one event for both triggers, so one request at a time (Gradio's default limit per
        # event): the one model is not shared safely between threads
        gr.on([button.click, expression.submit], segment, [video, expression], [overlay, answer, boxes])
    return demo


def _synthetic_choices(root: Path) -> list[tuple[str, str]]:
    """(label, frame folder) of each held-out video, labelled with its expressions."""
    choices = []
    for split in _SYNTHETIC_SPLITS:
        meta = root / split / "meta_expressions.json"
        if not meta.is_file():
            continue
        for video, entry in json.loads(meta.read_text())["videos"].items():
            expressions = [e["exp"] for e in entry["expressions"].values()]
            choices.append((f"{split}/{video}: {'; '.join(expressions[:3])}", str(root / split / "JPEGImages" / video)))
    if not choices:
        raise SparrowError(f"{root}: no synthetic benchmark here (expected {', '.join(_SYNTHETIC_SPLITS)} with meta_expressions.json; make data writes data/synthetic)")
    return choices


def _synthetic_mp4(folder: Path, work: Path) -> Path:
    """A synthetic video's frame folder as an mp4 the page can show (made once)."""
    from sparrow_plugin.video_io import read_video, write_video

    path = work / f"{folder.parents[1].name}-{folder.name}.mp4"
    if not path.is_file():
        write_video(path, read_video(folder).frames, fps=_SYNTHETIC_FPS)
    return browser_playable(path)


# ----------------------------------------------------------------------------- results


def box_rows(entry: dict) -> list[list]:
    """The table of one ``prediction.json`` entry: per object its box in pixels, its score
    and the frames it prompted SAM2 on (an object without a kept box was prompted by [SEG]
    alone, on the entry's prompted frame)."""
    rows = []
    for j, obj in enumerate(entry["objects"]):
        box = ", ".join(f"{v:.0f}" for v in obj["box"]) if obj["box"] is not None else "no kept box ([SEG] alone)"
        score = f"{obj['box_score']:.3f}" if obj["box_score"] is not None else ""
        rows.append([j, box, score, _frames(obj["prompted_frames"] or [entry["prompted_frame"]])])
    return rows


def _frames(names: list[str]) -> str:
    # per-frame prompting lists every frame: a long video's would not fit a table cell
    return ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]} ({len(names)} frames)"


def _result(folder: Path) -> dict:
    """What the page shows of one expression's output folder (``sparrow predict``'s layout)."""
    entry = json.loads((folder / "prediction.json").read_text())
    answer = entry["answer"] + (" [cut off]" if entry["truncated"] else "")
    return {"overlay": str(browser_playable(folder / "overlay.mp4")), "answer": answer or "(an empty answer)", "boxes": box_rows(entry)}


def browser_playable(path: Path) -> Path:
    """``path`` when browsers decode its video codec, else a VP9 webm of it beside it (the
    MPEG-4 part 2 fallback of write_video plays nowhere); ``path`` itself when this FFmpeg
    has no VP9 encoder either."""
    import av

    with av.open(str(path)) as source:
        stream = source.streams.video[0]
        if stream.codec_context.name in _BROWSER_CODECS or "libvpx-vp9" not in av.codecs_available:
            return path
        webm = path.with_suffix(".webm")
        with av.open(str(webm), mode="w") as target:
            rate = Fraction(stream.average_rate or stream.guessed_rate or 10).limit_denominator(1000)
            vp9 = target.add_stream("libvpx-vp9", rate=rate)
            vp9.width, vp9.height, vp9.pix_fmt = stream.codec_context.width, stream.codec_context.height, "yuv420p"
            vp9.options = {"deadline": "realtime", "cpu-used": "8"}  # seconds, not minutes, on a CPU
            for frame in source.decode(stream):  # frame by frame: a long video is never held
                target.mux(vp9.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")))
            target.mux(vp9.encode())
    return webm


# ----------------------------------------------------------------------------- backends


def _predict_with_predictor(config: list[str], ckpt_path: str, fps: float | None = None, device: str | None = None) -> RunRequest:
    """``run_request`` through a :class:`~sparrow_plugin.predictor.SparrowPredictor`,
    loaded here once (each request only runs it), in bounded memory on long videos."""
    from sparrow_plugin.cli import _device_for
    from sparrow_plugin.predictor import SparrowPredictor

    device = device or _device_for("auto")
    predictor = SparrowPredictor.from_checkpoint(config, ckpt_path, device=device)
    # every request's outputs, under the temp folder that Gradio serves files from; removed
    # when the backend is (run_request holds it)
    work = tempfile.TemporaryDirectory(prefix="sparrow-demo-")

    def run_request(video_path: str, expression: str) -> dict:
        out = Path(tempfile.mkdtemp(dir=work.name))
        predictor.predict_to_folder(video_path, [expression], out, fps=fps)
        return _result(out / "0")

    return run_request


# ----------------------------------------------------------------------------- the command


def demo_command(argv: list[str]) -> None:
    """``sparrow demo ...``: serve the page until interrupted."""
    from sparrow_plugin.cli import _Parser

    parser = _Parser(prog="sparrow demo", description="a web page to segment what an expression refers to in a video (Gradio)")
    parser.add_argument("--config", action="append", required=True, help="the recipe the checkpoint was trained with; repeatable")
    parser.add_argument("--ckpt_path", required=True, help="the trained checkpoint")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--fps", type=float, default=None, help="frames per second for SAM2 (default: every frame)")
    parser.add_argument("--device", default=None, help="where the model runs (default: cuda when there is a GPU, else cpu)")
    parser.add_argument("--synthetic_root", default=None, help="a synthetic benchmark (make data writes data/synthetic): its videos in a dropdown")
    args = parser.parse_args(argv)
    for path, what in [*((c, "recipe") for c in args.config), (args.ckpt_path, "checkpoint")]:
        if not Path(path).is_file():
            raise DatasetError(path, f"{what} not found")
    _gradio()  # the install hint, and a wrong --synthetic_root, before the model loads
    if args.synthetic_root is not None:
        _synthetic_choices(Path(args.synthetic_root))
    names = ", ".join(Path(c).name for c in args.config)
    print(f"sparrow demo: loading {args.ckpt_path} ({names})")
    demo = build_demo(
        _predict_with_predictor(args.config, args.ckpt_path, args.fps, args.device), args.synthetic_root,
        description=f"Model: `{names}` with `{args.ckpt_path}`.",
    )
    try:
        demo.launch(server_name=args.host, server_port=args.port, ssr_mode=False)  # no Node.js server
    except OSError as error:  # the port is taken, or the address is not this machine's
        reason = str(error).split(". ")[0]  # Gradio's own advice that follows is about its API
        raise SparrowError(f"cannot serve on {args.host}:{args.port}: {reason} (choose another --port or --host)") from None
