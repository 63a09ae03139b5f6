"""Teacher training and MD2PR distillation (built on ``retrieval``)."""
