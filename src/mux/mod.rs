//! Pure multiplexing state shared by both ends of a tunnel: flow-control windows, each
//! stream's lifecycle and the writer's order (tiers, and fair turns within the data tier).

#![forbid(unsafe_code)]

pub(crate) mod autotune;
pub(crate) mod flow;
pub(crate) mod round_robin;
pub(crate) mod stream_state;
pub(crate) mod sustained;
pub(crate) mod tiers;
