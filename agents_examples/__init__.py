"""Runnable examples around IntentGate: example MCP tool servers (``servers``) and agents."""
