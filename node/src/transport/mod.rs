//! transport (to be written).
