"""Search with the models: an index over a gallery of images and videos (faiss, metadata in Parquet), queries by
text, image or video, and a Gradio demo. `build.py` builds, `query.py` searches, `kinds.py` holds the faiss index
kinds, `store.py` the files on disk, `gallery.py` the sources, `embedder.py` the model side, `demo.py` the app."""

from .build import build_index
from .kinds import KINDS, FaissIndex, KindParams
from .query import SearchIndex, SearchResult, Searcher, parse_filters, search

__all__ = ["KINDS", "FaissIndex", "KindParams", "SearchIndex", "SearchResult", "Searcher", "build_index",
           "parse_filters", "search"]
