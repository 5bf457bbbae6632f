"""Benchmark: every registered method on the bundled models, Captum on the same work, and the
evidence-analysis seed claim -- in ONE run.

For each bundled model (torch and Keras): the bare forward and forward+backward (one
forward and the gradient of the target scalar to the input), then every method that fits
the model, end to end through `Explainer.explain` on the uint8 image (preprocessing to
the map at original size) with `Explainer.clear_caches()` before each run; median of
`--repeats` (methods marked slow: `--slow-repeats`). Printed: ms and ms / bare fwd+bwd.

Captum (torch models; a benchmark dependency only): for the methods Captum has, ours and
Captum's on the same model, preprocessed tensor, target and settings -- saliency,
gradient x input, integrated gradients (32 steps, right Riemann sum, black baseline,
internal batch = our chunk), SmoothGrad (25 noisy saliency maps, batch = our chunk),
guided backprop, deconvnet (no strided fix), Grad-CAM (+ upsampling), guided Grad-CAM and
occlusion (16x16 window, stride 8, black baseline, `perturbations_per_eval` = our chunk).
Segmentation targets reach Captum as a scalar-output model (the region-summed class
logit). Runs are interleaved (ours, Captum, ours, ...) and the printed ratio is the median
of the per-pair ratios ours / Captum. Both are timed end to end on the same work: from
the uint8 image through the shared preprocessing, the attribution, the channel
reduction, to the map resized to the original image. Captum is handed the target; ours
knows it too (prediction and resolved target stay cached: `clear_caches(keep_predictions=True)`), and
recomputes everything else (image hash, preprocessing, passes, map, resize).

Seed claim (METHODS.md §4): efficient evidence analysis (`evidence`, both variants) vs
prediction difference analysis (`pda`, conditional sampler) with the same budget --
window 16, stride 8, n = 8 -- time ratio and deletion AUC (50 steps, black) of each;
evidence at the layer where one window is one unit (`evidence.budget_layer`) and at the
default (coarsest) layer.
The fitted patch Gaussian of pda and the bank activations of evidence are offline
statistics: computed before timing and reported separately.

    python scripts/bench.py                                   # everything (long)
    python scripts/bench.py --models mobilenet_v2-imagenet --quick
    python scripts/bench.py --markdown docs/benchmark.md --json bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from neuroscope import Explainer, load_model  # noqa: E402
from neuroscope.images import load_image, resize_map, resize_rgb  # noqa: E402
from neuroscope.methods.registry import list_methods, misfit  # noqa: E402
from neuroscope.zoo import bundled_specs  # noqa: E402

PHOTO = ROOT / "assets" / "images" / "coffee.jpg"
SCENE_SEED = 1_000_000            # the first scene of the drivescene-eval set
SEED_BUDGET = {"window": 16, "stride": 8, "samples": 8}
CAPTUM_METHODS = ("saliency", "gradient-x-input", "integrated-gradients", "smoothgrad", "guided-backprop",
                  "deconvnet", "grad-cam", "guided-grad-cam", "occlusion")


def ms(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: tracing, allocator, lazily built graphs
    return statistics.median(ms(fn) for _ in range(max(1, repeats)))


def bench_image(ex: Explainer) -> np.ndarray:
    if ex.task == "classification":
        return load_image(PHOTO)
    from neuroscope.synth import generate_scene
    return generate_scene(SCENE_SEED, (256, 512)).image


# ------------------------------------------------------------------ our methods
def time_methods(ex: Explainer, image: np.ndarray, repeats: int, slow_repeats: int, skip: set[str],
                 log) -> dict[str, dict]:
    prep = ex.prepare(image)
    rt = ex.resolve(prep)
    out = {}
    fwd = median_ms(lambda: ex.backend.forward(prep.x), repeats)
    fb = median_ms(lambda: ex.backend.input_gradients(prep.x, rt.objective), repeats)
    out["forward"] = {"ms": fwd}
    out["forward+backward"] = {"ms": fb}
    log(f"  forward {fwd:.1f} ms, bare forward+backward {fb:.1f} ms")
    for info in list_methods():
        if misfit(info, ex.task, ex.backend.framework) is not None or info.name in skip:
            continue

        def run(name=info.name):
            ex.clear_caches()
            ex.explain(image, name)
        try:
            t = median_ms(run, slow_repeats if info.slow else repeats)
        except Exception as exc:  # report and go on: one failing method must not end the run
            out[info.name] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  {info.name}: FAILED {exc}")
            continue
        out[info.name] = {"ms": t, "x_fwd_bwd": t / fb}
        log(f"  {info.name}: {t:.1f} ms ({t / fb:.1f}x fwd+bwd)")
    return out


# ------------------------------------------------------------------ Captum
class CaptumCase:
    """The same model, preprocessed tensor and target as seen by Captum."""

    def __init__(self, ex: Explainer, image: np.ndarray):
        import torch
        from torch import nn
        self.torch = torch
        self.ex, self.image = ex, image
        self.prep = ex.prepare(image)
        self.rt = ex.resolve(self.prep)
        self.module = ex.backend.module
        self.x = torch.from_numpy(self.prep.x).permute(0, 3, 1, 2).contiguous()
        if ex.task == "classification":
            self.forward, self.target = self.module, int(self.rt.class_id)
        else:
            obj = self.rt.objective
            w = torch.from_numpy(np.asarray(obj.class_weights, np.float32))
            mask = torch.from_numpy(np.asarray(obj.mask, np.float32))
            idx = [int(i) for i in np.nonzero(obj.class_weights)[0]]

            def forward(inp):
                z = self.module(inp)
                if tuple(z.shape[-2:]) != tuple(inp.shape[-2:]):
                    z = nn.functional.interpolate(z, size=inp.shape[-2:], mode="bilinear", align_corners=False)
                return sum(w[c] * (z[:, c] * mask).sum(dim=(1, 2)) for c in idx)
            self.forward, self.target = forward, None
        # Captum's ReLU-rule methods hook the modules of a module: segmentation gets a wrapper
        # that owns the model and returns the region-summed target.
        self.hooked = self.module if self.target is not None else _Scalar(self.module, self.forward)
        h, w_ = self.x.shape[-2:]
        base = ex.preprocess_rgb(np.zeros((1, h, w_, 3), np.float32))
        self.black = torch.from_numpy(base).permute(0, 3, 1, 2).contiguous()
        self.layer_name = ex.default_layer()
        self.layer = dict(self.module.named_modules())[self.layer_name]
        from types import SimpleNamespace
        from neuroscope.methods.chunks import chunk_size
        self.chunk = chunk_size(SimpleNamespace(model_size=self.prep.rgb.shape[:2]))   # our images per call

    def tensor(self):
        """The shared preprocessing (CONTRACT.md §1) of the uint8 image, as an NCHW tensor."""
        rgb = resize_rgb(self.image, self.ex.spec.input_size)
        return self.torch.from_numpy(self.ex.preprocess_rgb(rgb)[None]).permute(0, 3, 1, 2).contiguous()

    def reduce(self, attr, how: str) -> np.ndarray:
        a = attr.detach()[0].permute(1, 2, 0).numpy()
        if how == "max-abs":
            idx = np.argmax(np.abs(a), axis=-1)[..., None]
            return np.take_along_axis(a, idx, axis=-1)[..., 0]
        return a.sum(axis=-1)

    def pair(self, method: str):
        """(our callable, Captum's callable) doing the same work."""
        import captum.attr as ca
        ex, img, x, t = self.ex, self.image, self.x, self.target

        ex.predict(img)   # Captum is handed the target: ours knows it too (prediction cached)

        def ours(name, params=None, layer=None):
            def run():
                ex.clear_caches(keep_predictions=True)
                ex.explain(img, name, layer=layer, params=params)
            return run
        std = float(np.mean(ex.spec.std))
        lo, hi = ex.spec.value_range

        def captum(fn, how):
            """Captum end to end like ours: the shared preprocessing of the uint8 image, `attribute`,
            the channel reduction, the resize to the original image."""
            def run():
                a = fn(self.tensor())
                m = a.detach()[0, 0].numpy() if how == "channel0" else self.reduce(a, how)
                return resize_map(m, img.shape[:2])
            return run
        table = {
            "saliency": (ours("saliency"), captum(lambda x: ca.Saliency(self.forward).attribute(
                x, target=t, abs=False), "max-abs")),
            "gradient-x-input": (ours("gradient-x-input"), captum(lambda x: ca.InputXGradient(
                self.forward).attribute(x, target=t), "sum")),
            "integrated-gradients": (ours("integrated-gradients", {"steps": 32}), captum(
                lambda x: ca.IntegratedGradients(self.forward).attribute(
                    x, baselines=self.black, target=t, n_steps=32, method="riemann_right",
                    internal_batch_size=self.chunk), "sum")),
            "smoothgrad": (ours("saliency", {"smooth": 25}), captum(
                lambda x: ca.NoiseTunnel(ca.Saliency(self.forward)).attribute(
                    x, target=t, abs=False, nt_type="smoothgrad", nt_samples=25,
                    nt_samples_batch_size=self.chunk, stdevs=0.15 * (hi - lo) / std), "max-abs")),
            "guided-backprop": (ours("guided-backprop"), captum(
                lambda x: ca.GuidedBackprop(self.hooked).attribute(x, target=t), "max-abs")),
            "deconvnet": (ours("deconvnet", {"fix": False}), captum(
                lambda x: ca.Deconvolution(self.hooked).attribute(x, target=t), "max-abs")),
            "grad-cam": (ours("grad-cam", layer=self.layer_name), captum(
                lambda x: ca.LayerAttribution.interpolate(
                    ca.LayerGradCam(self.forward, self.layer).attribute(x, target=t, relu_attributions=True),
                    tuple(x.shape[-2:]), interpolate_mode="bilinear"), "channel0")),
            "guided-grad-cam": (ours("guided-grad-cam", layer=self.layer_name), captum(
                lambda x: ca.GuidedGradCam(self.hooked, self.layer).attribute(
                    x, target=t, interpolate_mode="bilinear"), "max-abs")),
            "occlusion": (ours("occlusion", {"window": 16, "stride": 8}), captum(
                lambda x: ca.Occlusion(self.forward).attribute(
                    x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=self.black, target=t,
                    perturbations_per_eval=self.chunk), "channel0")),
        }
        return table[method]


def _Scalar(module, fn):
    """A module owning `module` whose output is `fn(input)`: Captum's hooks then see its ReLUs."""
    import torch

    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, inp):
            return fn(inp)
    return Scalar()


