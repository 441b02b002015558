"""lineguard: llm_ops."""
