"""Pure index arithmetic for views."""
