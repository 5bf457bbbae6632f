"""LRP cost against a bare forward + backward (same backend call, interleaved; median
ratio of 5): python scripts/bench_lrp.py MODEL [MODEL ...]"""
import sys, time, numpy as np
from neuroscope import Explainer, load_model
from neuroscope.methods.propagation import make_composite
from neuroscope.backends.base import Objective
for name in sys.argv[1:]:
    ex = Explainer(load_model(name))
    H, W = ex.backend.input_size
    x = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(np.float32)
    z = ex.backend.forward(x)
    w = np.zeros(z.shape[1], np.float32); w[int(np.argmax(z[0] if z.ndim == 2 else z[0].mean((1, 2))))] = 1
    obj = Objective(w) if ex.task == "classification" else Objective(w, np.ones((H, W), np.float32))
    class C_: params = {"composite": "epsilon-plus-flat"}; preprocess = staticmethod(ex.preprocess_rgb)
    res = [f"{name} ({H}x{W})"]
    for comp in ("epsilon-plus-flat", "epsilon-gamma-box"):
        C_.params = {"composite": comp}
        c = make_composite(C_)
        ex.backend.input_gradients(x, obj); ex.backend.input_gradients(x, obj, rule=c)
        ratios, bases = [], []
        for _ in range(5):
            t = time.perf_counter(); ex.backend.input_gradients(x, obj); b = time.perf_counter() - t
            t = time.perf_counter(); ex.backend.input_gradients(x, obj, rule=c); l = time.perf_counter() - t
            ratios.append(l / b); bases.append(b)
        res.append(f"{comp}: {np.median(ratios):.2f}x (fwd+bwd {np.median(bases)*1000:.0f} ms)")
    print(" | ".join(res), flush=True)
