//! Tests for dfly-lwkt.
