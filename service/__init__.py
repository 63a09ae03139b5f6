"""The FastAPI search service (built on ``retrieval``)."""
