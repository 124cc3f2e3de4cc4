"""The telltale node agent: shim intake, enrichment, batching and the controller link."""
