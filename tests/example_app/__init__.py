"""A small FastAPI + async SQLAlchemy app and its tests: the example notebook 10 explains."""
