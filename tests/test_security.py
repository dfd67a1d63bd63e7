"""Serving to a network: credentials, no share link without them, Host check, no framing, login throttle, upload,
image and queue limits, the outputs folder served wherever it is, and model paths confined to the studio's folders."""
from __future__ import annotations

import inspect
import io
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import free_port
from PIL import Image

import app
from studio import server, sources
from studio.config import ASSETS_MODELS, StudioConfig
from studio.errors import ModelError

PASSWORD = "right-password"


# ------------------------------------------------------------------ credentials and share links (items 11, 15)
@pytest.mark.parametrize("auth", [":", "user:", ":pass", "user", " :pass"])
def test_empty_or_malformed_credentials_are_refused(auth):
    for host in ("0.0.0.0", "127.0.0.1"):
        problem = app.check_exposure(host, auth)
        assert problem and "--auth" in problem


def test_real_credentials_serve_anywhere():
    assert app.check_exposure("0.0.0.0", "me:secret") is None
    assert app.serve_settings(app.parse_args(["--auth", "me:se:cret"])).auth == ("me", "se:cret")


def test_share_link_without_password_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("GRADIO_SHARE", "True")
    monkeypatch.setattr(server, "launch", lambda *a, **k: pytest.fail("launched a share link without a password"))
    assert app.check_exposure("127.0.0.1", None, share=True)
    assert app.main([]) == 2
    assert "share" in capsys.readouterr().err
    assert app.check_exposure("127.0.0.1", "me:secret", share=True) is None


def test_share_is_passed_explicitly(monkeypatch):
    """Gradio reads GRADIO_SHARE itself when launch() gets share=None; the studio always decides."""
    monkeypatch.delenv("GRADIO_SHARE", raising=False)
    kwargs = server.launch_kwargs(app.serve_settings(app.parse_args([])), StudioConfig())
    assert kwargs["share"] is False and kwargs["auth"] is None


def test_serve_settings_defaults():
    settings = app.serve_settings(app.parse_args([]))
    kwargs = server.launch_kwargs(settings, StudioConfig())
    assert (settings.max_queue, kwargs["max_file_size"]) == (32, 20 * 2**20)
    assert app.main(["--max-queue", "0"]) == 2


def test_host_names():
    names = server.served_names(server.ServeSettings(host="127.0.0.1", allowed_hosts=("studio.lan", ".corp.example")))
    for ok in ("127.0.0.1:7860", "localhost:7860", "LOCALHOST", "[::1]:7860", "192.168.1.5:7860", "studio.lan:80",
               "gpu.corp.example"):
        assert server.host_allowed(ok, names), ok
    for bad in ("evil.example", "evil.example:7860", "studio.lan.evil.example", "", "corp.example.evil"):
        assert not server.host_allowed(bad, names), bad
    assert server.host_allowed("anything", server.served_names(server.ServeSettings(allowed_hosts=("*",))))
    shared = server.served_names(server.ServeSettings(share=True, auth=("a", "b")))
    assert server.host_allowed("abcd1234.gradio.live", shared)