def time_captum(ex: Explainer, image: np.ndarray, repeats: int, slow_repeats: int, log) -> dict[str, dict]:
    case = CaptumCase(ex, image)
    out = {}
    for method in CAPTUM_METHODS:
        ours, theirs = case.pair(method)
        reps = slow_repeats if method in ("integrated-gradients", "smoothgrad", "occlusion") else repeats
        try:
            ours(), theirs()  # warm-up both
            a, b = [], []
            for _ in range(max(1, reps)):
                a.append(ms(ours))
                b.append(ms(theirs))
        except Exception as exc:
            out[method] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"  captum {method}: FAILED {exc}")
            continue
        ratio = statistics.median(x / y for x, y in zip(a, b))
        out[method] = {"ours_ms": statistics.median(a), "captum_ms": statistics.median(b), "ratio": ratio,
                       "repeats": len(a)}
        log(f"  {method}: ours {statistics.median(a):.1f} ms, Captum {statistics.median(b):.1f} ms, "
            f"median ratio {ratio:.3f}")
    return out


# ------------------------------------------------------------------ seed claim
def seed_claim(ex: Explainer, image: np.ndarray, log) -> dict:
    """pda vs evidence analysis, same window / stride / n: at the layer where a window is one
    unit (`budget_layer`) and at the default layer."""
    from neuroscope import metrics
    from neuroscope.methods import evidence as ev
    prep = ex.prepare(image)
    rt = ex.resolve(prep)
    t0 = time.perf_counter()
    ev.PatchGaussian.load(SEED_BUDGET["window"])
    gauss_ms = (time.perf_counter() - t0) * 1000
    layers = list(dict.fromkeys([ev.budget_layer(ex.layers(), SEED_BUDGET["window"]), ex.default_layer()]))
    bank_ms = {}
    for layer in layers:
        t0 = time.perf_counter()
        ex.explain(image, "evidence", layer=layer, params=SEED_BUDGET)       # fills the bank of this layer
        bank_ms[layer] = (time.perf_counter() - t0) * 1000
    out = {"budget": SEED_BUDGET, "layers": layers, "offline_ms": {"pda_gaussian": gauss_ms, "evidence_bank": bank_ms},
           "runs": {}}
    runs = [("pda:conditional", "pda", None, {**SEED_BUDGET, "sampler": "conditional"})]
    runs += [(f"evidence:{v} @ {layer}", "evidence", layer, {**SEED_BUDGET, "variant": v})
             for layer in layers for v in ("first-order", "sampled")]
    for key, name, layer, params in runs:
        ex.clear_caches()
        t0 = time.perf_counter()
        try:
            res = ex.explain(image, name, layer=layer, params=params)
        except Exception as exc:
            out["runs"][key] = {"error": str(exc)}
            continue
        t = (time.perf_counter() - t0) * 1000
        auc = metrics.deletion_curve(ex, prep, res, rt).auc
        out["runs"][key] = {"ms": t, "deletion_auc": auc}
        log(f"  {key}: {t / 1000:.1f} s, deletion AUC {auc:.4f}")
    pda = out["runs"].get("pda:conditional", {})
    for key, v in out["runs"].items():
        if key.startswith("evidence") and "ms" in v and "ms" in pda:
            v["speedup_vs_pda"] = pda["ms"] / v["ms"]
            v["auc_no_worse"] = bool(v["deletion_auc"] <= pda["deletion_auc"])
    return out


