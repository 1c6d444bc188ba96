"""Server-side search of room events (spec: modules "Server Side Search")."""
