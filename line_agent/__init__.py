"""lineguard: line_agent."""
