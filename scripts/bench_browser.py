"""Dashboard latency as a user sees it: `streamlit run` + headless Chromium (Playwright).

Measures, on the bundled segmenter and a generated street scene, with Grad-CAM shown:
- first page: navigation -> the first overlay on screen (model load and first map included);
- click -> map: a click on a new object -> the script run that shows its Grad-CAM finished
  (each click a different predicted object, so nothing is cached);
- layer switch: another layer in the sidebar -> its Grad-CAM shown.
Prints a Markdown table of medians (and min/max) over `--clicks` repeats, plus a bare
forward+backward of the model in this process as the reference the click is compared to.
The machine's load inflates every number: compare within one run, and report the load.

    python scripts/bench_browser.py [--clicks 10] [--app app/streamlit_app.py] [--port 8599]
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "drivescene-seg"
SEED = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def click_points(n: int) -> list[tuple[int, int]]:
    """The deepest pixel of each of the n largest predicted objects (distinct regions)."""
    from scipy import ndimage
    from neuroscope import Explainer, load_model
    from neuroscope.synth import generate_scene
    from neuroscope.zoo import bundled_specs, read_spec
    scene = generate_scene(SEED)
    ex = Explainer(load_model(read_spec(bundled_specs()[MODEL])))
    labels = ex.predict(scene.image).labels
    found = []
    for c in np.unique(labels):
        comp, k = ndimage.label(labels == c, structure=np.ones((3, 3), bool))
        for i in range(1, k + 1):
            part = comp == i
            size = int(part.sum())
            if size >= 150:
                depth = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]   # away from the border too
                y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
                found.append((size, int(x), int(y)))
    found.sort(reverse=True)
    if len(found) < n:
        raise SystemExit(f"scene {SEED} has only {len(found)} objects; use --clicks {len(found)}")
    return [(x, y) for _, x, y in found[:n]]


def layer_names(n: int) -> list[str]:
    """n spatial layers spread over the model, none of them the default."""
    from neuroscope import Explainer, load_model
    from neuroscope.zoo import bundled_specs, read_spec
    ex = Explainer(load_model(read_spec(bundled_specs()[MODEL])))
    names = [l.name for l in ex.spatial_layers() if l.name != ex.default_layer()]
    step = max(1, len(names) // n)
    return names[step - 1::step][:n]


def reference_pass_ms(repeats: int = 5) -> float:
    """Median forward+backward (input gradient, one image) of the model in this process."""
    from neuroscope import Explainer, load_model
    from neuroscope.synth import generate_scene
    from neuroscope.zoo import bundled_specs, read_spec
    ex = Explainer(load_model(read_spec(bundled_specs()[MODEL])))
    scene = generate_scene(SEED)
    prep = ex.prepare(scene.image)
    rt = ex.resolve(prep)
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        ex.backend.capture(prep.x, rt.objective, [ex.default_layer()], input_grad=False, gradients=False)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times[1:])


def rss_mb(pid: int) -> float:
    """Resident memory of the server process (Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def wait_idle(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--app", default=str(ROOT / "app" / "streamlit_app.py"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    points = click_points(args.clicks)
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="bench-browser-")) / "streamlit.log"
    app = Path(args.app).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(app.parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=app.parent.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
    rows: dict[str, list[float]] = {"first page": [], "click -> map": [], "layer switch": []}
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)   # polling the server's start, not a synchronisation of the page
        url = f"http://127.0.0.1:{port}/?"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium,
                                         args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 1180})
            sidebar = page.locator('[data-testid="stSidebar"]')
            summary = page.locator(".st-key-target_summary")
            captions = page.locator('.st-key-overlays [data-testid="stImageCaption"]')

            # set up: the segmenter and the scene (the first page of a fresh tab is timed below)
            page.goto(url)
            expect(summary).to_be_visible(timeout=300_000)
            sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Model").click()
            page.get_by_role("option").filter(has_text=f"{MODEL} ·").first.click()
            expect(summary).to_contain_text(MODEL, timeout=300_000)
            sidebar.get_by_text("Generated scene", exact=True).click()
            seed = sidebar.get_by_label("Scene seed")
            seed.fill(str(SEED))
            seed.press("Enter")
            expect(summary).to_contain_text(f"generated scene {SEED}", timeout=300_000)
            wait_idle(page)
            rss_start = rss_mb(proc.pid)

            for i, (x, y) in enumerate(points):
                picture = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
                expect(picture).to_be_visible(timeout=300_000)
                box = picture.bounding_box()
                before = summary.inner_text()
                t0 = time.perf_counter()
                picture.click(position={"x": (x + 0.5) * box["width"] / 512, "y": (y + 0.5) * box["height"] / 256})
                expect(summary).not_to_have_text(before, timeout=300_000)   # the click's region (+-1 px rounding)
                expect(captions.first).to_be_visible(timeout=300_000)
                wait_idle(page)
                rows["click -> map"].append(time.perf_counter() - t0)

            layer_box = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Layer")
            for name in layer_names(args.clicks):
                layer_box.click()
                page.keyboard.type(name)          # the list is virtualised: filter, then take the first match
                option = page.get_by_role("option").filter(has_text=f"{name} · ").first
                expect(option).to_be_visible(timeout=300_000)
                t0 = time.perf_counter()
                option.click()
                expect(captions.first).to_contain_text(f" · {name} · ", timeout=300_000)
                wait_idle(page)
                rows["layer switch"].append(time.perf_counter() - t0)

            for _ in range(max(3, args.clicks // 3)):   # a fresh tab: the session state is new
                tab = browser.new_page(viewport={"width": 1440, "height": 1180})
                t0 = time.perf_counter()
                tab.goto(url)
                expect(tab.locator('.st-key-overlays [data-testid="stImageCaption"]').first).to_be_visible(
                    timeout=300_000)
                wait_idle(tab)
                rows["first page"].append(time.perf_counter() - t0)
                tab.close()
            browser.close()
            rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    ref = reference_pass_ms()
    load = os.getloadavg()
    print(f"Dashboard latency, {MODEL} on generated scene {SEED}, Grad-CAM shown; {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) at the end\n")
    print("| action | n | median s | min s | max s |\n|---|---:|---:|---:|---:|")
    for name, values in rows.items():
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    print(f"\nReference: bare forward+backward to the default layer in this process, median {ref:.0f} ms; "
          f"click -> map = {1000 * statistics.median(rows['click -> map']) / ref:.1f}x that (rendering, "
          "the browser round trip and the page's own work included).")
    print("First page: the model was already loaded by the server (the first tab of the run loaded it).")
    print(f"Server RSS: {rss_start:.0f} MB after the set-up, {rss_end:.0f} MB at the end.")


if __name__ == "__main__":
    main()
