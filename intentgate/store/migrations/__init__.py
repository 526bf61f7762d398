"""Alembic migrations of the gateway's schema (``intentgate db upgrade`` applies them)."""
