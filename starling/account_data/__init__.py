"""Account data (global and per room), room tags, and the ignored-users list."""
