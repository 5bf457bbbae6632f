"""Neuroscope dashboard: `streamlit run app/streamlit_app.py` (or `make run`).

A thin UI over the engine (CONTRACT.md §5): the shared sidebar picks model, image,
layer and target (`dashboard.state`); each page is a function of that selection that
calls the engine and draws what it returns. To add a page: one file in app_pages/
ending with `state.show(page)`, and one line in PAGES (docs/architecture.md). The
folder must not be called `pages`: a `pages/` folder beside this file switches Streamlit
to its legacy multipage mode, which runs page files without this script (no sidebar).
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
APP_DIR = str(Path(__file__).resolve().parent)
if APP_DIR not in sys.path:  # `dashboard` lives beside this file
    sys.path.insert(0, APP_DIR)

import streamlit as st  # noqa: E402

from dashboard import state, timing  # noqa: E402
from neuroscope import runtime  # noqa: E402
from neuroscope.interactive import FOREGROUND  # noqa: E402
from neuroscope.limits import limit  # noqa: E402

PAGES = [
    ("app_pages/explain.py", "Explain", ":material/insights:"),
    ("app_pages/layers.py", "Layers", ":material/grid_view:"),
    ("app_pages/ground_truth.py", "Ground truth", ":material/fact_check:"),
    ("app_pages/model.py", "Model", ":material/account_tree:"),
    ("app_pages/evaluate.py", "Evaluate", ":material/speed:"),
    ("app_pages/results.py", "Results", ":material/table_view:"),
    ("app_pages/concepts.py", "Concepts", ":material/category:"),
]


def main() -> None:
    # a local file: a ":material/..." page icon makes the browser fetch the favicon from a font CDN
    st.set_page_config(page_title="Neuroscope", page_icon=str(Path(APP_DIR) / "assets" / "favicon.png"),
                       layout="wide")
    navigation = st.navigation([st.Page(path, title=title, icon=icon, default=i == 0)
                                for i, (path, title, icon) in enumerate(PAGES)])
    timing.set_page(navigation.title)
    st.sidebar.title("Neuroscope")
    try:
        with FOREGROUND.active():   # background fills wait for this run (neuroscope.interactive.Foreground)
            with timing.phase("state"):
                state.sidebar()
            navigation.run()
        if timing.enabled():
            timing.note("cache_mb", round(state.cache_pool().nbytes / 2**20, 1))
        with timing.phase("trim"):   # freed memory the tuned allocator keeps stays bounded
            runtime.trim_above(limit("server_rss_soft_bytes"))
    except Exception as exc:  # an unexpected failure: one line for the user, the traceback in the server log
        logging.getLogger("neuroscope.app").exception("page failed")
        detail = str(exc).strip().splitlines()
        st.error(f"Something went wrong ({type(exc).__name__}: {detail[0][:300] if detail else ''}). "
                 "Change a setting or reload the page; other sessions are not affected.")


with timing.run():   # NEUROSCOPE_APP_PROFILE=path: the phases of this run (dashboard/timing.py)
    main()
