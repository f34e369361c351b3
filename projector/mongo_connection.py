"""The projector's MongoDB connection: the client, what an outage looks like, and how numbers are stored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from bson.int64 import Int64
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError, WTimeoutError

from projector.settings import ProjectorSettings
from shared.errors import ReadModelUnavailable

Document = dict[str, Any]
DUPLICATE_KEY = 11000
#: Anything MongoDB can fail with, for a command-line tool that only reports it.
MONGO_ERRORS: tuple[type[Exception], ...] = (ReadModelUnavailable, PyMongoError)
#: Fields kept as int64 whatever their size, so every document stores them alike.
_LONGS = frozenset({"balance_minor", "log_ms", "updated_ms", "at_ms", "amount_minor"})


@contextmanager
def unavailable_as_error() -> Iterator[None]:
    try:
        yield
    except (ConnectionFailure, WTimeoutError) as exc:  # includes AutoReconnect, timeouts, not-primary
        raise ReadModelUnavailable(f"MongoDB is unavailable: {type(exc).__name__}") from exc


def connect(settings: ProjectorSettings) -> MongoClient[Document]:
    timeout_ms = int(settings.mongodb_timeout_seconds * 1000)
    return MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                       socketTimeoutMS=timeout_ms * 2, retryWrites=True, tz_aware=True)


def describe_mongo(settings: ProjectorSettings) -> str:  # for a person: never the credentials
    hosts = urlsplit(settings.mongodb_uri).netloc.rpartition("@")[2] or "localhost:27017"
    return f"MongoDB {hosts}, {settings.mongodb_database}.{settings.mongodb_collection}"


def stored(doc: Document) -> Document:
    return {k: Int64(v) if k in _LONGS and isinstance(v, int) else v for k, v in doc.items()}
