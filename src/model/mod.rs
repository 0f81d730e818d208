//! The SPLICEVAE model (model.md §2–§5): written once over backend ops.
