"""Family adapters as data: module paths and the few family-specific rules, one short file per family."""
