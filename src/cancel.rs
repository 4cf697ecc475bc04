//! A cancellation-token tree on `event-listener`.
//!
//! # Invariants
//!
//! 1. `cancelled` only goes from `false` to `true`, and only with the node's lock held, so a
//!    child created under the parent's lock is born cancelled or is linked before the cancel.
//! 2. A node is in its parent's `children` at `slot` while its `parent` is `Some`; both sides
//!    change with both locks held, except that a cancelling parent takes its whole `children`
//!    list and then clears each child's `parent` under the child's lock alone.
//! 3. A cancelled node has no children and gets none: cancel takes them, and `child()` and
//!    re-parenting never link under a cancelled node.
//! 4. A node unlinks when its last handle drops: it leaves its parent and hands its children
//!    to that parent (or makes them roots), so a parent never grows while children come and
//!    go, and no reference cycle outlives the handles.
//!
//! 5. A node's hook runs exactly once if the node is cancelled, never under a lock: cancel
//!    takes it with the node's lock held (invariant 1), and `on_cancel` stores it under the
//!    same lock only while the node is not cancelled, or else runs it at once.
//!
//! Lock order: parent before child. No node's lock is held while locking its parent.
//!
//! Cancel and unlink walk the tree with an explicit stack, never by recursion, so a chain of
//! any depth neither overflows the stack when cancelled nor when dropped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::PoisonError;
use std::task::{Context, Poll};

use event_listener::{Event, EventListener};

use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, MutexGuard, Ordering};

/// A token that can be cancelled, with children that are cancelled with it.
///
/// Clones share one node: cancelling any clone cancels them all. [`child_token`] makes a new
/// node below this one; cancelling a node cancels every descendant, never an ancestor. When
/// the last clone of a node is dropped, the node leaves the tree and its children move up to
/// its parent.
///
/// # Relation to tokio-util's `CancellationToken`
///
/// The same shape and the same names as `tokio_util::sync::CancellationToken` (`new`,
/// `child_token`, `cancel`, `is_cancelled`, `cancelled`, `cancelled_owned`, `drop_guard`),
/// without tokio: it is built on `event-listener` and runs on any runtime. Two differences:
/// [`cancel`](CancellationToken::cancel) returns whether this call did it (tokio-util's
/// returns `()`), and the two kinds of token are not interchangeable types. To stop a
/// pipeline with a tokio-util token, give its `cancelled_owned()` future as the parent
/// ([`PipelineBuilder::parent`](crate::PipelineBuilder::parent) takes any
/// `Future<Output = ()> + Send + 'static`); to stop tokio-util-based code with this one, pass
/// [`cancelled_owned`](CancellationToken::cancelled_owned) the other way.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::CancellationToken;
///
/// # smol::block_on(async {
/// let root = CancellationToken::new();
/// let child = root.child_token();
/// let grandchild = child.child_token();
///
/// assert!(root.cancel());
/// grandchild.cancelled().await; // completes at once
/// assert!(child.is_cancelled());
/// assert!(root.child_token().is_cancelled()); // born cancelled
/// # });
/// ```
///
/// [`child_token`]: CancellationToken::child_token
pub struct CancellationToken {
    node: Arc<Node>,
}

struct Node {
    /// The truth (invariant 1); the `event` only wakes.
    cancelled: AtomicBool,
    event: Event,
    /// Live `CancellationToken` handles on this node (invariant 4).
    handles: AtomicUsize,
    links: Mutex<Links>,
}

#[derive(Default)]
struct Links {
    parent: Option<Arc<Node>>,
    /// This node's index in its parent's `children`.
    slot: usize,
    /// Slots of linked children; `None` slots are free and listed in `free`.
    children: Vec<Option<Arc<Node>>>,
    free: Vec<usize>,
    /// Run once, right after the node is cancelled (invariant 5).
    on_cancel: Option<Hook>,
}

/// Crate-internal code run when a node is cancelled: how a pipeline closes its queue the
/// moment its stop token is cancelled, whoever cancels it.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

