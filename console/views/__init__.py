"""The console's pages: each a Streamlit script `console/app.py` navigates to (not named
`pages/`, which Streamlit would also list on its own)."""
