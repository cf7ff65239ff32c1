"""`sparrow demo`: the page in a real headless Chromium (Playwright) over the real backend
(a SparrowPredictor of a one-step checkpoint); nothing is mocked.

Needs the demo extra (Gradio), Playwright (the dev extra) and a Chromium: Debian's
(apt-get install chromium) or the binary $SPARROW_CHROMIUM names; skipped without them."""

import os
import re
import shutil
import socket
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sparrow_plugin.video_io import write_video

pytestmark = pytest.mark.slow

CHROMIUM_FLAGS = [
    "--no-sandbox",  # Chromium's sandbox refuses to start as root
    "--disable-gpu",
    # the machine has no network: without these Chromium's background fetches (component
    # updates, sync, QUIC probes) time out and fail page loads
    "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # Playwright adds --headless and a fresh user-data dir itself
# the overlay decodes: a frame is ready, with its size and the video's length
PLAYS = "() => { const v = document.querySelector('#overlay video'); return v && v.readyState >= 2 && v.duration > 0 && v.videoWidth > 0 }"


def _chromium() -> str:
    named = os.environ.get("SPARROW_CHROMIUM")
    if named:
        if not Path(named).is_file():
            pytest.fail(f"SPARROW_CHROMIUM={named}: no such file (a Chromium binary)")
        return named
    found = next((c for c in ("/usr/bin/chromium", shutil.which("chromium")) if c and Path(c).is_file()), None)
    if found is None:
        pytest.skip("Chromium not found: install it (Debian/Ubuntu: apt-get install chromium) or set SPARROW_CHROMIUM to a Chromium binary to run the browser test")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install -e '.[dev]'")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page_url(browser, work):
    """The demo served in-process on a free port, over its default backend."""
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from sparrow_plugin.demo import _predict_with_predictor, build_demo

    demo = build_demo(_predict_with_predictor([str(work["recipe"])], str(work["checkpoint"])), synthetic_root=work["data"])
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture
def visit(browser, page_url):
    """A fresh page on the demo, and the requests it sent anywhere else (none may be)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda request: None if request.url.startswith((page_url, "data:", "blob:")) else outside.append(request.url))
    page.goto(page_url)
    yield page, outside
    context.close()


def test_a_user_segments_a_synthetic_video_in_the_browser(visit, work, tmp_path):
    from playwright.sync_api import expect

    page, outside = visit
    expect(page.get_by_role("heading", name="SPARROW")).to_be_visible()
    video = sorted(p.name for p in (work["data"] / "valid_u" / "JPEGImages").iterdir())[0]
    page.get_by_label("or pick a synthetic video").click()
    page.get_by_role("option", name=f"valid_u/{video}:").click()
    expect(page.locator("#video video")).to_have_attribute("src", re.compile(rf"{video}\.mp4$"))  # its mp4, in the upload box
    page.locator("#expression textarea").fill("the red circle")
    page.locator("#segment").click()

    expect(page.locator("#answer textarea")).not_to_have_value("", timeout=60_000)
    overlay = page.locator("#overlay video")
    expect(overlay).to_have_attribute("src", re.compile(r"overlay\.(mp4|webm)$"))
    served = page.request.get(overlay.get_attribute("src"))
    assert served.ok and served.headers["content-type"].startswith("video/"), (served.status, served.headers)
    page.wait_for_function(PLAYS, timeout=20_000)  # Chromium decodes it: H.264 (or the VP9 fallback)
    expect(page.locator("#objects")).to_contain_text("box (x1, y1, x2, y2, pixels)")
    expect(page.get_by_text("Error")).to_have_count(0)

    screenshot = tmp_path / "demo.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the page: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
    assert outside == []


def test_bad_requests_are_an_error_in_the_page(visit, work, tmp_path):
    from playwright.sync_api import expect

    from sparrow_plugin.video_io import read_video

    page, outside = visit
    page.locator("#segment").click()
    expect(page.get_by_text("no video: upload one")).to_be_visible()

    clip = write_video(tmp_path / "clip.mp4", read_video(next((work["data"] / "valid_u" / "JPEGImages").iterdir())).frames, fps=8)
    page.locator("#video input[type=file]").set_input_files(str(clip))
    expect(page.locator("#video video")).to_have_attribute("src", re.compile(r"clip\.mp4$"))
    page.locator("#segment").click()  # no expression typed
    expect(page.get_by_text("empty expression: type what to segment")).to_be_visible()

    page.locator("#video button[aria-label='Clear']").click()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00" * 2048)
    page.locator("#video input[type=file]").set_input_files(str(corrupt))
    page.locator("#expression textarea").fill("the red circle")
    page.locator("#segment").click()
    expect(page.get_by_text(re.compile(r"^corrupt\.mp4: not a video PyAV can decode"))).to_be_visible(timeout=20_000)
    expect(page.get_by_text("Traceback")).to_have_count(0)
    screenshot = tmp_path / "errors.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot of the errors: {screenshot}")
    assert outside == []


def test_the_backend_gives_the_page_what_sparrow_predict_writes(work, tmp_path):
    """The default backend without a browser: the answer, a row per object of the
    prediction's JSON, and an overlay of the video's frames under a caption band."""
    import json

    from sparrow_plugin.demo import _predict_with_predictor, box_rows
    from sparrow_plugin.video_io import read_video

    frames = read_video(next((work["data"] / "valid_u" / "JPEGImages").iterdir())).frames
    clip = str(write_video(tmp_path / "clip.mp4", frames, fps=8))
    backend = _predict_with_predictor([str(work["recipe"])], str(work["checkpoint"]))  # its outputs live as long as it does
    shown = backend(clip, "the red circle")
    entry = json.loads((Path(shown["overlay"]).parent / "prediction.json").read_text())
    assert shown["answer"].startswith(entry["answer"]) and shown["boxes"] == box_rows(entry)
    overlay = read_video(shown["overlay"])
    assert len(overlay.frames) == len(frames) and overlay.frames.shape[1] > frames.shape[1]


def test_the_table_shows_kept_boxes_and_seg_alone():
    from sparrow_plugin.demo import box_rows

    entry = {"prompted_frame": "00003", "objects": [
        {"box": [15.0, 5.25, 55.0, 35.75], "box_score": 0.875, "prompted_frames": ["00002"]},
        {"box": None, "box_score": None, "prompted_frames": []},  # [SEG] alone, on the prompted frame
        {"box": [1.0, 2.0, 3.0, 4.0], "box_score": 0.5, "prompted_frames": [f"{t:05d}" for t in range(40)]},  # every frame
    ]}
    assert box_rows(entry) == [
        [0, "15, 5, 55, 36", "0.875", "00002"],
        [1, "no kept box ([SEG] alone)", "", "00003"],
        [2, "1, 2, 3, 4", "0.500", "00000 ... 00039 (40 frames)"],
    ]


def test_a_video_browsers_do_not_play_is_shown_as_vp9(tmp_path):
    """write_video's fallback where FFmpeg has no H.264 encoder, MPEG-4 part 2, plays in no
    browser: the page gets a VP9 webm of it; an H.264 mp4 is served as it is."""
    from sparrow_plugin.demo import browser_playable

    frames = np.random.default_rng(0).integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
    mpeg4 = tmp_path / "mpeg4.mp4"
    with av.open(str(mpeg4), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(8))
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    shown = browser_playable(mpeg4)
    with av.open(str(shown)) as container:
        assert shown.suffix == ".webm" and container.streams.video[0].codec_context.name == "vp9"
        assert sum(1 for _ in container.decode(video=0)) == len(frames)
    h264 = write_video(tmp_path / "h264.mp4", frames, fps=8)
    assert browser_playable(h264) == h264


def test_without_gradio_the_demo_says_what_to_install(tmp_path):
    """Importing the module needs no Gradio; using it names the extra. A missing recipe is
    named before that."""
    from sparrow_plugin.demo import demo_command
    from sparrow_plugin.errors import SparrowError

    with pytest.raises(SparrowError, match=re.escape(f"{tmp_path / 'missing.yaml'}: recipe not found")):
        demo_command(["--config", str(tmp_path / "missing.yaml"), "--ckpt_path", str(tmp_path / "last.ckpt")])
    script = (
        "import sys; sys.modules['gradio'] = None\n"  # makes `import gradio` fail, as when it is not installed
        "from sparrow_plugin.demo import build_demo\n"
        "from sparrow_plugin.errors import SparrowError\n"
        "try:\n    build_demo(lambda video, expression: {})\n"
        "except SparrowError as error:\n    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "the demo needs Gradio: pip install 'sparrow-plugin[demo]'" in done.stdout, done.stdout + done.stderr
