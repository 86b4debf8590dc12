"""Pure computation: imaging, embedding, the vector index. No Qt, no database."""
