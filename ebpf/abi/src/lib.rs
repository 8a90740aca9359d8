//! The one definition of every map the agent and the kernel programs share.
//!
//! Both sides compile this crate: the eBPF programs as `no_std`, the agent with
//! the `user` feature, which adds `aya::Pod` and conversions to `std::net`.
//! Every type is `#[repr(C)]` with explicit padding so its bytes are fully
//! defined, and its size is asserted at compile time: a layout change is a
//! compile error here rather than a silent mismatch in the kernel.
#![no_std]

pub mod addr;
pub mod flow;
pub mod flow_state;
pub mod fragment;
pub mod maglev;
pub mod maps;
pub mod stats;
pub mod verdict;

pub use addr::Addr;
pub use flow::*;
pub use flow_state::*;
pub use fragment::*;
pub use maglev::*;
pub use maps::*;
pub use stats::*;
pub use verdict::*;