impl Links {
    fn insert(&mut self, child: Arc<Node>) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.children[slot] = Some(child);
                slot
            }
            None => {
                self.children.push(Some(child));
                self.children.len() - 1
            }
        }
    }

    /// Frees `slot` if it still holds `child`.
    fn remove(&mut self, slot: usize, child: &Arc<Node>) {
        if let Some(entry) = self.children.get_mut(slot) {
            if entry.as_ref().is_some_and(|c| Arc::ptr_eq(c, child)) {
                *entry = None;
                self.free.push(slot);
            }
        }
    }

    fn take_children(&mut self) -> Vec<Arc<Node>> {
        self.free.clear();
        std::mem::take(&mut self.children)
            .into_iter()
            .flatten()
            .collect()
    }
}

impl Node {
    fn new(cancelled: bool, parent: Option<(Arc<Node>, usize)>) -> Node {
        let (parent, slot) = match parent {
            Some((parent, slot)) => (Some(parent), slot),
            None => (None, 0),
        };
        Node {
            cancelled: AtomicBool::new(cancelled),
            event: Event::new(),
            handles: AtomicUsize::new(1),
            links: Mutex::new(Links {
                parent,
                slot,
                ..Links::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Links> {
        // No code panics while holding this lock, but if one did, the links are still valid.
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cancelled(&self) -> bool {
        // Acquire: whoever sees the flag also sees what the canceller did before cancelling.
        self.cancelled.load(Ordering::Acquire)
    }

    /// Marks this node cancelled with its lock held (invariant 1) and takes its children and
    /// its hook (invariant 5). Returns `None` if it was already cancelled.
    fn mark_cancelled(links: &mut Links, node: &Node) -> Option<(Vec<Arc<Node>>, Option<Hook>)> {
        if node.is_cancelled() {
            return None;
        }
        // Release: pairs with the Acquire in `is_cancelled`.
        node.cancelled.store(true, Ordering::Release);
        Some((links.take_children(), links.on_cancel.take()))
    }

    /// Wakes the node's waiters and runs its hook; with no lock held.
    fn announce(&self, hook: Option<Hook>) {
        self.event.notify(usize::MAX);
        if let Some(hook) = hook {
            hook();
        }
    }
}

impl CancellationToken {
    /// Creates a root token, not cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// assert!(!CancellationToken::new().is_cancelled());
    /// ```
    pub fn new() -> CancellationToken {
        CancellationToken {
            node: Arc::new(Node::new(false, None)),
        }
    }

    /// Creates a child: cancelled when this token is, or at once if this one already is.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// let parent = CancellationToken::new();
    /// let child = parent.child_token();
    /// child.cancel();
    /// assert!(!parent.is_cancelled()); // cancellation flows down, never up
    /// ```
    pub fn child_token(&self) -> CancellationToken {
        let parent = &self.node;
        let mut links = parent.lock();
        // Under the parent's lock: it cannot be cancelled between this check and the link
        // (invariant 1), and a cancelled parent gets no children (invariant 3).
        if parent.is_cancelled() {
            return CancellationToken {
                node: Arc::new(Node::new(true, None)),
            };
        }
        let slot = links.free.last().copied().unwrap_or(links.children.len());
        let child = Arc::new(Node::new(false, Some((parent.clone(), slot))));
        let inserted = links.insert(child.clone());
        debug_assert_eq!(inserted, slot);
        CancellationToken { node: child }
    }

    /// Cancels this token and all its descendants. Returns `true` if this call cancelled it.
    ///
    /// Every task waiting in [`cancelled`](CancellationToken::cancelled) on any of them is
    /// woken. A call that finds the token cancelled already returns `false` at once: if
    /// another call is cancelling it at that instant, that call may still be waking its
    /// waiters and cancelling its descendants.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// assert!(token.cancel());
    /// assert!(!token.cancel());
    /// ```
    pub fn cancel(&self) -> bool {
        let node = &self.node;
        let (children, hook, parent) = {
            let mut links = node.lock();
            match Node::mark_cancelled(&mut links, node) {
                None => return false,
                Some((children, hook)) => {
                    (children, hook, links.parent.take().map(|p| (p, links.slot)))
                }
            }
        };
        node.announce(hook);
        // Leave the parent (invariant 3: a cancelled node keeps no links). Our node's lock is
        // released first (lock order).
        if let Some((parent, slot)) = parent {
            parent.lock().remove(slot, node);
        }
        // Walk the descendants with a stack: terminates because each node is cancelled once
        // and its children are taken when it is, so no node is pushed twice.
        let mut stack = children;
        while let Some(child) = stack.pop() {
            let mut links = child.lock();
            // By invariant 2 we took this child from its parent's list: clear its side.
            links.parent = None;
            let hook = match Node::mark_cancelled(&mut links, &child) {
                Some((grandchildren, hook)) => {
                    stack.extend(grandchildren);
                    hook
                }
                None => None,
            };
            drop(links);
            child.announce(hook);
        }
        true
    }

    /// Whether this token has been cancelled.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// token.cancel();
    /// assert!(token.is_cancelled());
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.node.is_cancelled()
    }

    /// Waits until this token is cancelled.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the future only observes the token.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// # smol::block_on(async {
    /// let token = CancellationToken::new();
    /// let waiter = smol::spawn({
    ///     let token = token.clone();
    ///     async move { token.cancelled().await }
    /// });
    /// token.cancel();
    /// waiter.await;
    /// # });
    /// ```
    pub fn cancelled(&self) -> WaitForCancellation<'_> {
        WaitForCancellation {
            node: &self.node,
            listener: None,
        }
    }

    /// Like [`cancelled`](CancellationToken::cancelled), but owns a clone of the token, so the
    /// future is `'static`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the future only observes the token.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// # smol::block_on(async {
    /// let token = CancellationToken::new();
    /// let waiter = smol::spawn(token.clone().cancelled_owned());
    /// token.cancel();
    /// waiter.await;
    /// # });
    /// ```
    pub fn cancelled_owned(self) -> WaitForCancellationOwned {
        WaitForCancellationOwned {
            token: self,
            listener: None,
        }
    }

    /// Runs `hook` once this token is cancelled, by whichever call cancels it (this token,
    /// or an ancestor), right after its waiters are woken; at once if it is cancelled
    /// already. One hook per node: a second replaces the first (invariant 5).
    pub(crate) fn on_cancel(&self, hook: Hook) {
        let node = &self.node;
        let mut links = node.lock();
        if node.is_cancelled() {
            drop(links);
            hook();
        } else {
            links.on_cancel = Some(hook);
        }
    }

    /// [`on_cancel`](CancellationToken::on_cancel) for the loom models in `loom/`, which
    /// are another crate. Not part of the API: it exists only under `--cfg loom`.
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn loom_on_cancel(&self, hook: Hook) {
        self.on_cancel(hook);
    }

    /// Returns a guard that cancels this token when dropped, unless disarmed.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// let token = CancellationToken::new();
    /// {
    ///     let _guard = token.clone().drop_guard();
    /// }
    /// assert!(token.is_cancelled());
    /// ```
    pub fn drop_guard(self) -> DropGuard {
        DropGuard { token: Some(self) }
    }
}

impl Default for CancellationToken {
    fn default() -> CancellationToken {
        CancellationToken::new()
    }
}

impl Clone for CancellationToken {
    fn clone(&self) -> CancellationToken {
        // Relaxed: a new handle comes from an existing one, which keeps the count above zero.
        self.node.handles.fetch_add(1, Ordering::Relaxed);
        CancellationToken {
            node: self.node.clone(),
        }
    }
}

impl Drop for CancellationToken {
    fn drop(&mut self) {
        // AcqRel: the last handle's unlink must see every other handle's work on the node.
        if self.node.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            unlink(&self.node);
        }
    }
}

/// Takes a node whose last handle is gone out of the tree (invariant 4).
fn unlink(node: &Arc<Node>) {
    // Retries only when our parent changed between reading it and locking it, which happens
    // when that parent was itself unlinked (we moved up one level) or cancelled (we lost our
    // parent); both happen at most once per ancestor, so the loop terminates.
    loop {
        let mut links = node.lock();
        let Some(parent) = links.parent.clone() else {
            // A root: our children become roots. Hold our lock throughout (lock order: node,
            // then child), so that a child unlinking at the same time either hands us its
            // children before we take them, or waits and finds itself a root; it cannot hand
            // them to us after we have let go, which would leave them linked to a dead node.
            for child in links.take_children() {
                let mut child_links = child.lock();
                if child_links
                    .parent
                    .as_ref()
                    .is_some_and(|p| Arc::ptr_eq(p, node))
                {
                    child_links.parent = None;
                }
            }
            return;
        };
        // Lock order: release ours before taking the parent's.
        drop(links);
        let mut parent_links = parent.lock();
        let mut links = node.lock();
        if !links
            .parent
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &parent))
        {
            continue;
        }
        parent_links.remove(links.slot, node);
        links.parent = None;
        if parent.is_cancelled() {
            // The parent's cancel holds our node on its stack and will cancel our children
            // (invariant 2); leave them to it.
            return;
        }
        // Hand our children to our parent (lock order: parent, node, child).
        for child in links.take_children() {
            let mut child_links = child.lock();
            // A child that is cancelling has already let go of us (invariant 3): skip it.
            if child_links
                .parent
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, node))
            {
                child_links.slot = parent_links.insert(child.clone());
                child_links.parent = Some(parent.clone());
            }
        }
        return;
    }
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken")
            .field("is_cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Polls a node's cancellation: the flag is the truth, the event only wakes. Check the flag,
/// listen, check again, then wait, so a cancel between the checks is never missed.
fn poll_cancelled(
    node: &Node,
    listener: &mut Option<EventListener>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    // Terminates: each turn either returns or moves from "no listener" to "listening", and a
    // notified listener is consumed before the flag is checked again.
    loop {
        if node.is_cancelled() {
            *listener = None;
            return Poll::Ready(());
        }
        match listener {
            None => *listener = Some(node.event.listen()),
            Some(l) => {
                if Pin::new(l).poll(cx).is_pending() {
                    return Poll::Pending;
                }
                *listener = None;
            }
        }
    }
}

/// The future returned by [`CancellationToken::cancelled`].
///
/// # Cancel safety
///
/// Cancel safe: the future only observes the token.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::CancellationToken;
/// use futures_util::FutureExt;
///
/// let token = CancellationToken::new();
/// let mut waiting = token.cancelled();
/// assert!((&mut waiting).now_or_never().is_none());
/// token.cancel();
/// assert!(waiting.now_or_never().is_some());
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct WaitForCancellation<'a> {
    node: &'a Node,
    listener: Option<EventListener>,
}

