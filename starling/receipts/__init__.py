"""Read receipts, the fully-read marker, and unread notification counts for /sync."""
