"""A small FastAPI + async SQLAlchemy app and its tests: the example notebook 11 explains."""
