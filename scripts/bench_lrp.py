"""LRP cost against a bare forward + backward (same backend call, interleaved; median
ratio of REPEATS pairs, default 5): python scripts/bench_lrp.py MODEL [MODEL ...]

Prints the wall-clock ratio and, in brackets, the ratio of the process's CPU time
(time.process_time), which a busy machine disturbs less; with OMP_NUM_THREADS=1 the
torch models run on one core, so the two agree on a quiet machine.
Env: REPEATS (5), COMPOSITES (epsilon-plus-flat,epsilon-gamma-box)."""
import os, sys, time, numpy as np
from neuroscope import Explainer, load_model
from neuroscope.methods.propagation import make_composite
from neuroscope.backends.base import Objective
repeats = int(os.environ.get("REPEATS", "5"))
composites = os.environ.get("COMPOSITES", "epsilon-plus-flat,epsilon-gamma-box").split(",")
for name in sys.argv[1:]:
    ex = Explainer(load_model(name))
    H, W = ex.backend.input_size
    x = np.random.default_rng(0).normal(size=(1, H, W, 3)).astype(np.float32)
    z = ex.backend.forward(x)
    w = np.zeros(z.shape[1], np.float32); w[int(np.argmax(z[0] if z.ndim == 2 else z[0].mean((1, 2))))] = 1
    obj = Objective(w) if ex.task == "classification" else Objective(w, np.ones((H, W), np.float32))
    res = [f"{name} ({H}x{W})"]
    for comp in composites:
        class C_: params = {"composite": comp}; preprocess = staticmethod(ex.preprocess_rgb)
        c = make_composite(C_)
        ex.backend.input_gradients(x, obj); ex.backend.input_gradients(x, obj, rule=c)
        ratios, cpu, bases = [], [], []
        for _ in range(repeats):
            t, p = time.perf_counter(), time.process_time(); ex.backend.input_gradients(x, obj)
            b, bp = time.perf_counter() - t, time.process_time() - p
            t, p = time.perf_counter(), time.process_time(); ex.backend.input_gradients(x, obj, rule=c)
            l, lp = time.perf_counter() - t, time.process_time() - p
            ratios.append(l / b); cpu.append(lp / bp); bases.append(b)
        res.append(f"{comp}: {np.median(ratios):.2f}x [cpu {np.median(cpu):.2f}x] (fwd+bwd {np.median(bases)*1000:.0f} ms)")
    print(" | ".join(res), flush=True)
