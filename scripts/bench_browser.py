"""Dashboard latency as a user sees it: `streamlit run` + headless Chromium (Playwright).

Measures, on the bundled segmenter and a generated street scene, with Grad-CAM shown:
- first page: navigation -> the first overlay on screen (model load and first map included);
- click -> map: a click on a new object -> its Grad-CAM decoded in the page (each click a
  different predicted object, so nothing is cached); also until the click's script run ended;
- layer switch: another layer in the sidebar -> its Grad-CAM shown.
The server writes each script run's phases (NEUROSCOPE_APP_PROFILE, app/dashboard/timing.py):
the script prints where a click's time goes, server side per phase and browser side.
Prints a Markdown table of medians (and min/max) over `--clicks` repeats, plus a bare
forward+backward of the model in this process as the reference the click is compared to.
The machine's load inflates every number: compare within one run, and report the load.

    python scripts/bench_browser.py [--clicks 10] [--pause 0] [--app app/streamlit_app.py]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "drivescene-seg"
SEED = 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(app: Path, log: Path, env: dict) -> Iterator[tuple[subprocess.Popen, int]]:
    """`streamlit run APP` on a free local port, healthy when entered, stopped on exit:
    yields (process, port). Its output goes to `log`."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
                                 "--server.address", "127.0.0.1", "--server.headless", "true",
                                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                                cwd=app.parent.parent, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                time.sleep(0.2)   # polling the server's start, not a synchronisation of the page
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def open_page(pw, chromium: str):
    """Headless Chromium (the Debian one, never a download) and one page of the size the
    benchmarks use: (browser, page, sidebar locator, target summary locator)."""
    browser = pw.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1440, "height": 1180})
    return browser, page, page.locator('[data-testid="stSidebar"]'), page.locator(".st-key-target_summary")


def click_points(n: int) -> list[tuple[int, int]]:
    """The deepest pixel of each of the n largest predicted objects, each one's Grad-CAM
    different from the one before (two regions of one class can give proportional maps, i.e.
    the same picture, and the page would not change); the first differs from the page's
    default target (the predicted mask of the largest class)."""
    from scipy import ndimage
    from neuroscope import Explainer, Target, load_model
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
    def picture(target: Target) -> np.ndarray:
        m = ex.explain(scene.image, "grad-cam", target=target).map
        return m / max(float(m.max()), 1e-12)
    kept, last = [], picture(Target.segmentation(int(np.bincount(labels.ravel()).argmax()), region="predicted"))
    for _, x, y in found:
        m = picture(Target.segmentation(None, region=(x, y)))
        if float(np.abs(m - last).max()) > 0.02:
            kept.append((x, y))
            last = m
        if len(kept) == n:
            return kept
    raise SystemExit(f"scene {SEED} has only {len(kept)} objects with distinct maps; use --clicks {len(kept)}")


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


class Profile:
    """The server's per-run phase log (NEUROSCOPE_APP_PROFILE, app/dashboard/timing.py)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def since_mark(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as fh:
            fh.seek(self.offset)
            return [json.loads(line) for line in fh if line.strip()]


def breakdown(runs_per_action: list[list[dict]]) -> dict[str, float]:
    """Median over actions of each phase's ms summed over the action's script runs."""
    names = sorted({k for runs in runs_per_action for r in runs for k in r["phases"]})
    out = {"script runs": statistics.median(len(r) for r in runs_per_action),
           "server total": statistics.median(sum(x["total_ms"] for x in r) for r in runs_per_action)}
    for n in names:
        out[n] = statistics.median(sum(x["phases"].get(n, 0.0) for x in r) for r in runs_per_action)
    return out


def wait_idle(page, timeout_ms: int = 300_000) -> None:
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


MAP_IMG = ".st-key-overlays img"     # the first overlay of the Explain page (the legend comes after it)


def map_src(page) -> str:
    return page.evaluate(f"() => {{ const i = document.querySelector('{MAP_IMG}'); return i ? i.src : '' }}")


def wait_new_map(page, before_src: str, before_text: str | None = None, timeout_ms: int = 300_000) -> None:
    """Until the browser shows a new overlay, decoded (and, for a click, the new target in the
    summary line). Polled every animation frame: no polling interval inflates the time."""
    page.wait_for_function("""([src, text]) => {
        const sel = document.querySelector('%s');
        if (text !== null) {
            const s = document.querySelector('.st-key-target_summary');
            if (!s || s.innerText === text) return false;
        }
        const i = sel;
        return !!i && i.src !== src && i.complete && i.naturalWidth > 0;
    }""" % MAP_IMG, arg=[before_src, before_text], polling="raf", timeout=timeout_ms)


def runs_of_action(profile: "Profile", t0: float, timeout_s: float = 60.0) -> list[dict]:
    """The server's script runs that started after `t0` (waits for the first one's line: the
    status widget can vanish before the run's last statement)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        runs = [r for r in profile.since_mark() if r["t"] >= t0 - 0.01]
        if runs:
            return runs
        time.sleep(0.02)   # polling a file the server appends to
    return []


