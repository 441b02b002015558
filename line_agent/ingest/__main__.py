"""``python -m line_agent.ingest --index I``: one ingest worker process (settings from LINEGUARD_*)."""

from line_agent.ingest.worker import main

main()
