"""Cassandra: sessions, versioned schema migrations and the repositories over them."""
