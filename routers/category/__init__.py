"""Two-step routing (Composition of Experts, arXiv 2412.01868): a classifier gives p(category | prompt),
the registry's category -> expert map picks the expert, and an unsure prompt falls back to a generalist.

The room: ``router`` (the runtime ``CategoryRouter``), ``model`` (what it asks: texts in, p(category)
out: an embedding classifier, the TF-IDF model or a cascade), ``classifiers`` (centroid, kNN, logreg),
``text_classifier`` (character TF-IDF; the features are the engine's ``coe.encoding.char_tfidf``),
``llm_classifier`` (an expert picks the category), ``artefact`` (the trained model on disk),
``training`` (``coe train-router``), ``evaluation`` (accuracy, macro-F1, latency) and ``fit_map`` (the
category -> expert map from outcomes; the solver is the engine's ``coe.category_map``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coe.plugins import lazy_exports

if TYPE_CHECKING:
    from routers.category.router import CategoryRouter

__all__ = ["CategoryRouter"]
# The runtime imports numpy and the encoder; reading a registry needs only the settings model.
__getattr__ = lazy_exports(__name__, {"CategoryRouter": "routers.category.router"})
