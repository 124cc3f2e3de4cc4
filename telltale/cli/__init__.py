"""The `telltale` command."""