def test_login_throttle_window():
    now = [0.0]
    throttle = server.LoginThrottle(3, 60.0, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.wait("a") == 0
        throttle.attempt("a")
    assert throttle.wait("a") == pytest.approx(60.0) and throttle.wait("b") == 0
    now[0] = 61.0
    assert throttle.wait("a") == 0
    throttle.attempt("a")
    throttle.succeeded("a")
    assert throttle.wait("a") == 0 and "a" not in throttle.failures


# ------------------------------------------------------------------ a small app launched as the studio launches
def tiny_blocks(started: threading.Event, release: threading.Event):
    import gradio as gr

    with gr.Blocks() as demo:
        box, out = gr.Textbox(), gr.Textbox()

        def slow(text):
            started.set()
            release.wait(30)
            return text

        box.submit(slow, box, out, api_name="slow")
    return demo


@pytest.fixture(scope="module")
def tiny_app(tmp_path_factory):
    """No password; 1 MB uploads, 2 jobs waiting at most; `studio.lan` allowed as a name."""
    started, release = threading.Event(), threading.Event()
    demo = tiny_blocks(started, release)
    settings = server.ServeSettings(port=free_port(), allowed_hosts=("studio.lan",), max_upload_mb=1, max_queue=2)
    config = StudioConfig(outputs_dir=tmp_path_factory.mktemp("out"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
        server.launch(demo, settings, config, prevent_thread_lock=True, quiet=True)
        yield demo.local_url, started, release
        release.set()
        demo.close()


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    demo = tiny_blocks(threading.Event(), threading.Event())
    settings = server.ServeSettings(port=free_port(), auth=("tester", PASSWORD))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
        server.launch(demo, settings, StudioConfig(outputs_dir=tmp_path_factory.mktemp("out")), prevent_thread_lock=True,
                      quiet=True)
        yield demo.local_url
        demo.close()


def test_unknown_host_name_is_refused(tiny_app):
    url = tiny_app[0]
    port = url.rstrip("/").rsplit(":", 1)[1]
    assert httpx.get(url).status_code == 200
    for host in (f"localhost:{port}", f"studio.lan:{port}"):
        assert httpx.get(url, headers={"Host": host}).status_code == 200, host
    refused = httpx.get(url, headers={"Host": "rebind.evil.example"})
    assert refused.status_code == 400 and "--allowed-hosts" in refused.text
    assert httpx.get(f"{url}gradio_api/info", headers={"Host": f"rebind.evil.example:{port}"}).status_code == 400


def test_pages_may_not_be_framed_by_other_sites(tiny_app):
    url = tiny_app[0]
    for path in ("", "config", "gradio_api/info"):
        assert httpx.get(f"{url}{path}").headers.get("x-frame-options") == "SAMEORIGIN", path


def test_upload_size_is_capped(tiny_app):
    url = tiny_app[0]
    small = httpx.post(f"{url}gradio_api/upload", files={"files": ("small.bin", b"x" * 100_000)})
    assert small.status_code == 200, small.text
    big = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.bin", b"x" * 2_200_000)})
    assert big.status_code == 413 and "maximum allowed size" in big.text


def test_queue_is_capped_with_a_clear_message(tiny_app):
    url, started, release = tiny_app
    call = f"{url}gradio_api/call/slow"
    assert httpx.post(call, json={"data": ["running"]}).status_code == 200
    assert started.wait(30)  # the first job holds the worker; the next two wait, the fourth is refused
    waiting = [httpx.post(call, json={"data": [f"waiting {i}"]}) for i in range(2)]
    assert [r.status_code for r in waiting] == [200, 200]
    full = httpx.post(call, json={"data": ["one too many"]})
    assert full.status_code == 503 and "Queue is full" in full.text, full.text
    release.set()


def _login(url: str, password: str, client: httpx.Client) -> int:
    return client.post(f"{url}login", data={"username": "tester", "password": password}).status_code


def _client(address: str) -> httpx.Client:
    """A client from another loopback address (Linux routes all of 127/8), so each test is its own login client."""
    try:
        with socket.socket() as s:
            s.bind((address, 0))
    except OSError:
        pytest.skip(f"cannot send from {address} here")
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


def test_repeated_failed_logins_are_throttled_per_address(locked_app):
    with _client("127.0.0.2") as attacker, _client("127.0.0.3") as user:
        assert [_login(locked_app, f"guess{i}", attacker) for i in range(5)] == [400] * 5
        refused = attacker.post(f"{locked_app}login", data={"username": "tester", "password": "guess5"})
        assert refused.status_code == 429 and "try again" in refused.text and int(refused.headers["retry-after"]) > 1
        assert _login(locked_app, PASSWORD, attacker) == 429  # locked out for the window, even with the password
        assert _login(locked_app, PASSWORD, user) == 200  # another address is not


def test_a_burst_of_parallel_logins_is_throttled_too(locked_app):
    with _client("127.0.0.4") as attacker, ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(lambda i: _login(locked_app, f"guess{i}", attacker), range(40)))
    assert codes.count(400) <= 5 and codes.count(429) >= 35, codes


# ------------------------------------------------------------------ decompression bombs (item 13)
def _png(width: int, height: int) -> io.BytesIO:
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    buf.seek(0)
    return buf


def test_images_above_the_pixel_limit_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    limit = StudioConfig().limits.max_image_pixels
    assert limit == 40_000_000
    server.apply_image_limit(limit)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(_png(7000, 7000))  # 49 megapixels: refused at open, nothing decoded
    with pytest.warns(Image.DecompressionBombWarning):
        assert Image.open(_png(6000, 6000)).size == (6000, 6000)  # 36 megapixels: within the limit


# ------------------------------------------------------------------ model paths (item 14)
@pytest.fixture()
def confined(tmp_path) -> StudioConfig:
    (tmp_path / "models").mkdir()
    return StudioConfig(models_dir=tmp_path / "models", outputs_dir=tmp_path / "out", assets_dir=tmp_path / "assets")


def _refusal(spec: str, config: StudioConfig, catalog=sources.MODELS) -> str:
    with pytest.raises(ModelError) as info:
        sources.resolve(spec, config, catalog)
    return str(info.value)


def test_paths_outside_the_studio_folders_are_neither_loaded_nor_listed(tmp_path, confined, tiny_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("secret")
    (home / "id_rsa").write_text("secret")
    messages = {spec: _refusal(spec, confined) for spec in
                (str(home), str(home / "id_rsa"), str(home / "missing"), str(tiny_model_dir), "~", "/root",
                 f"{confined.models_dir}/../home")}
    for spec, msg in messages.items():
        assert "outside the models folder" in msg and "--allow-any-path" in msg, msg
        assert ".bashrc" not in msg and "id_rsa" not in msg.replace(spec, "")
    # The same answer whether the path exists or not: nothing to probe.
    assert messages[str(home / "id_rsa")].replace("id_rsa", "X") == messages[str(home / "missing")].replace("missing", "X")
    msg = _refusal(str(home), confined, sources.CONTROLNETS)
    assert "outside" in msg and ".bashrc" not in msg


def test_the_manager_refuses_them_too(tmp_path, confined):
    from studio.manager import ModelManager

    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ModelError, match="outside the models folder"):
        ModelManager(confined).get(str(tmp_path / "elsewhere"))


def test_inside_the_models_folder_messages_are_relative(confined):
    folder = confined.models_dir / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    msg = _refusal(str(folder), confined)
    assert msg.startswith("models/stuff is not a diffusers model folder") and "notes.txt" in msg
    assert str(confined.models_dir) not in msg
    assert _refusal("stuff", confined).startswith("models/stuff ")


def test_any_path_only_when_allowed(tmp_path, confined, tiny_model_dir):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "secret.txt").write_text("x")
    confined.allow_any_path = True
    assert sources.resolve(str(tiny_model_dir), confined).kind == "folder"
    assert "secret.txt" not in _refusal(str(bare), confined)  # loaded from, but never listed
    assert not app.config_from_args(app.parse_args([])).allow_any_path
    assert app.config_from_args(app.parse_args(["--allow-any-path"])).allow_any_path


def test_embedded_suite_and_the_cli_still_load(confined):
    from studio import cli

    if not (ASSETS_MODELS / "shapes-v1" / "model_index.json").is_file():
        pytest.skip("embedded suite not built")
    assert sources.resolve(str(ASSETS_MODELS / "shapes-v1"), confined).kind == "folder"
    assert cli._config(cli.build_parser().parse_args(["models"])).allow_any_path  # a local tool: any path


# ------------------------------------------------------------------ the outputs folder (item 16)
def test_generate_through_the_api_with_outputs_outside_the_working_folder(tmp_path, monkeypatch):
    """Gradio serves files from the working folder, the temp folder and allowed_paths only: outputs elsewhere must
    be allowed explicitly, or every finished image is an error although its PNG was saved."""
    from gradio_client import Client

    from studio import ui
    from studio.studio import Studio

    if not (ASSETS_MODELS / "shapes-v1" / "model_index.json").is_file():
        pytest.skip("embedded suite not built")
    (tmp_path / "systmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "systmp"))  # so the outputs are outside the temp folder
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    outputs = tmp_path / "outputs"
    assert not outputs.resolve().is_relative_to(Path.cwd().resolve())
    assert not outputs.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    studio = Studio(StudioConfig(models_dir=tmp_path / "models", outputs_dir=outputs))
    demo = ui.build(studio)
    server.launch(demo, server.ServeSettings(port=free_port()), studio.config, prevent_thread_lock=True, quiet=True,
                  **ui.launch_kwargs())
    try:
        client = Client(demo.local_url, verbose=False, download_files=str(tmp_path / "downloads"))
        start = time.time()
        result = client.predict(prompt="a big red star", steps=2, seed=3, preview_every=0, api_name="/generate")
        gallery = result[2]
        assert len(gallery) == 1 and Path(gallery[0]["image"]).is_file(), result
        assert Image.open(gallery[0]["image"]).size == (64, 64)
        assert len(list(outputs.glob("*.png"))) == 1 and time.time() - start < 120
    finally:
        demo.close()


def test_queue_loop_polls_at_the_studios_pace(tmp_path):
    """launch() slows Gradio's idle queue polling (1 ms -> QUEUE_POLL_S); the attributes it sets must still be the
    ones Gradio's loop reads, and jobs must still be picked up and finished."""
    from gradio import queueing

    loop_source = inspect.getsource(queueing.Queue.start_processing)
    assert "self.sleep_when_free" in loop_source
    assert "self.progress_update_sleep_when_free" in inspect.getsource(queueing.Queue.start_progress_updates)
    started, release = threading.Event(), threading.Event()
    release.set()
    demo = tiny_blocks(started, release)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
        server.launch(demo, server.ServeSettings(port=free_port()), StudioConfig(outputs_dir=tmp_path),
                      prevent_thread_lock=True, quiet=True)
        try:
            assert (demo._queue.sleep_when_free, demo._queue.progress_update_sleep_when_free) == \
                (server.QUEUE_POLL_S, server.PROGRESS_POLL_S)
            for text in ("first", "second"):  # one after another: each is picked up from an idle queue
                event = httpx.post(f"{demo.local_url}gradio_api/call/slow", json={"data": [text]}).json()["event_id"]
                reply = httpx.get(f"{demo.local_url}gradio_api/call/slow/{event}", timeout=30).text
                assert "event: complete" in reply and text in reply, reply
        finally:
            demo.close()
