"""The console's pages: each a Streamlit script `console/app.py` navigates to."""
