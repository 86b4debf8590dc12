"""Use cases over core and storage: indexing, watching, searching, library management."""
