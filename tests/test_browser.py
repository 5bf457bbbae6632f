"""The dashboard in a real browser: `streamlit run` on localhost, driven by Playwright in
Debian's headless Chromium. One server and one browser page for the module; the tests run
in order as one user would: click a car and compare two methods, download the results,
use every page's main action (Evaluate's Run included), take a detour through Upload, and
start and cancel a slow method."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app" / "streamlit_app.py"
FIXTURES = ROOT / "tests" / "fixtures"
TINY_SEG = FIXTURES / "app-tiny-seg.toml"
ARTIFACTS = ROOT / "tests" / "artifacts"
SCREENSHOT = ROOT / "docs" / "screenshot-explain.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCENE_SEED = 7
TIMEOUT_MS = 180_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, deadline_s: float = 90.0) -> None:
    """Poll the health endpoint until it answers "ok" (or the server dies)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            pass
        time.sleep(0.2)   # polling interval, not a synchronisation
    pytest.fail(f"streamlit did not become healthy in {deadline_s:.0f} s:\n{log.read_text()[-3000:]}")


def car_pixel(seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The generated scene and the pixel deepest inside its largest car."""
    from scipy import ndimage
    from neuroscope.synth import generate_scene
    scene = generate_scene(seed)
    cars = [o for o in scene.objects if o["class_id"] == 13]
    assert cars, f"scene {seed} has no car"
    largest = max(cars, key=lambda o: int((scene.instances == o["id"]).sum()))
    depth = ndimage.distance_transform_edt(scene.instances == largest["id"])
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return scene.image, (int(x), int(y))


@pytest.fixture(scope="module")
def chromium_path() -> str:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing: install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    return str(CHROMIUM)


def make_results(out: Path) -> Path:
    """A small `neuroscope batch` output folder (two generated scenes, grad-cam maps, one
    failed row), written with the batch store without running a model."""
    import json
    from PIL import Image
    from neuroscope.batch.store import Store
    from neuroscope.synth import generate_scene
    (out / "maps").mkdir(parents=True)
    store = Store(out)
    rng = np.random.default_rng(0)
    for i, seed in enumerate((SCENE_SEED, SCENE_SEED + 1)):
        path = out / f"scene{i}.png"
        Image.fromarray(generate_scene(seed, (64, 128)).image).save(path)
        np.savez_compressed(out / "maps" / f"scene{i}.npz", map=rng.random((64, 128)).astype(np.float16))
        store.add([{"image": f"scene{i}.png", "path": str(path), "method": "grad-cam", "status": "done",
                    "class_id": 13, "class_name": "car", "region": "all", "time_ms": 10.0 + i,
                    "height": 64, "width": 128, "map_file": f"maps/scene{i}.npz"}])
    store.add([{"image": "broken.png", "path": str(out / "broken.png"), "method": "grad-cam", "status": "failed",
                "error": "BadImage: cannot read broken.png"}])
    store.close()
    (out / "run.json").write_text(json.dumps({"model": "drivescene-seg", "images": 3, "engine": "local"}))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run` on a free localhost port; the bundled segmenter when present."""
    from neuroscope.zoo import bundled_specs
    bundled = "drivescene-seg" in bundled_specs()
    port = free_port()
    tmp_path = tmp_path_factory.mktemp("streamlit")
    results = make_results(tmp_path / "results" / "run1")          # for the Results page
    env = dict(os.environ, NEUROSCOPE_EXTRA_SPECS=str(TINY_SEG), NEUROSCOPE_INTERACTIVE_BUDGET_S="0.5",
               NEUROSCOPE_RESULTS_DIRS=str(results.parent),
               PYTHONPATH=os.pathsep.join(filter(None, [str(FIXTURES), os.environ.get("PYTHONPATH")])))
    log = tmp_path / "streamlit.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/_stcore/health", log)
        model = "drivescene-seg" if bundled else "tiny-seg-app-test"
        yield {"url": f"http://127.0.0.1:{port}/", "model": model,
               "spec": bundled_specs()["drivescene-seg"] if bundled else TINY_SEG, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_idle(page) -> None:
    """Wait until the script run finished (Streamlit's running indicator is gone)."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def page(chromium_path, server):
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1180}, accept_downloads=True)
            pg = context.new_page()
            outside: list[str] = []     # every asset must come from the app's own server
            pg.on("request", lambda r: None if r.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                  else outside.append(r.url))
            pg.outside = outside
            pg.goto(server["url"])
            yield pg
        finally:
            browser.close()


def no_errors(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, errors.all_inner_texts()


def go(page, title: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
    wait_idle(page)


def pick_method(page, name: str) -> None:
    field = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"] input').first
    field.click()                     # the text field, not a chip's remove button
    field.fill(name)                  # the option list is virtualised: filter it first
    page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")


def test_click_a_car_and_compare_two_methods(page, server):
    from playwright.sync_api import expect
    from neuroscope import Explainer, load_model
    from neuroscope.zoo import read_spec

    image, (cx, cy) = car_pixel(SCENE_SEED)
    H, W = image.shape[:2]
    sidebar = page.locator('[data-testid="stSidebar"]')
    summary = page.locator(".st-key-target_summary")
    expect(summary).to_be_visible(timeout=TIMEOUT_MS)

    # a segmentation model
    sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Model").click()
    page.get_by_role("option").filter(has_text=server["model"]).first.click()
    expect(summary).to_contain_text(server["model"], timeout=TIMEOUT_MS)

    # a generated street scene
    sidebar.get_by_text("Generated scene", exact=True).click()
    seed = sidebar.get_by_label("Scene seed")
    expect(seed).to_be_visible(timeout=TIMEOUT_MS)
    seed.fill(str(SCENE_SEED))
    seed.press("Enter")
    expect(summary).to_contain_text(f"generated scene {SCENE_SEED}", timeout=TIMEOUT_MS)
    wait_idle(page)

    # click the car (the component renders in an iframe; clicks are in displayed pixels)
    picture = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
    expect(picture).to_be_visible(timeout=TIMEOUT_MS)
    box = picture.bounding_box()
    picture.click(position={"x": (cx + 0.5) * box["width"] / W, "y": (cy + 0.5) * box["height"] / H})
    expect(summary).to_contain_text(re.compile(r"region \d+,\d+ "), timeout=TIMEOUT_MS)
    wait_idle(page)
    text = summary.inner_text()
    x, y = map(int, re.search(r"region (\d+),(\d+) ", text).groups())
    assert abs(x - cx) <= 2 and abs(y - cy) <= 2, (text, (cx, cy))
    engine = Explainer(load_model(read_spec(server["spec"])))
    expected = engine.classes[int(engine.predict(image).labels[y, x])]
    assert f"target {expected}" in text, (text, expected)

    # add a second method; two overlays appear side by side, each with its colour bar
    pick_method(page, "saliency")
    captions = page.locator('.st-key-overlays [data-testid="stImageCaption"]')
    expect(captions).to_have_count(2, timeout=TIMEOUT_MS)
    wait_idle(page)
    names = [c.split(" · ")[0] for c in captions.all_inner_texts()]
    assert names == ["grad-cam", "saliency"], names
    pictures = page.locator('.st-key-overlays [data-testid="stImage"] img')
    expect(pictures).to_have_count(4)                     # two overlays and two colour bars
    for i in range(4):
        expect(pictures.nth(i)).to_have_js_property("complete", True, timeout=TIMEOUT_MS)
        assert pictures.nth(i).evaluate("img => img.naturalWidth") > 0
    no_errors(page)

    assert page.outside == [], page.outside          # favicon and fonts served locally, no CDN

    shot = ARTIFACTS / "explain.png"
    page.screenshot(path=str(shot))
    if os.environ.get("NEUROSCOPE_UPDATE_SCREENSHOT"):  # refresh the README picture on demand
        shutil.copyfile(shot, SCREENSHOT)

    # the Parts view of the clicked car: parts outlined, shares beside drops, the Spearman sentence
    parts = page.locator(".st-key-parts_view")
    expect(parts).to_contain_text("Spearman(share, drop)", timeout=TIMEOUT_MS)
    expect(parts.locator('[data-testid="stImage"] img')).to_have_count(1)
    expect(parts.locator('[data-testid="stVegaLiteChart"]')).to_have_count(1)
    if server["model"] == "drivescene-seg":
        from neuroscope.parts import part_contributions
        from neuroscope.targets import Target
        want = part_contributions(engine, image, Target.segmentation(region=(x, y))).spearman
        shown = re.search(r"Spearman\(share, drop\) = ([+-]\d\.\d\d)", parts.inner_text()).group(1)
        assert shown == f"{want:+.2f}", (shown, want)
    no_errors(page)
    page.screenshot(path=str(ARTIFACTS / "parts.png"), full_page=True)


def test_downloads_arrive_with_the_maps_and_this_sessions_target(page, tmp_path):
    import io
    import json
    files = {}
    for label in ("Raw maps (.npz)", "Parameters (JSON)", "Overlays (PNG)"):
        with page.expect_download(timeout=TIMEOUT_MS) as info:
            page.get_by_role("button", name=label).click()
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        files[label] = path.read_bytes()
    with np.load(io.BytesIO(files["Raw maps (.npz)"])) as npz:
        assert sorted(npz.files) == ["grad-cam", "saliency"]
        assert npz["grad-cam"].ndim == 2 and np.ptp(npz["grad-cam"]) > 0
    doc = json.loads(files["Parameters (JSON)"])
    region = re.search(r"region (\d+,\d+) ", page.locator(".st-key-target_summary").inner_text()).group(1)
    assert doc["target"]["region"] == region and doc["methods"]["grad-cam"]["target"]["region"] == region
    assert files["Overlays (PNG)"][:8] == b"\x89PNG\r\n\x1a\n"
    wait_idle(page)
    no_errors(page)


def test_every_page_runs_its_main_action(page):
    from playwright.sync_api import expect
    # Layers: clicking the second tile of the filter grid selects another channel
    go(page, "Layers")
    expect(page.locator(".st-key-sweep [data-testid='stImage']").first).to_be_visible(timeout=TIMEOUT_MS)
    channel = page.get_by_label("Channel", exact=True)
    first = channel.input_value()
    grid = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
    expect(grid).to_be_visible(timeout=TIMEOUT_MS)
    gbox = grid.bounding_box()
    grid.click(position={"x": 1.5 * gbox["width"] / 8, "y": 10})
    expect(channel).not_to_have_value(first, timeout=TIMEOUT_MS)
    wait_idle(page)
    # the sort that puts the class's relevant filters first (the model interpretation)
    page.get_by_text("relevant filters of the class first", exact=True).click()
    expect(page.get_by_text("sorted by relevant filters of the class first")).to_be_visible(timeout=TIMEOUT_MS)
    wait_idle(page)
    no_errors(page)
    page.screenshot(path=str(ARTIFACTS / "layers.png"))

    go(page, "Ground truth")      # a generated scene has labels: scores and the confusion matrix
    expect(page.get_by_text("Mean IoU (this image)")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stVegaLiteChart"]').first).to_be_visible(timeout=TIMEOUT_MS)
    no_errors(page)

    go(page, "Model")
    expect(page.get_by_text("Architecture", exact=True)).to_be_visible(timeout=TIMEOUT_MS)
    no_errors(page)

    go(page, "Evaluate")
    page.get_by_label("Deletion/insertion steps").focus()
    run = page.get_by_role("button", name="Run evaluation")
    expect(run).to_be_visible(timeout=TIMEOUT_MS)
    run.click()
    expect(page.get_by_text("Deletion curves (mean over items)")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1, timeout=TIMEOUT_MS)
    expect(run).to_be_visible()
    wait_idle(page)
    no_errors(page)
    page.screenshot(path=str(ARTIFACTS / "evaluate.png"))


def test_a_detour_through_upload_keeps_the_choices(page):
    from playwright.sync_api import expect
    sidebar = page.locator('[data-testid="stSidebar"]')
    go(page, "Explain")
    summary = page.locator(".st-key-target_summary")
    before = summary.inner_text()
    layer = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Layer")
    layer.click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible(timeout=TIMEOUT_MS)
    options.nth(3).click()
    wait_idle(page)
    chosen = layer.inner_text()
    sidebar.get_by_text("Upload", exact=True).click()
    expect(page.get_by_text("Upload an image in the sidebar")).to_be_visible(timeout=TIMEOUT_MS)
    sidebar.get_by_text("Generated scene", exact=True).click()
    expect(summary).to_be_visible(timeout=TIMEOUT_MS)
    wait_idle(page)
    assert summary.inner_text() == before                       # same image, same clicked region
    assert sidebar.get_by_label("Scene seed").input_value() == str(SCENE_SEED)
    assert layer.inner_text() == chosen
    captions = page.locator('.st-key-overlays [data-testid="stImageCaption"]')
    expect(captions).to_have_count(2, timeout=TIMEOUT_MS)
    assert [c.split(" · ")[0] for c in captions.all_inner_texts()] == ["grad-cam", "saliency"]
    no_errors(page)


def test_a_slow_method_waits_for_compute_and_cancel_stops_it(page):
    from playwright.sync_api import expect
    pick_method(page, "occlusion")
    compute = page.get_by_role("button", name="Compute occlusion")
    expect(compute).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"not computed yet.*forward passes × \d+ ms"))).to_be_visible()
    expect(page.get_by_text(re.compile(r"Interactive settings: window 64, stride 32"))).to_be_visible()
    wait_idle(page)
    compute.click()
    cancel = page.get_by_role("button", name="Cancel")
    expect(cancel).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_text(re.compile(r"occlusion: .*so far"))).to_be_visible(timeout=TIMEOUT_MS)
    cancel.click()
    expect(page.get_by_text(re.compile(r"Cancelled after"))).to_be_visible(timeout=30_000)
    expect(compute).to_be_visible()
    no_errors(page)


def test_results_page_opens_a_row_in_explain(page, server):
    from playwright.sync_api import expect
    if server["model"] != "drivescene-seg":
        pytest.skip("the results fixture names the bundled segmenter")
    go(page, "Results")
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.get_by_text("3 of 3 rows")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".st-key-results_gallery img")).to_have_count(2, timeout=TIMEOUT_MS)
    status = page.get_by_role("radiogroup", name="Status")
    status.get_by_text("failed", exact=True).click()
    expect(page.get_by_text("1 of 3 rows")).to_be_visible(timeout=TIMEOUT_MS)
    status.get_by_text("done", exact=True).click()
    expect(page.get_by_text("2 of 3 rows")).to_be_visible(timeout=TIMEOUT_MS)
    wait_idle(page)
    no_errors(page)
    page.screenshot(path=str(ARTIFACTS / "results.png"))
    page.get_by_role("button", name="Open in Explain").click()
    summary = page.locator(".st-key-target_summary")
    expect(summary).to_contain_text("scene0.png", timeout=TIMEOUT_MS)
    expect(summary).to_contain_text("car", timeout=TIMEOUT_MS)
    expect(page.locator('.st-key-overlays [data-testid="stImageCaption"]').first).to_contain_text(
        "grad-cam", timeout=TIMEOUT_MS)
    wait_idle(page)
    no_errors(page)


def test_concepts_page_shows_the_relevant_filters_of_the_class_with_atlas_crops(page, server):
    from playwright.sync_api import expect
    go(page, "Concepts")
    if server["model"] == "drivescene-seg":   # its bundled interpretation
        expect(page.locator(".st-key-concepts_atlas [data-testid='stImage']").first).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text(re.compile(r"relevant filters of"))).to_be_visible()
        # click the second tile of the ranked-filter strip: that filter is picked (its class average shown)
        from neuroscope.interpret import load_interpretation
        from neuroscope.interpret.concepts import STRIP_COLS, ranked_filters
        from neuroscope.interpret.store import bundled_interpretation
        cls = re.search(r"relevant filters of (.+?) \(", page.get_by_text(re.compile(r"relevant filters of")).first
                        .inner_text()).group(1)
        ranked = ranked_filters(load_interpretation(bundled_interpretation("drivescene-seg"), arrays=False), cls)
        names = [f"{f['layer']}:{f['channel']}" for f in ranked]
        average = page.locator(".st-key-concepts_average [data-testid='stImageCaption']").first
        expect(average).to_contain_text(f"{names[0]}: class average for {cls}", timeout=TIMEOUT_MS)
        strip = page.frame_locator(".st-key-concepts_strip iframe").first.locator("#image")
        box = strip.bounding_box()
        strip.click(position={"x": 1.5 * box["width"] / STRIP_COLS, "y": 10})
        expect(average).to_contain_text(f"{names[1]}: class average for {cls}", timeout=TIMEOUT_MS)
        expect(page.locator("p", has_text=f"Where {names[1]} is most relevant for {cls}")).to_be_visible(
            timeout=TIMEOUT_MS)
        expect(page.locator("p", has_text=f"{names[1]}: its strongest activations")).to_be_visible(timeout=TIMEOUT_MS)
    wait_idle(page)
    no_errors(page)
    page.screenshot(path=str(ARTIFACTS / "concepts.png"))
