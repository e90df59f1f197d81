//! Pure multiplexing state shared by both ends of a tunnel: flow-control windows, each
//! stream's lifecycle and the writer's order (tiers, and fair turns within the data tier).

#![forbid(unsafe_code)]

pub mod flow;
pub mod round_robin;
pub mod stream_state;
pub mod sustained;
pub mod tiers;
