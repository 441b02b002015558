-- Inspections say whether a frame was kept (frame_saved) instead of naming its path: a path taken from a
-- message was served as a file. A frame is found by line, camera and inspection_id (line_agent/frames.py).
-- frame_path stays for rows stored before; ingest no longer writes it.
ALTER TABLE inspections ADD COLUMN IF NOT EXISTS frame_saved boolean NOT NULL DEFAULT false;