impl Future for WaitForCancellation<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        poll_cancelled(this.node, &mut this.listener, cx)
    }
}

impl fmt::Debug for WaitForCancellation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitForCancellation")
            .field("is_cancelled", &self.node.is_cancelled())
            .finish()
    }
}

/// The future returned by [`CancellationToken::cancelled_owned`].
///
/// # Cancel safety
///
/// Cancel safe: the future only observes the token.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::CancellationToken;
/// use futures_util::FutureExt;
///
/// let token = CancellationToken::new();
/// let waiting = token.clone().cancelled_owned(); // 'static: can move into a task
/// token.cancel();
/// assert!(waiting.now_or_never().is_some());
/// ```
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct WaitForCancellationOwned {
    token: CancellationToken,
    listener: Option<EventListener>,
}

impl Future for WaitForCancellationOwned {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        poll_cancelled(&this.token.node, &mut this.listener, cx)
    }
}

impl fmt::Debug for WaitForCancellationOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitForCancellationOwned")
            .field("is_cancelled", &self.token.is_cancelled())
            .finish()
    }
}

/// Cancels its token when dropped, unless [disarmed](DropGuard::disarm).
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::CancellationToken;
///
/// let token = CancellationToken::new();
/// let guard = token.clone().drop_guard();
/// let token_again = guard.disarm();
/// assert!(!token_again.is_cancelled());
/// ```
pub struct DropGuard {
    token: Option<CancellationToken>,
}

