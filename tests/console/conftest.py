"""Browser tests share the API tests' helpers (seeded rows, tokens, the uvicorn server thread)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from api_support import sim  # noqa: F401
