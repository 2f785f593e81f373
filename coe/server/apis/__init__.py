"""The HTTP APIs of ``coe serve``, one module each, over one internal request and answer model
(coe.types): ``chat`` (OpenAI Chat Completions, the shape the others are translated to),
``responses`` (OpenAI Responses), ``messages`` (Anthropic Messages), ``completions`` (legacy prompt
completion), ``embeddings``.

A generating API's module has ``ADAPTER``, a ``coe.server.gateway.ApiAdapter``: ``info`` (its field
table, from ``policy``), ``parse`` (body -> an ``ApiRequest``), ``body`` (Answer -> its reply) and ``sse``
(stream events -> its events); the route table (coe/server/routes.py) routes each through the one
coe.server.gateway. ``policy`` holds every field's fate, ``translate``
the checks the modules share, ``openai_format`` the OpenAI reply shapes, ``docs`` the generated API page."""
