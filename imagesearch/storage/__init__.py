"""The SQLite catalog: schema, database setup and migrations, and the repository over them."""
