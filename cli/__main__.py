"""`python -m cli`: the evolora command line."""

from cli.main import app

app()
