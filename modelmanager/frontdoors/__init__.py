"""Front doors: Ollama's API and the OpenAI-compatible API on the manager's port.

Existing clients point at the manager instead of Ollama and get scheduling without
changing a line: every inference request becomes a job of the shared queue (priorities,
grouping, retries, VRAM rules, visible in ``/api/jobs`` with its ``source``) whose answer
is relayed as Ollama produces it.

* :mod:`.relay` -- a request's job followed from submit to its last chunk;
* :mod:`.ollama` -- ``/api/generate``, ``/api/chat``, ``/api/embed``, ``/api/tags``, ...;
* :mod:`.openai` -- ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
  ``/v1/models``; :mod:`.openai_answers` -- Ollama's answers in OpenAI's shapes;
* :mod:`.shared` -- request bodies, key priorities, Ollama's own answers passed through;
* :mod:`.errors` -- errors on the doors' paths in each API's own shape, for the layers in
  front of the doors' routes (waitress's 413, Flask's routing, the API key check).
"""

from __future__ import annotations

from flask import Flask

from config import Config

from ..api import Api
from . import ollama, openai


def register_front_doors(app: Flask, api: Api, config: Config) -> None:
    """Add both front doors' routes to ``app`` (nothing else happens until a request),
    with the WSGI fast path of Ollama's inference routes in front of Flask."""
    from ..http_api import MAX_BODY_BYTES, key_accepted  # (it imports this module)

    door = ollama.OllamaDoor(api, config)
    app.register_blueprint(ollama.blueprint(door))
    app.register_blueprint(openai.blueprint(api, config))
    expected = tuple(f"Bearer {key}".encode() for key in config.api_keys)
    app.wsgi_app = ollama.FastPath(  # type: ignore[method-assign]
        app.wsgi_app, door, expected, key_accepted, MAX_BODY_BYTES
    )
