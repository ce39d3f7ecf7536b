"""The script `evolora console` hands to Streamlit: the sidebar, then the chosen page."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run console/app.py` from a checkout puts only console/ on the path.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from console.state import guarded, settings, sidebar  # noqa: E402

st.set_page_config(page_title="evolora", page_icon=":material/genetics:", layout="wide")
_PAGES = Path(__file__).parent / "views"
navigation = st.navigation([
    st.Page(_PAGES / "chat.py", title="Chat", icon=":material/chat:", url_path="chat",
            default=True),
    st.Page(_PAGES / "progress.py", title="Progress", icon=":material/trending_up:",
            url_path="progress"),
    st.Page(_PAGES / "adapters.py", title="Adapters", icon=":material/account_tree:",
            url_path="adapters"),
    st.Page(_PAGES / "memory.py", title="Memory", icon=":material/psychology:",
            url_path="memory"),
    st.Page(_PAGES / "system.py", title="System", icon=":material/monitor_heart:",
            url_path="system"),
])
guarded(lambda: sidebar(settings()))
navigation.run()
