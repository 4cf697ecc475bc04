//! The queues behind one trait, so every shape runs the same code on each: the crate's
//! `Queue` and the two comparison copies.

use std::future::Future;

use backpressure_pipeline::{Policy, PushOutcome, Queue};

use crate::async_lock_copy::AsyncLockQueue;
use crate::semaphore_copy::SemaphoreQueue;

/// What a shape needs of a queue: make one, push (waiting or not), pop, close.
pub(crate) trait BenchQueue: Send + Sync + 'static {
    fn make(capacity: usize, policy: Policy) -> Self;
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_;
    fn try_push(&self, item: u64) -> PushOutcome<u64>;
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_;
    fn close(&self);
}

impl BenchQueue for Queue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        Queue::new(capacity, policy).expect("valid capacity")
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        Queue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        Queue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        Queue::pop(self)
    }
    fn close(&self) {
        Queue::close(self);
    }
}

impl BenchQueue for AsyncLockQueue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        AsyncLockQueue::new(capacity, policy)
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        AsyncLockQueue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        AsyncLockQueue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        AsyncLockQueue::pop(self)
    }
    fn close(&self) {
        AsyncLockQueue::close(self);
    }
}

impl BenchQueue for SemaphoreQueue<u64> {
    fn make(capacity: usize, policy: Policy) -> Self {
        SemaphoreQueue::new(capacity, policy)
    }
    fn push(&self, item: u64) -> impl Future<Output = PushOutcome<u64>> + Send + '_ {
        SemaphoreQueue::push(self, item)
    }
    fn try_push(&self, item: u64) -> PushOutcome<u64> {
        SemaphoreQueue::try_push(self, item)
    }
    fn pop(&self) -> impl Future<Output = Option<u64>> + Send + '_ {
        SemaphoreQueue::pop(self)
    }
    fn close(&self) {
        SemaphoreQueue::close(self);
    }
}
