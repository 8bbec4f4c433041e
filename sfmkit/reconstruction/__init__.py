"""The COLMAP boundary: cameras, database import, incremental mapping, export."""
