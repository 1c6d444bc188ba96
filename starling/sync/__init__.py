"""/sync: building responses from the streams, and long-polling for changes."""
