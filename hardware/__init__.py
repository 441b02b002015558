"""lineguard: hardware."""
