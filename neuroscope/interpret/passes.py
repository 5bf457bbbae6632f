"""The two model passes the interpretation needs, for both frameworks.

- `layer_outputs`: a batched forward (no backward) returning the logits and the outputs
  of a few layers (the `interpret` pass over an image set).
- `backproject`: ONE forward to a layer and one backward per filter of that filter's own
  activation map to the pixels, with a ReLU rule ("deconvnet-fixed": deconvnet with the
  strided-artefact fix, METHODS.md §2/§7). The forward stops at the deepest requested
  layer (nothing above it runs).

Both use the backends' internals (torch forward hooks, the Keras flat graph) through the
few attributes named here, so the backends stay untouched.
"""
from __future__ import annotations

import weakref
from typing import Sequence

import numpy as np

from ..errors import BadParameter

_KERAS_MODELS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _check_layers(backend, layers: Sequence[str]) -> None:
    known = {l.name: l for l in backend.layers()}
    for name in layers:
        info = known.get(name)
        if info is None:
            raise BadParameter(f"unknown layer {name!r}; see `neuroscope layers`")
        if not info.spatial:
            raise BadParameter(f"layer {name!r} is not spatial (output {info.shape})")


# ----------------------------------------------------------------- forward
def layer_outputs(backend, x: np.ndarray, layers: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(logits [N, C] or [N, C, H, W] at input resolution, {layer: [N, K, h, w]}) of a
    batch x [N, H, W, 3], forward only."""
    _check_layers(backend, layers)
    if backend.framework == "torch":
        return _torch_outputs(backend, x, layers)
    if backend.framework == "keras":
        return _keras_outputs(backend, x, layers)
    raise BadParameter(f"interpretation is not available for framework {backend.framework!r}")


def _torch_outputs(backend, x, layers):
    import torch
    records: dict = {}
    xt = backend._to_tensor(x)
    with torch.inference_mode(), backend._hooks(set(layers), None, records):
        z = backend._logits(backend.module(xt), tuple(xt.shape[-2:]))
    return z.float().cpu().numpy(), {k: records[k].float().cpu().numpy() for k in layers}


def _keras_model(backend, key, build):
    models = _KERAS_MODELS.setdefault(backend, {})
    if key not in models:
        models[key] = build()
    return models[key]


def _keras_outputs(backend, x, layers):
    import keras
    import tensorflow as tf
    graph = backend._graph(None)
    idx = [graph.tensor_index[backend._layer_pos[n]] for n in layers]

    def build():
        flat = graph.model
        model = keras.Model(flat.inputs, [flat.outputs[0], *[flat.outputs[1 + i] for i in idx]])

        @tf.function(reduce_retracing=True, autograph=False)
        def fn(xb):
            out = keras.tree.flatten(model(xb, training=False))
            z = backend._logits(out[0])
            z = tf.transpose(z, [0, 3, 1, 2]) if z.shape.rank == 4 else z
            return [z, *[tf.transpose(a, [0, 3, 1, 2]) for a in out[1:]]]
        return fn

    fn = _keras_model(backend, ("outputs", tuple(layers)), build)
    with tf.device(backend.device):
        out = fn(backend._batch(x))
    return out[0].numpy(), {n: out[1 + i].numpy() for i, n in enumerate(layers)}


def _keras_activations(backend, x, layers):
    """{layer: [N, K, h, w]} from a sub-model that ends at the layers (no head, no logits)."""
    import keras
    import tensorflow as tf
    graph = backend._graph(None)
    idx = [graph.tensor_index[backend._layer_pos[n]] for n in layers]

    def build():
        flat = graph.model
        model = keras.Model(flat.inputs, [flat.outputs[1 + i] for i in idx])

        @tf.function(reduce_retracing=True, autograph=False)
        def fn(xb):
            return [tf.transpose(a, [0, 3, 1, 2]) for a in keras.tree.flatten(model(xb, training=False))]
        return fn

    fn = _keras_model(backend, ("activations", tuple(layers)), build)
    with tf.device(backend.device):
        out = fn(backend._batch(x))
    return {n: out[i].numpy() for i, n in enumerate(layers)}


# ----------------------------------------------------------------- backward
def backproject(backend, x: np.ndarray, picks, rule: str = "deconvnet-fixed",
                layers: Sequence[str] = (), decide=None) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """ONE forward of x [1, H, W, 3] recording `layers`; `picks(activations)` (called with
    {layer: [K, h, w]}) returns [(layer, channel, weight [h, w] or None)]; then one backward
    per pick of the top signal weight * A[channel] from that layer to the input, with
    `rule` for every ReLU (and strided convolution). Returns (activations, [grad [H, W, 3]]).
    `decide` (torch only): the forward runs to the logits and `decide(logits [C] or
    [C, H, W])` is called with them before `picks` (the caller's prediction from this pass)."""
    _check_layers(backend, layers)
    if rule not in getattr(backend, "rules", ()):
        raise BadParameter(f"the {backend.framework} backend has no rule {rule!r}")
    if backend.framework == "torch":
        return _torch_backproject(backend, x, picks, rule, layers, decide)
    if backend.framework == "keras":
        if decide is not None:
            raise BadParameter("backproject: `decide` is for the torch backend (keras: keras_backproject_top)")
        return _keras_backproject(backend, x, picks, rule, layers)
    raise BadParameter(f"back-projection is not available for framework {backend.framework!r}")


class _Stop(Exception):
    """Raised by a forward hook once every wanted layer is recorded (the head is not run)."""


def _torch_backproject(backend, x, picks, rule, layers, decide=None):
    import threading
    import torch
    records: dict = {}
    want = set(layers)
    owner = threading.get_ident()
    xt = backend._to_tensor(x, requires_grad=True)

    def stop(module, inputs, out):
        if threading.get_ident() == owner and want <= set(records):
            raise _Stop

    with torch.enable_grad(), backend._hooks(want, rule, records):
        if decide is not None:     # the whole forward: the logits give the caller's prediction
            out = backend._run(xt)
            with torch.no_grad():
                z = backend._logits(out, tuple(xt.shape[-2:]), 1)[0].detach().float().cpu().numpy()
            del out
            decide(z)
        else:
            handles = [backend._by_name[n.split("#")[0]].register_forward_hook(stop) for n in layers]
            try:
                backend.module(xt)
            except _Stop:
                pass
            finally:
                for h in handles:
                    h.remove()
    acts = {k: records[k].detach()[0].float().cpu().numpy() for k in layers}
    chosen = list(picks(acts))
    grads = []
    for i, (layer, channel, weight) in enumerate(chosen):
        a = records[layer][0, channel]
        top = a.detach() if weight is None else a.detach() * torch.as_tensor(weight, dtype=a.dtype)
        (g,) = torch.autograd.grad((a * top).sum(), [xt], retain_graph=i < len(chosen) - 1)
        grads.append(g[0].permute(1, 2, 0).float().cpu().numpy())
    return acts, grads


def _keras_backproject(backend, x, picks, rule, layers):
    """A traced forward for the activations, the picks, then ONE traced call per pick count:
    a forward to the layers and one backward per pick from a persistent tape (the top
    signal of pick i is dense per layer: its channel's activation x weight, zeros elsewhere)."""
    import keras
    import tensorflow as tf
    layers = list(layers)
    acts = {n: a[0] for n, a in _keras_activations(backend, x, layers).items()}
    chosen = list(picks(acts))
    if not chosen:
        return acts, []
    graph = backend._graph(rule)
    idx = [graph.tensor_index[backend._layer_pos[n]] for n in layers]
    n = len(chosen)

    def build():
        model = keras.Model(graph.model.inputs, [graph.model.outputs[1 + i] for i in idx])
        H, W = backend.input_size
        specs = [tf.TensorSpec([1, H, W, backend._channels], tf.float32)]
        specs += [tf.TensorSpec([n, *acts[l].shape[1:], acts[l].shape[0]], tf.float32) for l in layers]

        @tf.function(input_signature=specs, autograph=False)
        def fn(xb, *tops):
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(xb)
                a = keras.tree.flatten(model(xb, training=False))
                ys = [tf.add_n([tf.reduce_sum(o[0] * t[i]) for o, t in zip(a, tops)]) for i in range(n)]
            return tf.stack([tape.gradient(y, xb)[0] for y in ys])
        return fn

    fn = _keras_model(backend, ("backproject", rule, tuple(layers), n), build)
    tops = {l: np.zeros((n, *acts[l].shape[1:], acts[l].shape[0]), np.float32) for l in layers}
    for i, (layer, channel, weight) in enumerate(chosen):
        a = acts[layer][channel]
        tops[layer][i, :, :, channel] = a if weight is None else a * weight
    with tf.device(backend.device):
        grads = fn(backend._batch(x, single=True), *[tf.constant(tops[l]) for l in layers]).numpy()
    return acts, list(grads)


def keras_backproject_top(backend, x: np.ndarray, layers: Sequence[str], w: np.ndarray | None,
                          masks: dict[str, np.ndarray] | None, n: int, rule: str = "deconvnet-fixed",
                          decide=None):
    """relevant-filters in ONE traced Keras call: the forward to `layers`, the evidence
    r = x * w / sum w of every filter (x: energies sum_ij m A^2 per layer, L1-normalised
    times the channel count, as `interpret.core.normalise_features`), its top n, and one
    backward per chosen filter of sum A_f * stopgrad(m A_f) with `rule` from a persistent
    tape. `masks` {layer: [h, w]} are the region weights (ones for a whole image).
    With `decide` (w and masks None): the forward runs to the logits and, inside the same
    traced call, `decide(logits [C] or [C, H, W])` returns (w, masks) (the caller's
    prediction and target from this pass; its exception is re-raised as itself).
    Returns (r [F], top filter indices [n], input gradients [n, H, W, 3])."""
    import keras
    import tensorflow as tf
    from ..backends.keras_backend import _channels_first
    _check_layers(backend, layers)
    if rule not in getattr(backend, "rules", ()):
        raise BadParameter(f"the keras backend has no rule {rule!r}")
    layers = list(layers)
    graph = backend._graph(rule)
    idx = [graph.tensor_index[backend._layer_pos[l]] for l in layers]
    shapes = {l.name: l.shape for l in backend.layers()}
    ks = [int(shapes[l][0]) for l in layers]
    F = sum(ks)
    n = max(1, min(int(n), F))

    deferred = decide is not None

    def build():
        heads = [graph.model.outputs[0]] if deferred else []
        model = keras.Model(graph.model.inputs, heads + [graph.model.outputs[1 + i] for i in idx])
        H, W = backend.input_size
        specs = [tf.TensorSpec([1, H, W, backend._channels], tf.float32)]
        if deferred:
            specs.append(tf.TensorSpec([], tf.int64))
        else:
            specs.append(tf.TensorSpec([F], tf.float32))
            specs += [tf.TensorSpec(list(shapes[l][1:]), tf.float32) for l in layers]

        def decided(cid, z):
            def call(c, logits):
                wv, ms = backend._deciders[int(c.numpy())](logits.numpy()[0])
                return [np.asarray(wv, np.float32), *[np.asarray(ms[l], np.float32) for l in layers]]
            out = tf.py_function(call, [cid, z], [tf.float32] * (1 + len(layers)))
            return (tf.ensure_shape(tf.stop_gradient(out[0]), [F]),
                    [tf.ensure_shape(tf.stop_gradient(m), list(shapes[l][1:])) for m, l in zip(out[1:], layers)])

        @tf.function(input_signature=specs, autograph=False)
        def fn(xb, wv, *ms):
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(xb)
                outs = keras.tree.flatten(model(xb, training=False))
                if deferred:
                    z = _channels_first(backend._logits(outs[0]))
                    wv, ms = decided(wv, tf.stop_gradient(z))
                    outs = outs[1:]
                acts = [o[0] for o in outs]    # [h, w, K]
                feats = []
                for a, m, k in zip(acts, ms, ks):
                    e = tf.reduce_sum(tf.square(a) * m[:, :, None], axis=[0, 1])
                    s = tf.reduce_sum(e)
                    feats.append(tf.where(s > 0, e / tf.where(s > 0, s, 1.0) * float(k), tf.zeros_like(e)))
                r = tf.concat(feats, 0) * wv / tf.reduce_sum(wv)
                top = tf.math.top_k(r, k=n, sorted=True).indices
                pick = tf.split(tf.one_hot(top, F), ks, axis=1)                          # per layer [n, K]
                ys = [tf.add_n([tf.reduce_sum(a * tf.stop_gradient(a * m[:, :, None] * p[i]))
                                for a, m, p in zip(acts, ms, pick)]) for i in range(n)]
            return r, top, tf.stack([tape.gradient(y, xb)[0] for y in ys])
        return fn

    fn = _keras_model(backend, ("backproject-top", rule, tuple(layers), n, deferred), build)
    if not deferred:
        ms = [tf.constant(np.asarray(masks[l], np.float32)) for l in layers]
        with tf.device(backend.device):
            r, top, grads = fn(backend._batch(x, single=True), tf.constant(np.asarray(w, np.float32)), *ms)
        return r.numpy(), top.numpy(), grads.numpy()
    with backend.decider(decide) as cid, tf.device(backend.device):
        r, top, grads = fn(backend._batch(x, single=True), tf.constant(cid, tf.int64))
    return r.numpy(), top.numpy(), grads.numpy()


# ----------------------------------------------------------------- relevance
def layer_relevances(backend, x: np.ndarray, decide, layers: Sequence[str], rule) -> list[dict[str, np.ndarray] | None]:
    """LRP relevance ([K, h, w] per layer of `layers`) of x [1, H, W, 3] for several
    objectives of the same image, equal to `backend.capture(x, objective, layers,
    input_grad=True, rule=rule).gradients` of each. `decide(logits [C] or [C, H, W])`, called
    with the logits of this pass (the model's own: the rules change only the backward),
    returns the objectives (None: skip that one).

    Per objective one forward with `rule` and one backward that stops at the layers
    (torch: `autograd.grad` to the layer tensors runs only the graph between the logits
    and them; the forward below them is tracked as in a full capture, so residual branches
    below are not constants. Keras: a capture with `input_grad=False`). The first pass's
    logits decide the objectives: no separate prediction forward."""
    _check_layers(backend, layers)
    layers = list(layers)
    if backend.framework == "torch":
        from ..backends.torch_model import guarded
        return guarded("relevance", backend._names, _torch_relevances, backend, x, decide, layers, rule)
    if backend.framework != "keras":
        raise BadParameter(f"relevance is not available for framework {backend.framework!r}")
    from ..backends.base import Objective
    decided: list = []

    def first(logits):
        decided.extend(decide(logits))
        return next((o for o in decided if o is not None), None) or Objective(
            np.zeros(len(logits), np.float32))    # nothing to explain here: a zero objective

    out: list = []
    cap = backend.capture(x, first, layers, input_grad=False, rule=rule, gradients=True)
    lead = next((k for k, o in enumerate(decided) if o is not None), None)   # the capture that decided
    for k, o in enumerate(decided):
        if o is None:
            out.append(None)
            continue
        if k != lead:
            cap = backend.capture(x, o, layers, input_grad=False, rule=rule, gradients=True)
        out.append({l: np.asarray(cap.gradients[l], np.float32) for l in layers})
    return out


def _torch_relevances(backend, x, decide, layers, rule):
    """Per objective one forward with `rule` and one backward that stops at the layers
    (the rules' backwards free their state: one backward per forward). The first
    forward's logits decide the objectives."""
    import torch
    from ..backends.torch_model import CallerError
    xt = backend._to_tensor(x, requires_grad=True)

    def forward():
        records: dict = {}
        with torch.enable_grad(), backend._hooks(set(layers), rule, records):
            z = backend._logits(backend._run(xt), tuple(xt.shape[-2:]), 1)
        missing = set(layers) - set(records)
        if missing:
            raise BadParameter(f"layer(s) not found or not a tensor output: {', '.join(sorted(missing))}")
        return z, records

    z, records = forward()
    try:
        objectives = list(decide(z[0].detach().float().cpu().numpy()))
    except Exception as exc:  # noqa: BLE001 -- the caller's, not the model's: raised as is
        raise CallerError(exc) from exc
    out: list = []
    unused = True          # the first forward's graph serves the first objective
    for objective in objectives:
        if objective is None:
            out.append(None)
            continue
        if not unused:
            z, records = forward()
        unused = False
        with torch.enable_grad():
            y = backend._objective(z, objective, "logit").sum()
        grads = torch.autograd.grad(y, [records[l] for l in layers], allow_unused=True)
        out.append({l: (np.zeros(tuple(records[l].shape[1:]), np.float32) if g is None
                        else g[0].float().cpu().numpy()) for l, g in zip(layers, grads)})
    return out
