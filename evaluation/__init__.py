"""Evaluation drivers: ``md2pr-evaluate`` and the service client it scores a running service with.

- :mod:`evaluation.rankings`: first-stage rankings (BM25, a dense index, hybrid fusion), the
  ``Rankings`` shape every system is scored in.
- :mod:`evaluation.rerank`: cross-encoder reranking of first stages (and the fused teacher score).
- :mod:`evaluation.service_client`: the same rankings from a running service over HTTP.
- :mod:`evaluation.evaluate`: the CLI that runs the systems asked for and writes the metrics.

Built on :mod:`retrieval` only (metrics, datasets, index, encoder, the wire schema); nothing in
``retrieval``, ``training``, ``index_build`` or ``service`` imports it.
"""
