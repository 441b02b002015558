"""lineguard: vision."""
