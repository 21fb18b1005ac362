"""The dashboard's reads, one module per page or concern."""
