"""On-device test-time search (best-of-N, beam, lookahead, DVTS) and answer selection."""

from ttc_jax.search.api import SearchOutput, search, search_capacity
from ttc_jax.search.config import METHODS, Budget, SearchConfig
from ttc_jax.search.engine import SearchResult, run_search

__all__ = [
    "METHODS", "Budget", "SearchConfig", "SearchOutput", "SearchResult", "run_search", "search",
    "search_capacity",
]
