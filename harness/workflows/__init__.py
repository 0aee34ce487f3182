"""What the commands do end to end: record, then replay, then report (run, observe, matrix)."""
