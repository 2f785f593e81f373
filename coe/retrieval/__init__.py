"""Retrieval (ExpertRAG): a gate decides per prompt whether to fetch documents from an index, and the
chunks kept go into the chosen expert's prompt.

``retriever`` (the request-path step), ``gates`` (never, always, category, similarity, classifier),
``index`` (faiss vectors + SQLite chunks on disk), ``corpus`` (reading and chunking documents), and
the classifier gate's training side: ``gate_data`` (labelled questions, split, metrics) and
``gate_model`` (the artefact).
"""

from coe.retrieval.retriever import Retriever

__all__ = ["Retriever"]
