"""The RPC surface: the servicer, admission of calls (tokens, roles, limits) and status codes."""
