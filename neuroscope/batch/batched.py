"""Same-size images through the model together: ONE forward + backward for a group.

`prefill` runs a group of prepared images through the model as one batch, decides each
image's target from its own logits in that very pass (its class, region, contrast), and
differentiates the sum of the per-image objectives: the images are independent in an
eval-mode network, so each image's gradients are its own. The per-image activations and
gradients go into the Explainer's capture cache, keyed exactly as the engine's own
one-pass capture, and `explain` then computes each map from the cache with the method's
own code: no second implementation of any method, and no model pass per image.

Methods served (`batchable`): the one-pass CAM and activation methods (the layer's
activations, gradient means or gradients) and the clean-input gradient methods
(saliency, gradient x input) without SmoothGrad. Others run one image at a time (the
run records which methods were batched).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import Cancelled, NeuroscopeError

INPUT_GRADIENT_METHODS = ("saliency", "gradient-x-input")

#: On a CPU a batched pass takes at most this many input pixels (8 images of 128x256, 2 of
#: 256x512). Measured on drivescene-seg, one torch thread, CPU time per image of a forward
#: + backward (scripts/bench_batch.py --compute): 128x256 batch 1 35.4 ms, 4: 30.7, 8:
#: 30.2, 16: 32.3; 256x512 batch 1 124 ms, 2: 124, 4: 122, 8: 138 (the activations of a
#: large batch no longer fit the caches). GPUs take the whole group.
CPU_BATCH_PIXELS = 8 * 128 * 256


def batchable(info, params: dict | None) -> tuple[bool, bool, bool] | None:
    """(layer activations, input gradient, full layer gradients) a method reads from the
    one-pass capture, or None when it needs other passes."""
    if info.family in ("cam", "activation") and not info.batched_gradient:
        return True, False, bool(info.layer_gradients)
    if info.name in INPUT_GRADIENT_METHODS and not (params or {}).get("smooth"):
        return False, True, False
    return None


def prefill(ex, preps: Sequence, targets: Sequence, methods: Sequence[str], *, layer: str | None = None,
            params: dict | None = None) -> list[str]:
    """One batched pass for `preps` (same model input shape) serving every batchable
    method of `methods`; returns the methods served. Images whose target fails are left
    out (their `explain` raises the same error on its own)."""
    from ..methods.registry import check_params, get_method
    if len(preps) < 2 or getattr(ex.backend, "max_batch", None) == 1:   # a model running one image per pass
        return []
    layers, input_grad, gradients, served = set(), False, False, []
    for m in methods:
        info = get_method(m)[0]
        try:
            need = batchable(info, check_params(info, (params or {}).get(m)))
        except NeuroscopeError:
            continue
        if need is None:
            continue
        if need[0]:
            layers.add(ex.check_layer(layer, info))
        input_grad |= need[1]
        gradients |= need[2]
        served.append(m)
    if not served:
        return []
    layers = sorted(layers)
    fw = ex.backend.framework
    passes = {"torch": _torch_pass, "keras": _keras_pass}
    if fw not in passes:
        return []
    step = len(preps)
    if "cpu" in str(getattr(ex.backend, "device", "cpu")).lower():
        step = CPU_BATCH_PIXELS // max(1, int(np.prod(preps[0].x.shape[1:3])))
        if step < 2:
            return []        # one image per pass: the images' own explain calls
    from ..engine import _capture_bytes
    for i in range(0, len(preps), step):
        part = preps[i:i + step]
        try:
            caps = passes[fw](ex, part, targets[i:i + step], np.concatenate([p.x for p in part]), layers,
                              input_grad, gradients)
        except (Cancelled, NeuroscopeError):
            raise
        except Exception:  # noqa: BLE001 -- e.g. a model that takes one image per pass: each
            return []      # image's own explain runs (and reports a real error itself)
        for prep, (rt, cap) in zip(part, caps):   # kept as each pass ends
            if cap is not None:
                ex._captures.put((prep.hash, rt.key(), None), cap, _capture_bytes(cap))
    ex._count("batched_capture")
    return served


def _decide(ex, prep, target, logits: np.ndarray, labels: np.ndarray | None = None):
    """(resolved target, None) of one image from its logits (and a segmenter's argmax label
    map, when the pass took it) (`Explainer._decide`: prediction and target cached as the
    engine's own), or (None, exception)."""
    try:
        return ex._decide(prep, target, logits, labels), None
    except Cancelled:
        raise
    except NeuroscopeError as exc:
        return None, exc


def _torch_pass(ex, preps, targets, x, layers, input_grad, gradients):
    import torch
    from ..backends.base import Capture
    b = ex.backend
    if layers:
        b.layers()
    records: dict = {}
    xt = b._to_tensor(x, requires_grad=input_grad)
    with torch.enable_grad(), b._hooks(set(layers), None, records, grad_from_want=not input_grad):
        z = b._logits(b._run(xt), tuple(xt.shape[-2:]))   # _run: the logits under a softmax head
        logits = z.detach().float().cpu().numpy()
        labels = _torch_labels(z.detach(), ex.task) or [None] * len(preps)
        decided = [_decide(ex, p, t, logits[i], labels[i]) for i, (p, t) in enumerate(zip(preps, targets))]
        # unbind, not z[i:i + 1]: a slice's backward writes a zero tensor of the whole
        # batch's size per image (B^2 traffic), unbind's one stack for the batch
        zs = z.unbind(0)
        ys = [b._objective(zs[i][None], rt.objective, "logit") if rt is not None else None
              for i, (rt, _) in enumerate(decided)]
    live = [y for y in ys if y is not None]
    if not live:
        return [(None, None)] * len(preps)
    inputs = [records[k] for k in layers] + ([xt] if input_grad else [])
    inputs = [t for t in inputs if t.requires_grad]
    grads = dict(zip(map(id, inputs), torch.autograd.grad(torch.cat(live).sum(), inputs, allow_unused=True)))
    out = []
    for i, (rt, _) in enumerate(decided):
        if rt is None:
            out.append((None, None))
            continue
        cap = Capture(output=logits[i], score=float(ys[i].detach()))
        for k in layers:
            a = records[k].detach()[i].float()
            g = grads.get(id(records[k]))
            g = torch.zeros_like(a) if g is None else g[i].float()
            cap.activations[k] = a.cpu().numpy()
            if a.dim() == 3:
                cap.gradient_means[k] = g.mean(dim=(1, 2)).cpu().numpy()
            if gradients:
                cap.gradients[k] = g.cpu().numpy()
        if input_grad:
            g = grads.get(id(xt))
            cap.input_grad = (np.zeros(x.shape[1:], np.float32) if g is None
                              else g[i].permute(1, 2, 0).float().cpu().numpy())
        out.append((rt, cap))
    return out


def _torch_labels(z, task: str) -> list | None:
    """A segmenter's argmax label maps [h, w] for the batch's logits [B, C, h, w] in one
    threaded op (`torch.max`: the first maximum wins, as `engine._argmax_classes`): 8
    images of 128x256 x 19 classes in 8.7 ms with two threads, against 1.8 ms per image in
    numpy. None for a classifier."""
    import torch
    if task != "segmentation" or z.dim() != 4:
        return None
    labels = z.float().max(1).indices.to(torch.uint8 if z.shape[1] < 256 else torch.int32)
    return list(labels.cpu().numpy())


def _keras_pass(ex, preps, targets, x, layers, input_grad, gradients):
    import keras
    import tensorflow as tf
    from ..backends.base import Capture
    b = ex.backend
    graph = b._graph(None)
    index = {k: graph.tensor_index[b._layer_pos[k]] for k in layers}
    with tf.device(b.device):
        xt = tf.constant(np.asarray(x, np.float32))
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(xt)
            outputs = keras.tree.flatten(graph.model(xt, training=False))
            z = b._logits(outputs[0])
            zf = z.numpy()
            logits = np.moveaxis(zf, -1, 1) if zf.ndim == 4 else zf
            decided = [_decide(ex, p, t, logits[i]) for i, (p, t) in enumerate(zip(preps, targets))]
            zs = tf.unstack(z)       # not z[i:i + 1]: see _torch_pass
            ys = []
            for i, (rt, _) in enumerate(decided):
                if rt is None:
                    ys.append(None)
                    continue
                tensors = b._objective_tensors(rt.objective)
                ys.append(b._objective(zs[i][None], tensors[0], tuple(tensors[1:]), "logit"))
            live = [y for y in ys if y is not None]
            if not live:
                return [(None, None)] * len(preps)
            total = tf.reduce_sum(tf.concat(live, 0))
        acts = {k: outputs[1 + index[k]] for k in layers}
        sources = [acts[k] for k in layers] + ([xt] if input_grad else [])
        grads = tape.gradient(total, sources)
    by_layer = dict(zip(layers, grads[:len(layers)]))
    x_grad = grads[-1] if input_grad else None
    out = []
    for i, (rt, _) in enumerate(decided):
        if rt is None:
            out.append((None, None))
            continue
        cap = Capture(output=logits[i], score=float(ys[i].numpy()[0]))
        for k in layers:
            a = np.moveaxis(acts[k].numpy()[i], -1, 0)
            g = by_layer[k]
            g = np.zeros_like(a) if g is None else np.moveaxis(g.numpy()[i], -1, 0)
            cap.activations[k] = a
            cap.gradients[k] = g
            if a.ndim == 3:
                cap.gradient_means[k] = g.mean(axis=(1, 2))
        if input_grad:
            cap.input_grad = np.zeros(x.shape[1:], np.float32) if x_grad is None else x_grad.numpy()[i]
        out.append((rt, cap))
    return out


def explain_many(ex, preps: Sequence, method: str, targets: Sequence, *, layer: str | None = None,
                 params: dict | None = None) -> list:
    """An `Explanation` or the exception, per image, in order (after `prefill`, from the cache)."""
    out = []
    for prep, target in zip(preps, targets):
        try:
            out.append(ex.explain(prep, method, target=target, layer=layer, params=params))
        except Cancelled:
            raise
        except NeuroscopeError as exc:
            out.append(exc)
    return out
