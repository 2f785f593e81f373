"""The sentence encoder: the one embedding of a prompt that routing, retrieval and training share.

``embedder`` (the runtime object and its per-request cache), ``files`` (finding encoder files offline
and checking them), ``backends`` (torch, onnx, onnx-int8, static), ``header`` (what a fine-tuned
encoder folder records), ``search`` (faiss on one thread for a few queries), ``view`` (what an encoder
reads of a long prompt), ``cache`` (vectors of data sets on disk, for training and evaluation) and
``build/`` (offline: fine-tune, distil, export, quantise). Beside the sentence encoder, ``char_tfidf``:
character n-gram TF-IDF, a sparse encoding in plain Python (the category router's TF-IDF model and
the guard).

Naming: an *encoder* is a model on disk; an *embedder* is the loaded object that turns text into
vectors with it.
"""

from coe.encoding.embedder import Embedder, request_scope, shared_embedder

__all__ = ["Embedder", "request_scope", "shared_embedder"]
