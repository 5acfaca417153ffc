//! Loader tests (filled in below).
