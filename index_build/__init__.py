"""Corpus encoding, FAISS building and index publishing (built on ``retrieval``)."""
