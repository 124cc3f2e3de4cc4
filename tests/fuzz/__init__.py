"""Fuzzing of what telltale takes from outside: shim records, agent connections, policy documents."""
