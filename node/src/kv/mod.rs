//! KV state machine (to be written).