class Timed:
    """One action: wall times on the machine's clock (the server's lines use the same clock)."""

    def __init__(self, t0: float, t_map: float, runs: list[dict]):
        self.t0, self.t_map, self.runs = t0, t_map, runs

    @property
    def to_map(self) -> float:
        return self.t_map - self.t0

    @property
    def to_done(self) -> float:
        if not self.runs:
            return self.to_map
        return max(self.to_map, max(r["t"] + r["total_ms"] / 1000 for r in self.runs) - self.t0)

    def split(self) -> dict[str, float] | None:
        """click -> run start (websocket, rerun request), run start -> map handed over (server),
        map handed over -> map decoded in the browser (delta, image fetch and decode), ms."""
        first = next((r for r in self.runs if "map sent" in r.get("marks", {})), None)
        if first is None:
            return None
        start = first["t"] - self.t0
        sent = start + first["marks"]["map sent"] / 1000
        return {"click -> run start": 1000 * start, "run start -> map sent (server)": 1000 * (sent - start),
                "map sent -> map decoded (browser)": 1000 * (self.to_map - sent)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--app", default=str(ROOT / "app" / "streamlit_app.py"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds a user looks at the map before the next click (0: at once; the previous "
                         "click's background fills then still run)")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    points = click_points(args.clicks)
    log = Path(tempfile.mkdtemp(prefix="bench-browser-")) / "streamlit.log"
    profile = Profile(log.with_name("profile.jsonl"))
    app = Path(args.app).resolve()
    env = dict(os.environ, NEUROSCOPE_APP_PROFILE=str(profile.path),
               PYTHONPATH=os.pathsep.join(filter(None, [str(app.parent.parent), os.environ.get("PYTHONPATH")])))
    timed: dict[str, list[Timed]] = {"click -> map": [], "layer switch": []}
    first_page: list[float] = []
    with serve_app(app, log, env) as (proc, port):
        url = f"http://127.0.0.1:{port}/?"
        with sync_playwright() as pw:
            browser, page, sidebar, summary = open_page(pw, args.chromium)
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
            expect(captions.first).to_be_visible(timeout=300_000)
            wait_idle(page)
            rss_start = rss_mb(proc.pid)

            for x, y in points:
                if args.pause > 0:
                    time.sleep(args.pause)   # the user's look at the map (a workload parameter, not a wait for the page)
                picture = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
                expect(picture).to_be_visible(timeout=300_000)
                box = picture.bounding_box()
                before, src = summary.inner_text(), map_src(page)
                profile.mark()
                t0 = time.time()
                page.mouse.click(box["x"] + (x + 0.5) * box["width"] / 512, box["y"] + (y + 0.5) * box["height"] / 256)
                wait_new_map(page, src, before)
                t_map = time.time()
                wait_idle(page)
                timed["click -> map"].append(Timed(t0, t_map, runs_of_action(profile, t0)))

            layer_box = sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Layer")
            for name in layer_names(args.clicks):
                layer_box.click()
                page.keyboard.type(name)          # the list is virtualised: filter, then take the first match
                option = page.get_by_role("option").filter(has_text=f"{name} · ").first
                expect(option).to_be_visible(timeout=300_000)
                src = map_src(page)
                profile.mark()
                t0 = time.time()
                option.click()
                wait_new_map(page, src)
                t_map = time.time()
                expect(captions.first).to_contain_text(f" · {name} · ", timeout=300_000)
                wait_idle(page)
                timed["layer switch"].append(Timed(t0, t_map, runs_of_action(profile, t0)))

            for _ in range(max(3, args.clicks // 3)):   # a fresh tab: the session state is new
                tab = browser.new_page(viewport={"width": 1440, "height": 1180})
                t0 = time.perf_counter()
                tab.goto(url)
                expect(tab.locator('.st-key-overlays [data-testid="stImageCaption"]').first).to_be_visible(
                    timeout=300_000)
                wait_idle(tab)
                first_page.append(time.perf_counter() - t0)
                tab.close()
            browser.close()
            rss_end = rss_mb(proc.pid)
    ref = reference_pass_ms()
    load = os.getloadavg()
    print(f"Dashboard latency, {MODEL} on generated scene {SEED}, Grad-CAM shown; {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) at the end\n")
    print("| action | n | median s | min s | max s |\n|---|---:|---:|---:|---:|")

    def row(name: str, values: list[float]) -> None:
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |")
    row("first page", first_page)
    for name, actions in timed.items():
        row(name, [a.to_map for a in actions])
        row(f"{name}: script run finished", [a.to_done for a in actions])
    clicks = timed["click -> map"]
    click_ms = 1000 * statistics.median(a.to_map for a in clicks)
    print(f"\nReference: bare forward+backward to the default layer in this process, median {ref:.0f} ms; "
          f"click -> map = {click_ms / ref:.1f}x that (the browser round trip, rendering and the page's own "
          "work included).")
    print("Timed until the new overlay is decoded in the page (polled every animation frame); 'script run "
          "finished' until the server's script run of the action ended (what comes after the map: downloads, "
          "parts view).")
    engine_ms = statistics.median(sum(r["phases"].get("cam", 0.0) for r in a.runs) for a in clicks)
    print(f"Goal (issue 17): click -> map <= 1.5 x fwd+bwd + rendering. The click's model work (the engine call "
          f"of the shown map, phase 'cam'): median {engine_ms:.0f} ms = {engine_ms / ref:.2f}x fwd+bwd (goal <= "
          f"1.5x); the rest of click -> map ({click_ms - engine_ms:.0f} ms) is the page without the model: "
          f"browser event, websocket, script rerun, pictures, drawing. Pause between clicks: {args.pause:g} s.")
    split = [a.split() for a in clicks]
    if all(split):
        b = breakdown([a.runs for a in clicks])
        render_ms = sum(b.get(k, 0.0) for k in ("overlay", "legend", "encode"))
        decode_ms = statistics.median(s["map sent -> map decoded (browser)"] for s in split)
        rest_ms = click_ms - render_ms - decode_ms
        print(f"Narrower: rendering as the server's overlay + legend + image encoding phases ({render_ms:.0f} ms) "
              f"plus the browser's share after the map was handed over ({decode_ms:.0f} ms): click -> map - "
              f"rendering = {rest_ms:.0f} ms = {rest_ms / ref:.2f}x fwd+bwd.")
        print("\nclick -> map, where the time goes (median ms over the clicks):\n")
        print("| part | ms |\n|---|---:|")
        for k in split[0]:
            print(f"| {k} | {statistics.median(s[k] for s in split):.0f} |")
    print("First page: the model was already loaded by the server (the first tab of the run loaded it).")
    for name, actions in timed.items():
        runs = [a.runs for a in actions]
        if not any(runs):
            continue   # an app without the profile hook (e.g. an older checkout)
        b = breakdown(runs)
        print(f"\n{name}, server side (median ms over the actions, summed over each action's script runs; "
              f"{b.pop('script runs'):g} run(s) per action):\n")
        print("| phase | ms |\n|---|---:|")
        for k, v in sorted(b.items(), key=lambda kv: -kv[1]):
            if v >= 0.05:
                print(f"| {k} | {v:.1f} |")
    print(f"\nServer RSS: {rss_start:.0f} MB after the set-up, {rss_end:.0f} MB at the end.")

if __name__ == "__main__":
    main()
