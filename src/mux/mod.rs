//! Pure multiplexing state shared by both ends of a tunnel: flow-control windows.

pub mod flow;
