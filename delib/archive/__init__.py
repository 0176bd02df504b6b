"""Where runs are kept: run folders and their SQLite index, or a PostgreSQL database."""
