"""Set-up helpers for the async SQLAlchemy notebooks.

They remove set-up noise (a private database per notebook, sample data, a query counter,
tidy tables, exercise self-checks) and never do the thing a notebook is teaching.

    from helpers import open_database, QueryRecorder, show, explain
"""

from helpers.database import DatabaseConfigError, NotebookDatabase, open_database
from helpers.display import show
from helpers.explain import explain
from helpers.queries import QueryRecorder

__all__ = ["DatabaseConfigError", "NotebookDatabase", "QueryRecorder", "explain", "open_database", "show"]
