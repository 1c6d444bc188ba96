"""User profiles: display name and avatar, and their propagation into rooms."""
