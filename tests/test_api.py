"""The page's API as a script sees it (gradio_client against a served studio on the embedded suite): one endpoint per
main action with named, optional parameters; failures raised with the page's message; two users never mixed; the
README's examples run as written."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from conftest import free_port

from studio.config import ASSETS_MODELS, ASSETS_SAMPLES, StudioConfig

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (ASSETS_MODELS / "shapes-v1" / "model_index.json").is_file(),
                                reason="embedded suite not built")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from studio import server, ui
    from studio.studio import Studio

    outputs = tmp_path_factory.mktemp("outputs")
    studio = Studio(StudioConfig(models_dir=tmp_path_factory.mktemp("models"), outputs_dir=outputs))
    demo = ui.build(studio)
    server.launch(demo, server.ServeSettings(port=free_port()), studio.config, prevent_thread_lock=True, quiet=True,
                  **ui.launch_kwargs())
    yield demo.local_url, outputs
    demo.close()


@pytest.fixture()
def client(served, tmp_path):
    from gradio_client import Client

    return Client(served[0], verbose=False, download_files=str(tmp_path))


def test_only_the_main_actions_are_endpoints_and_their_parameters_have_names(client):
    from studio.ui import PUBLIC_ENDPOINTS
    from studio.ui.form import FIELDS

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(api) == sorted(f"/{name}" for name in PUBLIC_ENDPOINTS)
    assert not api.get("unnamed_endpoints")
    generate = [p["parameter_name"] for p in api["/generate"]["parameters"]]
    assert generate == list(FIELDS)
    for name, endpoint in api.items():
        for p in endpoint["parameters"]:
            assert not p["parameter_name"].startswith("param_"), (name, p)
            assert p["parameter_has_default"], (name, p["parameter_name"])  # every parameter is optional


def test_generate_by_name_twice_then_with_one_setting_changed(client):
    from PIL import Image

    first = client.predict(prompt="a big red star", steps=2, seed=5, preview_every=0, api_name="/generate")
    again = client.predict(prompt="a big red star", steps=2, seed=5, preview_every=0, api_name="/generate")
    other = client.predict(prompt="a big red star", steps=2, seed=6, preview_every=0, api_name="/generate")
    for result, seed in ((first, 5), (again, 5), (other, 6)):
        live, status, gallery, used_seed, settings = result
        assert used_seed == str(seed) and f"Seed: {seed}" in settings and "Done" in status
        assert Image.open(gallery[0]["image"]).info.get("parameters", "").startswith("a big red star")
    # The big view ends on the saved PNG, settings included (not a settings-less preview).
    assert Image.open(first[0]).info.get("parameters", "").startswith("a big red star")


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "Steps must be between 1 and"),
    ({"steps": 10000}, "Steps must be between 1 and"),
    ({"seed": 2**70}, "Seed must be -1 (random) or between 0 and"),
    ({"steps": 2.5}, "Steps must be a whole number"),
    ({"width": 4096, "height": 4096}, "must be between 32 and 2048"),
    ({"model": "/etc"}, "outside"),
    ({"prompt": "a red star " * 100_000}, "characters; at most 10,000 are accepted"),
    ({"cfg_start": 0.8, "cfg_end": 0.2}, "The CFG interval must satisfy"),
])
def test_bad_values_raise_the_pages_message(client, values, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as e:
        client.predict(**{"prompt": "a red star", **values}, api_name="/generate")
    assert message in str(e.value)


@pytest.mark.parametrize("field, raw", [("width", "NaN"), ("height", "Infinity"), ("seed", "-Infinity")])
def test_nan_and_infinity_sent_raw_get_the_pages_message(client, served, field, raw):
    """gradio_client refuses to send NaN, but a raw request can: it meets the same checks, and as a script (no page
    origin) it gets the failure as an error event, not a successful result holding a message."""
    import httpx

    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]["parameters"]
    values = [{"prompt": "a red star", "steps": 2}.get(p["parameter_name"], p["parameter_default"]) for p in api]
    data = [raw if p["parameter_name"] == field else json.dumps(v) for p, v in zip(api, values)]
    body = '{"data": [' + ", ".join(data) + "]}"
    base = served[0].rstrip("/")
    event = httpx.post(f"{base}/gradio_api/call/generate", content=body, headers={"content-type": "application/json"})
    assert event.status_code == 200, event.text
    stream = httpx.get(f"{base}/gradio_api/call/generate/{event.json()['event_id']}", timeout=120).text
    assert "event: error" in stream and f"{field.capitalize()} must be a finite number" in stream, stream[-500:]


def test_inverse_rejects_a_huge_seed_and_a_corrupt_image_with_messages(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    sample = handle_file(str(sorted(ASSETS_SAMPLES.glob("*.png"))[0]))
    with pytest.raises(AppError, match="Seed must be between 0 and"):
        client.predict(image={"background": sample, "layers": [], "composite": None}, seed=2**70, steps=2,
                       api_name="/inverse")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a picture")
    with pytest.raises(AppError, match="not an image that can be read"):
        client.predict(image={"background": handle_file(str(broken)), "layers": [], "composite": None}, steps=2,
                       api_name="/inverse")


def test_inverse_fast_dps_with_the_tiny_decoder_by_name(client):
    from gradio_client import handle_file

    sample = handle_file(str(sorted(ASSETS_SAMPLES.glob("*.png"))[0]))
    out = client.predict(image={"background": sample, "layers": [], "composite": None}, operator="super_resolution",
                         steps=4, dps_mode="fast", tiny_decoder=True, api_name="/inverse")
    assert "fast DPS (tiny decoder)" in out[-1]


def test_a_corrupt_image_for_the_control_maps_is_a_message(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    broken = tmp_path / "photo.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(AppError, match="photo.png is not an image that can be read"):
        client.predict(prompt="a red star", cn1_source="canny", cn1_controlnet="shapes-v1-canny",
                       cn1_image=handle_file(str(broken)), api_name="/controlnet_maps")


def test_two_users_at_once_get_their_own_images_and_settings(served, tmp_path):
    from gradio_client import Client

    results: dict[int, tuple] = {}

    def user(k: int):
        client = Client(served[0], verbose=False, download_files=str(tmp_path / str(k)))
        results[k] = client.predict(prompt=f"{k + 2} blue squares", steps=3, seed=100 + k, preview_every=0,
                                    api_name="/generate")

    threads = [threading.Thread(target=user, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(results) == [0, 1, 2]
    for k, (_, _, gallery, seed, settings) in results.items():
        assert seed == str(100 + k) and settings.startswith(f"{k + 2} blue squares") and f"Seed: {100 + k}" in settings
        assert len(gallery) == 1  # the gallery of one user's session holds only their own image


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Scripting the page"):]
    section = section[:section.index("\n## ", 5)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_has_an_example_per_tab():
    joined = "\n".join(readme_examples())
    for endpoint in ("/generate", "/controlnet", "/inverse", "/sweep", "/flow_2d", "/flow_compare", "/personalize_start"):
        assert f'api_name="{endpoint}"' in joined


@pytest.mark.parametrize("k", range(6))
def test_readme_example_runs(served, k, monkeypatch, capsys):
    examples = readme_examples()
    assert len(examples) == 6
    monkeypatch.chdir(ROOT)
    code = examples[k].replace("http://127.0.0.1:7860/", served[0])
    exec(compile(code, f"README example {k + 1}", "exec"), {})
    assert capsys.readouterr().out.strip()
