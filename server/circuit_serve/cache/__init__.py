"""Content-addressed cache of attribution graphs (Redis, or an in-process LRU)."""

from circuit_serve.cache.backends import CacheBackend, MemoryBackend, RedisBackend
from circuit_serve.cache.graph_cache import GraphCache
from circuit_serve.cache.key import graph_key, is_graph_key
from circuit_serve.cache.redis_link import RedisLink, RedisUnavailable

__all__ = [
    "CacheBackend",
    "GraphCache",
    "MemoryBackend",
    "RedisBackend",
    "RedisLink",
    "RedisUnavailable",
    "graph_key",
    "is_graph_key",
]
