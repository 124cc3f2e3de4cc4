"""Built-in Alert Policy documents, shipped as package data (read with importlib.resources)."""
