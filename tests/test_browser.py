"""The dashboard in a real browser: `streamlit run` on localhost, driven by Playwright in
Debian's headless Chromium. Picks a segmentation model, clicks a car in a generated
street scene, adds a second method, and checks that two overlays appear."""
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


@pytest.fixture
def chromium_path() -> str:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing: install Debian's chromium (.ci/run does)")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    return str(CHROMIUM)


@pytest.fixture
def server(tmp_path):
    """`streamlit run` on a free localhost port; the bundled segmenter when present."""
    from neuroscope.zoo import bundled_specs
    bundled = "drivescene-seg" in bundled_specs()
    port = free_port()
    env = dict(os.environ, NEUROSCOPE_EXTRA_SPECS=str(TINY_SEG),
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


def test_click_a_car_and_compare_two_methods(chromium_path, server):
    from playwright.sync_api import expect, sync_playwright
    from neuroscope import Explainer, load_model
    from neuroscope.zoo import read_spec

    image, (cx, cy) = car_pixel(SCENE_SEED)
    H, W = image.shape[:2]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1180})
            page.goto(server["url"])
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

            # add a second method; two overlays appear side by side
            sidebar.locator('[data-testid="stMultiSelect"]').click()
            page.get_by_role("option", name="saliency", exact=True).click()
            page.keyboard.press("Escape")
            captions = page.locator('.st-key-overlays [data-testid="stImageCaption"]')
            expect(captions).to_have_count(2, timeout=TIMEOUT_MS)
            wait_idle(page)
            names = [c.split(" · ")[0] for c in captions.all_inner_texts()]
            assert names == ["grad-cam", "saliency"], names
            overlays = page.locator('.st-key-overlays [data-testid="stImage"] img')
            expect(overlays).to_have_count(2)
            for i in range(2):
                expect(overlays.nth(i)).to_have_js_property("complete", True, timeout=TIMEOUT_MS)
                assert overlays.nth(i).evaluate("img => img.naturalWidth") > 0
            assert page.locator('[data-testid="stException"]').count() == 0
            assert page.locator('[data-testid="stAlertContentError"]').count() == 0

            shot = ARTIFACTS / "explain.png"
            page.screenshot(path=str(shot))
            if os.environ.get("NEUROSCOPE_UPDATE_SCREENSHOT"):  # refresh the README picture on demand
                shutil.copyfile(shot, SCREENSHOT)

            # the Layers page shows the same target's filter grid
            page.locator('[data-testid="stSidebarNav"]').get_by_text("Layers", exact=True).click()
            expect(page.locator('iframe[title*="streamlit_image_coordinates"]')).to_have_count(1, timeout=TIMEOUT_MS)
            expect(page.locator(".st-key-sweep [data-testid='stImage']").first).to_be_visible(timeout=TIMEOUT_MS)
            wait_idle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            # clicking the second tile of the filter grid selects another channel
            channel = page.get_by_label("Channel", exact=True)
            first = channel.input_value()
            grid = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
            gbox = grid.bounding_box()
            grid.click(position={"x": 1.5 * gbox["width"] / 8, "y": 10})
            expect(channel).not_to_have_value(first, timeout=TIMEOUT_MS)
            wait_idle(page)
            page.screenshot(path=str(ARTIFACTS / "layers.png"))

            # the Concepts page: the relevant filters of the class with their atlas crops
            page.locator('[data-testid="stSidebarNav"]').get_by_text("Concepts", exact=True).click()
            if server["model"] == "drivescene-seg":   # the bundled interpretation
                expect(page.locator(".st-key-concepts_atlas [data-testid='stImage']").first).to_be_visible(
                    timeout=TIMEOUT_MS)
            wait_idle(page)
            assert page.locator('[data-testid="stException"]').count() == 0
            page.screenshot(path=str(ARTIFACTS / "concepts.png"))
        finally:
            browser.close()
