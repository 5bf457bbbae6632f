"""Server memory over a long dashboard session: `streamlit run` + headless Chromium.

    python scripts/soak_app.py --actions 120 [--every 10] [--seed 0]

Warm-up: every bundled model is picked once and every page visited once (so every
framework, model and page has allocated what it keeps). Then `--actions` user actions
drawn from a seeded generator, as a lab user would: a click on the picture (a new region),
a new generated scene, another layer, another model, another page and back to Explain.
The server's RSS (/proc/PID/status) is read after every action and printed every
`--every` actions. RSS is a sawtooth, not a line: freed memory stays in the heap until glibc
trims it (up to 1 GiB per arena, neuroscope/runtime.py) and the engine caches fill up to
their shared budget and then evict. So the summary gives, per quarter of the actions, the
min / median / max RSS (bounded = the quarters' maxima stop rising), and two slopes in MB
per 100 actions: a least-squares fit of every sample of the second half, and one of the
quarters' maxima. Each script run's RSS is also in the profile log (NEUROSCOPE_APP_PROFILE).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_browser import ROOT, Profile, open_page, rss_mb, serve_app, wait_idle  # noqa: E402

SEG = "drivescene-seg"
PAGES = ["Layers", "Ground truth", "Model", "Results", "Concepts", "Evaluate"]


def slope_per_100(actions: list[int], rss: list[float]) -> float:
    half = len(actions) // 2
    x, y = np.asarray(actions[half:], float), np.asarray(rss[half:], float)
    return float(np.polyfit(x, y, 1)[0] * 100.0) if len(x) >= 2 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actions", type=int, default=120)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--app", default=str(ROOT / "app" / "streamlit_app.py"))
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--trace", action="store_true", help="tracemalloc in the server: the allocation sites that "
                    "grew, every 20 script runs, in FOLDER/tracemalloc.txt (slow; app/dashboard/timing.py)")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright
    from neuroscope.zoo import bundled_specs

    models = list(bundled_specs())
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="soak-app-"))
    app = Path(args.app).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(app.parent.parent),
                                                                    os.environ.get("PYTHONPATH")])))
    env["NEUROSCOPE_APP_PROFILE"] = str(folder / "profile.jsonl")   # each run's end: the actions wait for it
    profile = Profile(folder / "profile.jsonl")
    if args.trace:
        env["NEUROSCOPE_APP_TRACEMALLOC"] = str(folder / "tracemalloc.txt")
    log = folder / "streamlit.log"
    samples: list[tuple[int, float]] = []
    counts: dict[str, int] = {}
    t_start = time.monotonic()
    try:
        with serve_app(app, log, env) as (proc, port):
            with sync_playwright() as pw:
                browser, page, sidebar, summary = open_page(pw, args.chromium)
                nav = page.locator('[data-testid="stSidebarNav"]')
                page.goto(f"http://127.0.0.1:{port}/?")
                expect(summary).to_be_visible(timeout=120_000)
                wait_idle(page)

                def settle(t0: float, timeout_s: float = 120.0) -> None:
                    """Until a script run that started after t0 has ended and the page is idle (the
                    status widget alone can vanish before a run's end or show up late)."""
                    end = time.monotonic() + timeout_s
                    while time.monotonic() < end and not any(r["t"] >= t0 for r in profile.since_mark()):
                        time.sleep(0.05)   # polling the file the server appends to
                    wait_idle(page)

                def act(fn, *a) -> None:
                    profile.mark()
                    t0 = time.time()
                    fn(*a)
                    settle(t0)

                def go(title: str) -> None:
                    act(lambda: nav.get_by_text(title, exact=True).click())

                def pick_model(name: str) -> None:
                    sidebar.locator('[data-testid="stSelectbox"]').filter(has_text="Model").click()
                    act(lambda: page.get_by_role("option").filter(has_text=f"{name} ·").first.click())
                    expect(summary).to_contain_text(f"{name} · ", timeout=120_000)

                def new_scene() -> None:
                    radio = sidebar.get_by_text("Generated scene", exact=True)
                    if radio.count() and not sidebar.get_by_label("Scene seed").count():
                        act(radio.click)
                    seed = sidebar.get_by_label("Scene seed")
                    if seed.count():
                        seed.fill(str(rng.randrange(1000)))
                        act(seed.press, "Enter")

                def click_picture() -> None:
                    frame = page.frame_locator('iframe[title*="streamlit_image_coordinates"]').first.locator("#image")
                    if not frame.count():
                        return
                    box = frame.bounding_box()
                    if box is None:   # redrawn just now: no click this time
                        return
                    act(page.mouse.click, box["x"] + rng.random() * box["width"], box["y"] + rng.random() * box["height"])

                def switch_layer() -> None:
                    box = sidebar.get_by_role("combobox", name="Layer", exact=True)
                    if not box.count():
                        return
                    box.click()
                    options = page.get_by_role("option")
                    expect(options.first).to_be_visible(timeout=60_000)
                    act(options.nth(rng.randrange(min(8, options.count()))).click)

                # warm-up: every model on the Explain page, then every page once
                for name in models:
                    pick_model(name)
                pick_model(SEG)
                new_scene()
                click_picture()
                for title in PAGES:
                    go(title)
                go("Explain")
                samples.append((0, rss_mb(proc.pid)))
                print(f"after warm-up ({len(models)} models, {len(PAGES) + 1} pages, "
                      f"{time.monotonic() - t_start:.0f} s): RSS {samples[-1][1]:.0f} MB", flush=True)

                actions = [("click", click_picture, 5), ("scene", new_scene, 2), ("layer", switch_layer, 2),
                           ("model", None, 1), ("page", None, 1)]
                weights = [w for *_, w in actions]
                for i in range(1, args.actions + 1):
                    kind, fn, _ = rng.choices(actions, weights)[0]
                    counts[kind] = counts.get(kind, 0) + 1
                    if kind == "model":   # another model, then back to the segmenter on a scene
                        pick_model(rng.choice([m for m in models if m != SEG]))
                        pick_model(SEG)
                    elif kind == "page":
                        go(rng.choice(PAGES))
                        go("Explain")
                    else:
                        fn()
                    samples.append((i, rss_mb(proc.pid)))
                    if i % args.every == 0:
                        print(f"action {i:4d}: RSS {samples[-1][1]:.0f} MB ({time.monotonic() - t_start:.0f} s)",
                              flush=True)
                browser.close()
    except Exception:
        try:
            page.screenshot(path=str(folder / "failed.png"), full_page=True)
            print(f"failed: screenshot {folder / 'failed.png'}", flush=True)
        except Exception:  # noqa: BLE001 -- the screenshot is a diagnosis only
            pass
        raise
    xs, ys = [a for a, _ in samples], [r for _, r in samples]
    profile.offset = 0
    runs = [r for r in profile.since_mark() if "cache_mb" in r]
    if runs:   # RSS minus what the engine caches hold, per quarter of the runs
        rest = np.array([r["rss_mb"] - r["cache_mb"] for r in runs])
        parts = np.array_split(rest[len(rest) // 4:], 3)
        print("RSS minus the engine caches' bytes (script runs after the first quarter, in thirds): "
              + ", ".join(f"{p.min():.0f}-{p.max():.0f} MB" for p in parts if len(p)))
    load = os.getloadavg()
    print(f"\nactions: {counts}; load average {load[0]:.1f} at the end")
    print(f"RSS after warm-up {ys[0]:.0f} MB, max {max(ys):.0f} MB, end {ys[-1]:.0f} MB")
    print("\n| actions | min MB | median MB | max MB |\n|---|---:|---:|---:|")
    quarters = np.array_split(np.arange(1, len(xs)), 4)
    maxima = []
    for q in quarters:
        v = [ys[i] for i in q]
        maxima.append((float(np.mean([xs[i] for i in q])), max(v)))
        print(f"| {xs[q[0]]}-{xs[q[-1]]} | {min(v):.0f} | {np.median(v):.0f} | {max(v):.0f} |")
    mx, my = zip(*maxima)
    print(f"\nslope per 100 actions: all samples of the second half {slope_per_100(xs[1:], ys[1:]):+.0f} MB; "
          f"the quarters' maxima {np.polyfit(mx, my, 1)[0] * 100:+.0f} MB")
    print(f"server log and profile: {folder}")


if __name__ == "__main__":
    main()
