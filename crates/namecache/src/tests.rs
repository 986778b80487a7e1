//! Tests for dfly-namecache.
