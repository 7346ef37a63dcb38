"""PostgreSQL storage: connection pool, schema migrations and repositories."""
