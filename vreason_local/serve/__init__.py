"""`vreason serve`: an OpenAI-compatible HTTP server in front of one Engine (issue 19).

Importing this package needs nothing beyond the core install; the app itself needs the `serve` extra
(fastapi, uvicorn), which is why cli.py registers the command lazily.
"""
