//! Support shared by the multiproc examples and the cross-process integration tests.
//! Users depend on the `multiproc` crate, not on this one.
