"""The web console (`evolora console`): a Streamlit app on 127.0.0.1 over the running service
(HTTP, with an API key like any client) and the MLflow store (through `tasks.registry`).

An entry point, like `cli/`: `app.py` is the script Streamlit runs, `views/` its pages; the
modules beside them read and shape the data the pages draw (`client` the service, `cycles`
the cycles' records, `adapters` the registry, `system` the machine and the service's
metrics), each testable without a browser.
"""
