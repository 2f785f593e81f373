"""The HTTP APIs of ``coe serve``, one module each, over one internal request and answer model
(coe.types): ``chat`` (OpenAI Chat Completions, the shape the others are translated to),
``responses`` (OpenAI Responses), ``messages`` (Anthropic Messages), ``completions`` (legacy prompt
completion), ``embeddings``. Each module parses its body into a ``Call`` and writes an ``Answer``
(or stream events) in its own shape; ``policy`` holds every field's fate; ``translate`` the checks
they share; coe.server.gateway runs the request."""
