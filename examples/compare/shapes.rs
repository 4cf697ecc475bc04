//! The measured shapes, one file each: every function measures one variant once and returns
//! its number in the row's unit (items/s, ns per pair, MiB, ms or µs).
//!
//! Each shape's variants run the same code on the queues behind
//! [`BenchQueue`](crate::bench_queue::BenchQueue) and on the channels behind
//! [`PeerChannel`](crate::peer_channel::PeerChannel), on the one executor of
//! [`crate::runtime`].

// Paths are relative to this file's directory (`examples/compare/`).
#[path = "shapes/handoff.rs"]
mod handoff;
#[path = "shapes/many_to_many.rs"]
mod many_to_many;
#[path = "shapes/memory.rs"]
mod memory;
#[path = "shapes/overload.rs"]
mod overload;
#[path = "shapes/pair.rs"]
mod pair;
#[path = "shapes/pipeline.rs"]
mod pipeline;
#[path = "shapes/shutdown.rs"]
mod shutdown;

pub(crate) use handoff::{s1_channel, s1_queue};
pub(crate) use many_to_many::{s6_channel, s6_queue};
pub(crate) use memory::{child_mem, mem_in_child, MEM_BURSTS};
pub(crate) use overload::{overload_channel, overload_peer, overload_queue, overload_tokio};
pub(crate) use pair::{
    s4_channel, s4_queue, s4_tokio, s4_vecdeque, s4b_channel, s4b_queue, s4b_tokio,
};
pub(crate) use pipeline::{s5_batched, s5_latency, s5_pipeline, s5_pool, s5_timed, S5B_SIZES};
pub(crate) use shutdown::{sd_backlog_pipeline, sd_backlog_pool, sd_stuck, SD_DEADLINE, SD_GRACE};