# ------------------------------------------------------------------ output
def markdown(result: dict) -> str:
    lines = [f"# Benchmark", "", f"`python scripts/bench.py` on {result['machine']}; torch threads "
             f"{result['torch_threads']}; medians of {result['repeats']} runs ({result['slow_repeats']} for slow "
             "methods), caches cleared before each run; ratios are to the bare forward+backward of the same model.",
             ""]
    for model, r in result["models"].items():
        fb = r["methods"]["forward+backward"]["ms"]
        lines += [f"## {model} ({r['framework']}, {r['input']}, image: {r['image']})", "",
                  "| method | ms | × fwd+bwd |", "|---|---:|---:|"]
        for name, v in r["methods"].items():
            cell = f"{v['ms']:.1f} | {v['ms'] / fb:.2f}" if "ms" in v else f"failed: {v['error'][:80]} |"
            lines.append(f"| {name} | {cell} |")
        if r.get("captum"):
            lines += ["", "Against Captum 0.9 (same model, tensor, target and settings; interleaved runs):", "",
                      "| method | ours ms | Captum ms | median ratio ours / Captum | pairs |", "|---|---:|---:|---:|---:|"]
            for name, v in r["captum"].items():
                if "ratio" in v:
                    flag = "" if v["ratio"] <= 1.05 else " (slower)"
                    lines.append(f"| {name} | {v['ours_ms']:.1f} | {v['captum_ms']:.1f} | {v['ratio']:.3f}{flag} "
                                 f"| {v.get('repeats', '')} |")
                else:
                    lines.append(f"| {name} | failed: {v['error'][:80]} | | | |")
        if r.get("seed_claim"):
            s = r["seed_claim"]
            lines += ["", f"Seed claim (window {s['budget']['window']}, stride {s['budget']['stride']}, "
                      f"n = {s['budget']['samples']}; evidence at the layer where a window is one unit, "
                      f"`{s['layers'][0]}`, and at the default layer `{s['layers'][-1]}`):", "",
                      "| method | time (s) | deletion AUC ↓ | speed-up vs pda | AUC no worse than pda |",
                      "|---|---:|---:|---:|---|"]
            for key, v in s["runs"].items():
                if "ms" in v:
                    lines.append(f"| {key} | {v['ms'] / 1000:.1f} | {v['deletion_auc']:.4f} | "
                                 f"{v.get('speedup_vs_pda', 1.0):.1f}× | {v.get('auc_no_worse', '')} |")
                else:
                    lines.append(f"| {key} | failed: {v['error'][:80]} | | | |")
            banks = ", ".join(f"{k} {v / 1000:.1f} s" for k, v in s["offline_ms"]["evidence_bank"].items())
            lines.append(f"\nOffline statistics (once per window size / per model and layer): patch Gaussian "
                         f"{s['offline_ms']['pda_gaussian'] / 1000:.1f} s; evidence bank (first call, incl. one "
                         f"explanation) {banks}.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma list (default: every bundled model)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--slow-repeats", type=int, default=1, help="repeats of slow methods (perturbation, evidence)")
    ap.add_argument("--captum-slow-repeats", type=int, default=3,
                    help="interleaved pairs for the slow Captum comparisons (IG, SmoothGrad, occlusion)")
    ap.add_argument("--threads", type=int, help="torch / TF intra-op threads")
    ap.add_argument("--skip", default="", help="methods to leave out (comma list)")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--seed-models", default="mobilenet_v2-imagenet",
                    help="models for the evidence-vs-pda seed claim (comma list; 'none' to skip)")
    ap.add_argument("--quick", action="store_true", help="2 repeats, slow methods skipped except the Captum set")
    ap.add_argument("--json", help="write the results as JSON")
    ap.add_argument("--markdown", help="write the tables as Markdown")
    args = ap.parse_args()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    names = args.models.split(",") if args.models else list(bundled_specs())
    skip = {s for s in args.skip.split(",") if s}
    repeats, slow = (2, 1) if args.quick else (args.repeats, args.slow_repeats)
    if args.quick:
        skip |= {m.name for m in list_methods() if m.slow and m.name not in ("integrated-gradients", "occlusion")}
    seed_models = set() if args.seed_models == "none" else set(args.seed_models.split(","))
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
              "repeats": repeats, "slow_repeats": slow, "models": {}}
    for name in names:
        log(f"{name}")
        try:
            ex = Explainer(load_model(name))
        except Exception as exc:
            log(f"  cannot load: {exc}")
            continue
        image = bench_image(ex)
        h, w = ex.spec.input_size
        r = {"framework": ex.backend.framework, "task": ex.task, "input": f"{h}x{w}",
             "image": PHOTO.name if ex.task == "classification" else f"generated scene {SCENE_SEED}",
             "methods": time_methods(ex, image, repeats, slow, skip, log)}
        if ex.backend.framework == "torch" and not args.no_captum:
            try:
                import captum  # noqa: F401
                r["captum"] = time_captum(ex, image, repeats, max(slow, args.captum_slow_repeats), log)
            except ImportError:
                log("  (captum not installed: pip install -r requirements-dev.txt)")
        if name in seed_models:
            r["seed_claim"] = seed_claim(ex, image, log)
        result["models"][name] = r
        if args.json:  # after every model: a long run keeps what it has
            Path(args.json).write_text(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