impl DropGuard {
    /// Returns the token without cancelling it.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::CancellationToken;
    ///
    /// let guard = CancellationToken::new().drop_guard();
    /// let token = guard.disarm();
    /// assert!(!token.is_cancelled());
    /// ```
    pub fn disarm(mut self) -> CancellationToken {
        match self.token.take() {
            Some(token) => token,
            // `token` is `Some` from construction until `disarm` or drop, which consume us.
            None => unreachable!("a DropGuard holds its token until disarmed or dropped"),
        }
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            token.cancel();
        }
    }
}

impl fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropGuard")
            .field("token", &self.token)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slots in the parent's `children`, free or not: what the parent's memory grows with.
    fn slots(token: &CancellationToken) -> usize {
        token.node.lock().children.len()
    }

    /// Children linked to the parent right now.
    fn live_children(token: &CancellationToken) -> usize {
        token.node.lock().children.iter().flatten().count()
    }

    fn parent_of(token: &CancellationToken) -> Option<Arc<Node>> {
        token.node.lock().parent.clone()
    }

    #[test]
    fn a_parent_does_not_grow_while_children_come_and_go_one_at_a_time() {
        let parent = CancellationToken::new();
        for _ in 0..10_000 {
            let child = parent.child_token();
            assert_eq!(live_children(&parent), 1);
            assert!(slots(&parent) <= 1);
            drop(child);
            assert_eq!(live_children(&parent), 0);
        }
        assert!(slots(&parent) <= 1);
    }

    #[test]
    fn a_parent_does_not_grow_past_its_live_children() {
        const LIVE: usize = 10;
        let parent = CancellationToken::new();
        let mut window = std::collections::VecDeque::new();
        for _ in 0..10_000 {
            if window.len() == LIVE {
                drop(window.pop_front());
            }
            window.push_back(parent.child_token());
            assert!(live_children(&parent) <= LIVE);
            assert!(slots(&parent) <= LIVE, "{} slots", slots(&parent));
        }
        drop(window);
        assert_eq!(live_children(&parent), 0);
        assert!(slots(&parent) <= LIVE);
    }

    #[test]
    fn cancelled_children_leave_their_parent() {
        let parent = CancellationToken::new();
        for _ in 0..1_000 {
            let child = parent.child_token();
            assert!(child.cancel());
            assert_eq!(live_children(&parent), 0);
            drop(child);
        }
        assert!(slots(&parent) <= 1);
    }

    #[test]
    fn dropping_a_middle_node_moves_its_children_up() {
        let root = CancellationToken::new();
        let middle = root.child_token();
        let sibling = root.child_token();
        let grandchildren: Vec<_> = (0..3).map(|_| middle.child_token()).collect();
        assert_eq!(live_children(&root), 2);
        assert_eq!(live_children(&middle), 3);

        drop(middle);
        // The middle node left; its three children took its place beside the sibling.
        assert_eq!(live_children(&root), 4);
        for grandchild in &grandchildren {
            let parent = parent_of(grandchild).expect("re-parented, not orphaned");
            assert!(Arc::ptr_eq(&parent, &root.node));
        }
        drop(sibling);
        assert_eq!(live_children(&root), 3);
        drop(grandchildren);
        assert_eq!(live_children(&root), 0);
    }

    #[test]
    fn dropping_a_root_unlinks_its_children() {
        let root = CancellationToken::new();
        let children: Vec<_> = (0..3).map(|_| root.child_token()).collect();
        let weak = Arc::downgrade(&root.node);
        drop(root);
        // No child keeps the dead root alive, and none still points at it.
        assert!(weak.upgrade().is_none());
        assert!(children.iter().all(|c| parent_of(c).is_none()));
    }

    /// A root and its child dropped at the same moment: the grandchild must end up a root,
    /// not linked to the dead root (which it would keep alive).
    #[test]
    fn a_root_and_its_child_dropped_together_leave_the_grandchild_a_root() {
        use std::sync::{mpsc, Barrier};
        use std::thread;

        const ROUNDS: usize = 5_000;
        let barrier = Arc::new(Barrier::new(3));
        let droppers: Vec<_> = (0..2)
            .map(|_| {
                let (send, recv) = mpsc::channel::<CancellationToken>();
                let barrier = barrier.clone();
                let thread = thread::spawn(move || {
                    for token in recv {
                        barrier.wait();
                        drop(token);
                        barrier.wait();
                    }
                });
                (send, thread)
            })
            .collect();
        for _ in 0..ROUNDS {
            let root = CancellationToken::new();
            let child = root.child_token();
            let grandchild = child.child_token();
            let dead_root = Arc::downgrade(&root.node);
            droppers[0].0.send(root).expect("dropper 0 runs");
            droppers[1].0.send(child).expect("dropper 1 runs");
            barrier.wait(); // both drop now
            barrier.wait(); // both dropped
            assert!(parent_of(&grandchild).is_none());
            assert!(dead_root.upgrade().is_none(), "the dead root is kept alive");
        }
        for (send, thread) in droppers {
            drop(send);
            thread.join().expect("a dropper panicked");
        }
    }

    #[test]
    fn cancel_takes_every_link_down() {
        let root = CancellationToken::new();
        let a = root.child_token();
        let b = a.child_token();
        assert!(root.cancel());
        assert_eq!(slots(&root), 0);
        assert_eq!(slots(&a), 0);
        assert!(parent_of(&a).is_none());
        assert!(parent_of(&b).is_none());
    }
}
