"""Ground truth (segmentation): per-class IoU, mean IoU, error map, and a confusion matrix."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import charts, state, truth, views
from dashboard.state import KEEP, Keys
from neuroscope.errors import NeuroscopeError
from neuroscope.images import resize_labels


def labelled_gallery() -> list[str]:
    """Bundled images that come with a label image."""
    return [n for n in state.gallery_names("segmentation") if state.gallery_truth(n) is not None]


def upload_truth(sel: state.Selection) -> None:
    up = st.file_uploader("Label image for this image (PNG, uint8 trainIds, 255 = ignore)", type=["png"],
                          key=Keys.scoped("truth_upload", sel.image_key))
    if up is None:
        return
    try:
        labels = truth.read_labels(up.getvalue())
        if labels.shape != sel.image.shape[:2]:
            raise NeuroscopeError(f"the label image is {labels.shape[1]}x{labels.shape[0]} but the image is "
                                  f"{sel.image.shape[1]}x{sel.image.shape[0]}; upload the labels of this image")
    except NeuroscopeError as exc:
        st.error(f"{exc}")
        return
    state.session().uploaded_truth[sel.image_key] = labels
    sel.truth = labels


def confusion_of(sel: state.Selection, image_key: str, predict, labels: np.ndarray) -> np.ndarray:
    """The confusion matrix of one image, memoised per session (model, image, labels): a rerun
    (another class's error map) and the data-set table reuse it instead of recounting."""
    n = len(sel.explainer.classes)
    return state.memo("confusion", (sel.model_key, image_key, n),
                      lambda: truth.confusion(predict().labels, labels, n), refs=(sel.explainer, labels), size=64)


def this_image(sel: state.Selection) -> None:
    ex, n = sel.explainer, len(sel.explainer.classes)
    pred = sel.prediction.labels
    try:
        matrix = confusion_of(sel, sel.image_key, lambda: sel.prediction, sel.truth)
    except NeuroscopeError as exc:
        st.error(f"{exc}")
        return
    ious = truth.iou(matrix)
    c1, c2, c3 = st.columns(3)
    c1.metric("Mean IoU (this image)", f"{np.nanmean(ious):.3f}" if np.isfinite(ious).any() else "—")
    c2.metric("Pixel accuracy", f"{np.trace(matrix) / max(1, matrix.sum()):.3f}")
    c3.metric("Classes present", int((matrix.sum(axis=1) > 0).sum()))
    state.session().shown["iou"] = ious
    left, right = st.columns(2)
    with left:
        st.markdown("**Per-class IoU**")
        st.altair_chart(charts.class_iou(ex.classes, ious, ex.palette), width="stretch")
    with right:
        present = [i for i in range(n) if matrix[i].sum() > 0 or matrix[:, i].sum() > 0]
        default = sel.resolved.class_id if sel.resolved is not None and sel.resolved.class_id in present else present[0]
        cid = st.selectbox("Error map of class", present, index=present.index(default), **KEEP,
                           key=Keys.scoped("truth_class", sel.model_key, sel.image_key),
                           format_func=lambda i: f"{ex.classes[i]} — IoU {ious[i]:.3f}")
        picture = views.shown(sel.image)
        err = truth.error_map(resize_labels(pred, picture.shape[:2]), resize_labels(sel.truth, picture.shape[:2]), cid)
        shown = np.where(err.any(axis=-1, keepdims=True), (0.35 * picture + 0.65 * err), 0.6 * picture)
        st.image(shown.astype(np.uint8), width="stretch",
                 caption="green: correct · blue: missed (truth only) · red: false alarm (prediction only)")


def dataset(sel: state.Selection) -> None:
    ex, n = sel.explainer, len(sel.explainer.classes)
    names = labelled_gallery()
    items = [(f"gallery:{name}", name) for name in names]
    if sel.truth is not None and sel.image_key not in dict(items):
        items.append((sel.image_key, sel.image_name))
    st.subheader("Over the images with ground truth")
    if not items:
        st.info("No image with ground truth yet: pick a generated scene or upload a label image.")
        return
    total = np.zeros((n, n), np.int64)
    used = []
    bar = st.progress(0.0) if len(items) > 1 else None
    for i, (key, name) in enumerate(items):
        if key == sel.image_key:
            labels, predict = sel.truth, lambda: sel.prediction
        else:
            labels, predict = state.gallery_truth(name), lambda name=name: ex.predict(state.gallery_image(name))
        try:
            total += confusion_of(sel, key, predict, labels)
            used.append(name)
        except NeuroscopeError as exc:
            st.warning(f"{name}: {exc}")
        if bar is not None:
            bar.progress((i + 1) / len(items), text=f"predicting {name}")
    if bar is not None:
        bar.empty()
    ious = truth.iou(total)
    shown = state.session().shown
    shown["confusion"], shown["confusion_images"] = total, used
    c1, c2 = st.columns(2)
    c1.metric(f"Mean IoU over {len(used)} image{'s' * (len(used) != 1)}",
              f"{np.nanmean(ious):.3f}" if np.isfinite(ious).any() else "—")
    c2.metric("Pixel accuracy", f"{np.trace(total) / max(1, total.sum()):.3f}")
    st.caption("Images: " + ", ".join(used))
    st.altair_chart(charts.confusion_heatmap(truth.normalise_rows(total), ex.classes, total), width="content")
    st.caption("Rows: true class; columns: predicted class; each row sums to 100%.")


def page(sel: state.Selection) -> None:
    if sel.task != "segmentation":
        st.info("Ground truth applies to segmentation models; pick one in the sidebar.")
        return
    if sel.truth is None:
        st.info("This image has no ground truth. Generated scenes and bundled scene-*.png images come with "
                "theirs; for others, upload a label image.")
        upload_truth(sel)
    if sel.truth is not None:
        st.subheader(f"{sel.image_name}")
        this_image(sel)
    dataset(sel)


state.show(page)
