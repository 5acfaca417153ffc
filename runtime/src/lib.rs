//! hull runtime
