//! The peer channels behind one trait, so every shape runs the same code on each: bounded
//! async MPMC channels from async-channel, flume, kanal and crossfire.
//!
//! tokio mpsc is not here: it has one receiver, so the shapes that use it say how.

use std::future::Future;

use futures_util::FutureExt;

/// What a shape needs of a bounded async MPMC channel of `u64`: make one, send (waiting or
/// not), receive. Dropping every sender closes it; receivers still get what is buffered.
pub(crate) trait PeerChannel: 'static {
    type Tx: Clone + Send + Sync + 'static;
    type Rx: Clone + Send + Sync + 'static;
    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx);
    /// Waits for room; `false` once every receiver is gone.
    fn send(tx: &Self::Tx, item: u64) -> impl Future<Output = bool> + Send + '_;
    /// Never waits; `false` if the channel is full (the item is shed) or closed.
    fn try_send(tx: &Self::Tx, item: u64) -> bool;
    /// Waits for an item; `None` once the channel is closed and empty.
    fn recv(rx: &Self::Rx) -> impl Future<Output = Option<u64>> + Send + '_;
}

/// `async_channel::bounded`.
pub(crate) enum AsyncChannel {}

/// `flume::bounded`, with its `send_async` / `recv_async`.
pub(crate) enum Flume {}

/// `kanal::bounded_async`.
pub(crate) enum Kanal {}

/// `crossfire::mpmc::bounded_async` (its `Array` flavour: many senders, many receivers).
pub(crate) enum Crossfire {}

// `map` rather than an `async` block: a plain wrapper around the channel's own future, so
// the shapes time the channel, not an extra state machine.

impl PeerChannel for AsyncChannel {
    type Tx = async_channel::Sender<u64>;
    type Rx = async_channel::Receiver<u64>;
    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        async_channel::bounded(capacity)
    }
    fn send(tx: &Self::Tx, item: u64) -> impl Future<Output = bool> + Send + '_ {
        tx.send(item).map(|r| r.is_ok())
    }
    fn try_send(tx: &Self::Tx, item: u64) -> bool {
        tx.try_send(item).is_ok()
    }
    fn recv(rx: &Self::Rx) -> impl Future<Output = Option<u64>> + Send + '_ {
        rx.recv().map(Result::ok)
    }
}

impl PeerChannel for Flume {
    type Tx = flume::Sender<u64>;
    type Rx = flume::Receiver<u64>;
    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        flume::bounded(capacity)
    }
    fn send(tx: &Self::Tx, item: u64) -> impl Future<Output = bool> + Send + '_ {
        tx.send_async(item).map(|r| r.is_ok())
    }
    fn try_send(tx: &Self::Tx, item: u64) -> bool {
        tx.try_send(item).is_ok()
    }
    fn recv(rx: &Self::Rx) -> impl Future<Output = Option<u64>> + Send + '_ {
        rx.recv_async().map(Result::ok)
    }
}

impl PeerChannel for Kanal {
    type Tx = kanal::AsyncSender<u64>;
    type Rx = kanal::AsyncReceiver<u64>;
    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        kanal::bounded_async(capacity)
    }
    fn send(tx: &Self::Tx, item: u64) -> impl Future<Output = bool> + Send + '_ {
        tx.send(item).map(|r| r.is_ok())
    }
    fn try_send(tx: &Self::Tx, item: u64) -> bool {
        // `Ok(false)`: full, and kanal has dropped the item.
        matches!(tx.try_send(item), Ok(true))
    }
    fn recv(rx: &Self::Rx) -> impl Future<Output = Option<u64>> + Send + '_ {
        rx.recv().map(Result::ok)
    }
}

impl PeerChannel for Crossfire {
    type Tx = crossfire::MAsyncTx<crossfire::mpmc::Array<u64>>;
    type Rx = crossfire::MAsyncRx<crossfire::mpmc::Array<u64>>;
    fn bounded(capacity: usize) -> (Self::Tx, Self::Rx) {
        crossfire::mpmc::bounded_async(capacity)
    }
    fn send(tx: &Self::Tx, item: u64) -> impl Future<Output = bool> + Send + '_ {
        tx.send(item).map(|r| r.is_ok())
    }
    fn try_send(tx: &Self::Tx, item: u64) -> bool {
        tx.try_send(item).is_ok()
    }
    fn recv(rx: &Self::Rx) -> impl Future<Output = Option<u64>> + Send + '_ {
        rx.recv().map(Result::ok)
    }
}
