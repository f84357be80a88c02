//! CAMs: see the module docs once implemented.
