//! todo
pub mod retry;
