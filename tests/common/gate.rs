//! A gate between the test and its workers: each worker announces what it took on a
//! channel and waits for the test to release it, so the test decides when the next take may
//! happen and sees exactly what each take brought.

use std::fmt;

/// The test's side: each unit a worker took, and the releases it waits for.
pub struct Gate<A> {
    seen: async_channel::Receiver<A>,
    release: async_channel::Sender<()>,
}

/// The worker's side.
pub struct Gated<A> {
    seen: async_channel::Sender<A>,
    release: async_channel::Receiver<()>,
}

/// A closed gate: workers wait at it until released.
pub fn gate<A>() -> (Gate<A>, Gated<A>) {
    let (seen_tx, seen_rx) = async_channel::unbounded();
    let (release_tx, release_rx) = async_channel::unbounded();
    (
        Gate {
            seen: seen_rx,
            release: release_tx,
        },
        Gated {
            seen: seen_tx,
            release: release_rx,
        },
    )
}

impl<A: fmt::Debug> Gate<A> {
    /// The next unit a worker took (the watchdog bounds the wait).
    pub async fn next(&self) -> A {
        self.seen
            .recv()
            .await
            .expect("the worker announces what it took")
    }

    /// After a while (long enough for a worker that could take to have taken, in practice;
    /// a failure here only ever shows a bug), nothing has been announced.
    pub async fn assert_none(&self) {
        super::idle().await;
        assert!(
            self.seen.is_empty(),
            "unexpected take {:?}",
            self.seen.try_recv()
        );
    }

    /// Lets a worker finish one unit.
    pub fn release(&self) {
        self.release
            .try_send(())
            .expect("the worker's gate is open");
    }

    /// Lets the workers finish every unit from now on.
    pub fn open(&self) {
        self.release.close();
    }
}

impl<A> Gated<A> {
    /// Announces a unit without waiting (for work that does not hold it).
    pub fn announce(&self, unit: A) {
        self.seen.try_send(unit).expect("the test listens");
    }

    /// Announces a unit (without an `.await`: nothing between the take and this can be cut
    /// short) and waits for the test to release it.
    pub async fn hold(&self, unit: A) {
        self.seen.try_send(unit).expect("the test listens");
        let _ = self.release.recv().await; // an error: opened for good
    }
}

impl<A> Clone for Gated<A> {
    fn clone(&self) -> Self {
        Gated {
            seen: self.seen.clone(),
            release: self.release.clone(),
        }
    }
}

impl<A> fmt::Debug for Gate<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

impl<A> fmt::Debug for Gated<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gated").finish_non_exhaustive()
    }
}
