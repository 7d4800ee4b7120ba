//! The scenarios, one module per area; each test starts its own Redis and services.
