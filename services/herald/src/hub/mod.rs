//! The hub: which local connections want which topic, one registry per
//! worker thread.
//!
//! Each thread that holds connections (the stream threads of
//! `http::front::streams`, and the HTTP workers for long polls) has its own
//! `Hub` actor and its own topic map, so fan-out runs on every core without a shared lock.
//! Connections register with their thread's hub synchronously (the map is
//! the thread's own), which is what makes "register first, then replay"
//! hold: once `register` returns, every later event reaches the connection.
//!
//! The bus hands each committed event to [`Hubs`], which forwards it to every
//! worker's hub with a bounded `try_send`. A hub whose mailbox is full loses
//! that event for its connections; it then asks all of them to resync from
//! the store, so the loss is repaired, never silent.
//!
//! With a cluster bus, the registries also keep [`Interest`] up to date:
//! the node receives a topic's events from other nodes only while it has a
//! local subscriber of that topic.
//!
//! Each hub also keeps books of what waits for its thread ([`Ledger`]), from
//! which publishers are paced ([`Hubs::pace`]): on this node's monotonic
//! clock, from when the node received each event.

pub mod interest;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix::prelude::*;
use parking_lot::RwLock;

use crate::event::Encoded;
use crate::topic::Topic;
pub use interest::{Change, Changes, Follow, Interest, Ready};

/// Events waiting for one hub before the bus gives up on it and resyncs it.
const HUB_MAILBOX: usize = 65_536;

/// A committed event for a connection.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<Encoded>);

/// Tells a connection that events may have been lost on the way to it: it
/// re-reads its topics from the store after its cursor.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct Resync;

/// Tells a connection that it could not keep up and is being closed.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct SlowConsumer;

/// A connection's handles, as the hub holds them.
#[derive(Clone)]
pub struct Member {
    pub deliver: Recipient<Deliver>,
    pub resync: Recipient<Resync>,
    pub slow: Recipient<SlowConsumer>,
    /// What the hub handed it that it has not handled yet.
    pub ledger: Ledger,
}

/// A member's deliveries not yet handled, on its thread's books: the hub
/// adds each event it hands the member, the member takes each one off as it
/// handles it ([`Ledger::handled`]). A member that ends with events still
/// in its mailbox takes them off when its last handle goes, so a thread's
/// count never keeps events nobody will handle.
#[derive(Clone)]
pub struct Ledger(Rc<LedgerInner>);

struct LedgerInner {
    queued: Cell<u64>,
    flags: Arc<HubFlags>,
}

impl Ledger {
    /// A ledger on this thread's books (starting the thread's hub if need be).
    pub fn new(hubs: &Hubs) -> Ledger {
        Ledger(Rc::new(LedgerInner {
            queued: Cell::new(0),
            flags: ensure_hub(hubs),
        }))
    }

    /// The member handled `event` now: one fewer on the books, and the
    /// thread's fan-out lag is how long the event waited since this node
    /// received it (this node's monotonic clock).
    pub fn handled(&self, event: &Encoded) {
        let inner = &*self.0;
        inner.queued.set(inner.queued.get().saturating_sub(1));
        inner.flags.in_flight.fetch_sub(1, Ordering::AcqRel);
        inner.flags.measured(event.received.elapsed());
    }

    fn handed(&self) {
        self.0.queued.set(self.0.queued.get() + 1);
    }
}

impl Drop for LedgerInner {
    fn drop(&mut self) {
        let left = self.queued.replace(0);
        if left > 0 {
            self.flags.in_flight.fetch_sub(left, Ordering::AcqRel);
            self.flags.measured(Duration::ZERO);
        }
    }
}

#[derive(Default)]
struct Registry {
    topics: HashMap<Topic, Vec<(u64, Member)>>,
    /// Connections marked slow: no further deliveries.
    slow: Vec<u64>,
    /// The node's interest, when a cluster bus follows it.
    interest: Option<Arc<Interest>>,
}

impl Registry {
    /// Removes `topic`'s entry (it has no connection left on this thread).
    fn forget(&mut self, topic: &Topic) {
        if self.topics.remove(topic).is_some()
            && let Some(interest) = &self.interest
        {
            interest.leave(topic);
        }
    }
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
    static HUB: RefCell<Option<Addr<Hub>>> = const { RefCell::new(None) };
    /// This thread's hub's flags, for its connections.
    static FLAGS: RefCell<Option<Arc<HubFlags>>> = const { RefCell::new(None) };
}

static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id, unique in this process.
pub fn connection_id() -> u64 {
    NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed)
}

/// Registers `member` for `topics` with this thread's hub. Effective at
/// once for events this node hands to its hubs; the returned [`Ready`] says
/// when events of other nodes arrive too (a cluster bus may have to
/// subscribe first): wait for it before reading the store.
pub fn register(hubs: &Hubs, id: u64, topics: &[Topic], member: &Member) -> Ready {
    ensure_hub(hubs);
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let mut joined = Vec::new();
        for topic in topics {
            let members = r.topics.entry(topic.clone()).or_insert_with(|| {
                joined.push(topic.clone());
                Vec::new()
            });
            if !members.iter().any(|(m, _)| *m == id) {
                members.push((id, member.clone()));
            }
        }
        match &r.interest {
            Some(interest) => interest.join(&joined, topics),
            None => Ready::now(),
        }
    })
}

/// Starts this thread's hub now: a stream thread does before it takes its
/// first connection.
pub fn join_thread(hubs: &Hubs) {
    ensure_hub(hubs);
}

/// This thread holds no more connections: its hub leaves the node's set,
/// and its registry and hub go now, while the thread still runs (not when
/// its thread-locals are destroyed).
pub fn leave_thread(hubs: &Hubs) {
    if let Some(flags) = FLAGS.with(|f| f.borrow_mut().take()) {
        hubs.hubs
            .write()
            .retain(|(_, other)| !Arc::ptr_eq(other, &flags));
    }
    HUB.with(|h| h.borrow_mut().take());
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        let topics: Vec<Topic> = r.topics.keys().cloned().collect();
        for topic in &topics {
            r.forget(topic);
        }
        *r = Registry::default();
    });
}

/// Removes connection `id` from `topics` on this thread's hub.
pub fn unregister(id: u64, topics: &[Topic]) {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        for topic in topics {
            if let Some(members) = r.topics.get_mut(topic) {
                members.retain(|(m, _)| *m != id);
                if members.is_empty() {
                    r.forget(topic);
                }
            }
        }
        r.slow.retain(|m| *m != id);
    });
}

/// This thread's hub's flags, starting the hub on the thread's first use.
fn ensure_hub(hubs: &Hubs) -> Arc<HubFlags> {
    HUB.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_none() {
            let flags = Arc::new(HubFlags::new(hubs.pace.clone()));
            let addr = Hub {
                flags: flags.clone(),
            }
            .start();
            hubs.add(addr.clone(), flags.clone());
            FLAGS.with(|f| *f.borrow_mut() = Some(flags));
            REGISTRY.with(|r| r.borrow_mut().interest = hubs.interest.clone());
            *h = Some(addr);
        }
    });
    FLAGS.with(|f| {
        f.borrow()
            .clone()
            .expect("set together with the thread's hub just above")
    })
}

/// What every hub shares about pacing: the lag past which publishers
/// wait, and the signal that a thread caught up.
struct Pace {
    lag_limit_us: u64,
    longest: Duration,
    caught_up: tokio::sync::Notify,
}

/// One thread's hub, as the bus and publishers see it.
struct HubFlags {
    /// Set when the bus could not hand this hub an event.
    lost: AtomicBool,
    /// Events handed to the hub's mailbox, and taken from it.
    handed: AtomicU64,
    taken: AtomicU64,
    /// Deliveries the hub handed to its members and they have not handled.
    in_flight: AtomicU64,
    /// The thread's fan-out lag, in microseconds: while it has events to
    /// handle, how long the last one it handled had waited since this node
    /// received it; 0 when it has none.
    lag_us: AtomicU64,
    pace: Arc<Pace>,
}

impl HubFlags {
    fn new(pace: Arc<Pace>) -> HubFlags {
        HubFlags {
            lost: AtomicBool::new(false),
            handed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            lag_us: AtomicU64::new(0),
            pace,
        }
    }

    /// Whether events wait for this thread: in the hub's mailbox, or in its
    /// members'.
    fn busy(&self) -> bool {
        self.handed.load(Ordering::Acquire) != self.taken.load(Ordering::Acquire)
            || self.in_flight.load(Ordering::Acquire) > 0
    }

    /// The thread handled an event that had waited `lag` (or, with zero,
    /// took events off its books): its lag now, and the signal to waiting
    /// publishers when it falls to the limit.
    fn measured(&self, lag: Duration) {
        let lag_us = if self.busy() {
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let was = self.lag_us.swap(lag_us, Ordering::AcqRel);
        if was > self.pace.lag_limit_us && lag_us <= self.pace.lag_limit_us {
            self.pace.caught_up.notify_waiters();
        }
    }
}

/// One worker thread's hub.
struct Hub {
    flags: Arc<HubFlags>,
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(HUB_MAILBOX);
        // Repairs losses even when no further event arrives.
        ctx.run_interval(std::time::Duration::from_secs(1), |hub, _| {
            hub.repair_if_lost()
        });
    }
}

impl Hub {
    fn repair_if_lost(&self) {
        if !self.flags.lost.swap(false, Ordering::AcqRel) {
            return;
        }
        tracing::warn!("hub mailbox overflowed; resyncing its connections from the store");
        REGISTRY.with(|r| {
            let r = r.borrow();
            let mut seen = std::collections::HashSet::new();
            for (id, member) in r.topics.values().flatten() {
                if seen.insert(*id) {
                    let _ = member.resync.try_send(Resync);
                }
            }
        });
    }
}

impl Handler<Deliver> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Deliver, _: &mut Self::Context) {
        self.repair_if_lost();
        let mut handed = 0;
        REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            let Registry { topics, slow, .. } = &mut *r;
            let Some(members) = topics.get_mut(&msg.0.topic) else {
                return;
            };
            members.retain(|(id, member)| match member.deliver.try_send(msg.clone()) {
                Ok(()) => {
                    member.ledger.handed();
                    handed += 1;
                    true
                }
                Err(SendError::Full(_)) => {
                    // Once per connection: it stops receiving and is closed.
                    if !slow.contains(id) {
                        slow.push(*id);
                        member.slow.do_send(SlowConsumer);
                    }
                    false
                }
                Err(SendError::Closed(_)) => false,
            });
            if members.is_empty() {
                r.forget(&msg.0.topic);
            }
        });
        self.flags.in_flight.fetch_add(handed, Ordering::AcqRel);
        self.flags.taken.fetch_add(1, Ordering::AcqRel);
        if handed == 0 {
            self.flags.measured(msg.0.received.elapsed());
        }
    }
}

/// Asks the connections of some topics to re-read them from the store (the
/// head check found events that the bus did not bring).
#[derive(Message, Clone)]
#[rtype(result = "()")]
struct ResyncTopics(Arc<[Topic]>);

impl Handler<ResyncTopics> for Hub {
    type Result = ();

    fn handle(&mut self, msg: ResyncTopics, _: &mut Self::Context) {
        REGISTRY.with(|r| {
            let r = r.borrow();
            for topic in msg.0.iter() {
                for (_, member) in r.topics.get(topic).into_iter().flatten() {
                    let _ = member.resync.try_send(Resync);
                }
            }
        });
    }
}

/// How publishers keep pace with fan-out.
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// A publish waits while some thread's fan-out lags more than this.
    pub lag_limit: Duration,
    /// At most this long (zero: publishes never wait).
    pub longest: Duration,
}

/// Every worker's hub: where the bus hands this node's committed events.
pub struct Hubs {
    hubs: RwLock<Vec<(Addr<Hub>, Arc<HubFlags>)>>,
    /// The node's interest, when a cluster bus follows it.
    interest: Option<Arc<Interest>>,
    pace: Arc<Pace>,
}

impl Hubs {
    /// An empty set for a single node; hubs join as worker threads get
    /// their first connection.
    pub fn new(pacing: Pacing) -> Arc<Hubs> {
        Arc::new(Hubs::build(pacing, None))
    }

    /// An empty set whose registries report which topics have local
    /// subscribers to `interest` (a cluster bus receives only those).
    pub fn with_interest(pacing: Pacing, interest: Interest) -> Arc<Hubs> {
        Arc::new(Hubs::build(pacing, Some(Arc::new(interest))))
    }

    fn build(pacing: Pacing, interest: Option<Arc<Interest>>) -> Hubs {
        Hubs {
            hubs: RwLock::default(),
            interest,
            pace: Arc::new(Pace {
                lag_limit_us: u64::try_from(pacing.lag_limit.as_micros()).unwrap_or(u64::MAX),
                longest: pacing.longest,
                caught_up: tokio::sync::Notify::new(),
            }),
        }
    }

    fn add(&self, addr: Addr<Hub>, flags: Arc<HubFlags>) {
        self.hubs.write().push((addr, flags));
    }

    /// Connections read these heads from the store as they subscribed.
    pub fn saw_heads(&self, heads: &[(Topic, u64)]) {
        if let Some(interest) = &self.interest {
            for (topic, head) in heads {
                interest.seen(topic, *head);
            }
        }
    }

    /// Asks the connections of `topics`, on every hub, to re-read them from
    /// the store.
    pub fn resync_topics(&self, topics: Vec<Topic>) {
        let topics: Arc<[Topic]> = topics.into();
        for (addr, flags) in self.hubs.read().iter() {
            if addr.try_send(ResyncTopics(topics.clone())).is_err() {
                flags.lost.store(true, Ordering::Release);
            }
        }
    }

    /// Asks every connection on every hub to resync from the store (after a
    /// bus outage).
    pub fn resync_all(&self) {
        for (_, flags) in self.hubs.read().iter() {
            flags.lost.store(true, Ordering::Release);
        }
    }
}

impl Hubs {
    /// Hands one committed event, encoded once, to every worker's hub.
    pub fn deliver(&self, event: Arc<Encoded>) {
        let _span = crate::telemetry::handing_over(&event).entered();
        for (addr, flags) in self.hubs.read().iter() {
            flags.handed.fetch_add(1, Ordering::AcqRel);
            if addr.try_send(Deliver(event.clone())).is_err() {
                flags.handed.fetch_sub(1, Ordering::AcqRel);
                crate::telemetry::metrics::hub_overflow();
                flags.lost.store(true, Ordering::Release);
            }
        }
    }
}

impl Hubs {
    /// The largest fan-out lag of any thread (zero for a thread with nothing
    /// left to handle).
    #[cfg(test)]
    pub fn fanout_lag(&self) -> Duration {
        let lag_us = self
            .hubs
            .read()
            .iter()
            .map(|(_, flags)| flags.lag_us.load(Ordering::Acquire))
            .max()
            .unwrap_or(0);
        Duration::from_micros(lag_us)
    }

    fn behind(&self) -> bool {
        self.hubs
            .read()
            .iter()
            .any(|(_, flags)| flags.lag_us.load(Ordering::Acquire) > self.pace.lag_limit_us)
    }

    /// Waits while some thread's fan-out lags more than the limit behind
    /// this node's receipt of events, at most the longest wait: publishers
    /// slow to the pace at which the node delivers, instead of outrunning
    /// it until every connection's queue overflows. Woken by the thread that
    /// catches up, never by polling. Returns how long it waited.
    pub async fn pace(&self) -> Duration {
        if self.pace.longest.is_zero() || !self.behind() {
            return Duration::ZERO;
        }
        let started = tokio::time::Instant::now();
        let deadline = started + self.pace.longest;
        loop {
            let caught_up = self.pace.caught_up.notified();
            let mut caught_up = std::pin::pin!(caught_up);
            // Registered before the check: a thread that catches up between
            // the check and the wait still wakes this one.
            caught_up.as_mut().enable();
            if !self.behind() {
                break;
            }
            if tokio::time::timeout_at(deadline, caught_up).await.is_err() {
                break;
            }
        }
        started.elapsed()
    }
}

/// Asks one hub which topics have connections on its thread, and how many.
#[derive(Message)]
#[rtype(result = "Vec<(Topic, usize)>")]
struct Census;

impl Handler<Census> for Hub {
    type Result = MessageResult<Census>;

    fn handle(&mut self, _: Census, _: &mut Self::Context) -> Self::Result {
        MessageResult(REGISTRY.with(|r| {
            r.borrow()
                .topics
                .iter()
                .map(|(topic, members)| (topic.clone(), members.len()))
                .collect()
        }))
    }
}

impl Hubs {
    /// Every topic with connections (or pending long polls) on this node,
    /// with how many; a hub that does not answer within `timeout` is left out.
    pub async fn census(&self, timeout: std::time::Duration) -> HashMap<Topic, usize> {
        let addrs: Vec<Addr<Hub>> = self.hubs.read().iter().map(|(a, _)| a.clone()).collect();
        let mut all: HashMap<Topic, usize> = HashMap::new();
        for addr in addrs {
            if let Ok(Ok(topics)) = tokio::time::timeout(timeout, addr.send(Census)).await {
                for (topic, count) in topics {
                    *all.entry(topic).or_default() += count;
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn pacing(lag_ms: u64, longest_ms: u64) -> Pacing {
        Pacing {
            lag_limit: Duration::from_millis(lag_ms),
            longest: Duration::from_millis(longest_ms),
        }
    }

    /// An event this node received `ago`, committed by a node whose wall
    /// clock reads `time_ms`.
    fn event(ago: Duration, time_ms: i64) -> Encoded {
        let mut event = Encoded::new(
            Topic::parse("pace").expect("a valid topic"),
            1,
            time_ms,
            b"{}".to_vec(),
        );
        event.received = Instant::now()
            .checked_sub(ago)
            .expect("the monotonic clock started long enough ago");
        event
    }

    /// Books `n` deliveries to `ledger`, as the hub does when it hands them.
    fn hand(ledger: &Ledger, n: u64) {
        for _ in 0..n {
            ledger.handed();
        }
        ledger.0.flags.in_flight.fetch_add(n, Ordering::AcqRel);
    }

    #[actix_rt::test]
    async fn a_publish_waits_while_a_thread_lags_and_wakes_as_it_catches_up() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let ledger = Ledger::new(&hubs);
        hand(&ledger, 2);
        ledger.handled(&event(Duration::from_millis(200), crate::event::now_ms()));
        assert_eq!(hubs.fanout_lag(), Duration::from_millis(200));
        let hubs_for_publisher = hubs.clone();
        let publisher = actix_rt::spawn(async move { hubs_for_publisher.pace().await });
        // Let the publisher start waiting.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!publisher.is_finished(), "the thread is behind");
        let caught_up = Instant::now();
        ledger.handled(&event(Duration::from_millis(1), crate::event::now_ms()));
        assert_eq!(hubs.fanout_lag(), Duration::ZERO, "nothing left to handle");
        let waited = tokio::time::timeout(Duration::from_secs(5), publisher)
            .await
            .expect("woken as the thread catches up, not at the longest wait")
            .expect("the publisher task runs to its end");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(caught_up.elapsed() < Duration::from_secs(1));
    }

    #[actix_rt::test]
    async fn another_nodes_clock_and_a_slow_commit_are_not_fan_out_lag() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let ledger = Ledger::new(&hubs);
        hand(&ledger, 2);
        // Committed "a minute ago" by another node's clock (or after a
        // minute-long commit), received just now.
        let minute_ago = crate::event::now_ms() - 60_000;
        ledger.handled(&event(Duration::from_millis(2), minute_ago));
        assert!(hubs.fanout_lag() < Duration::from_millis(50));
        let waited = hubs.pace().await;
        assert_eq!(waited, Duration::ZERO);
    }

    #[actix_rt::test]
    async fn a_member_that_ends_with_events_in_its_mailbox_takes_them_off_the_books() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let ledger = Ledger::new(&hubs);
        let other = Ledger::new(&hubs);
        hand(&ledger, 1);
        hand(&other, 3);
        ledger.handled(&event(Duration::from_millis(300), 0));
        assert_eq!(
            hubs.fanout_lag(),
            Duration::from_millis(300),
            "3 still wait"
        );
        drop(other);
        assert_eq!(hubs.fanout_lag(), Duration::ZERO);
        assert_eq!(ledger.0.flags.in_flight.load(Ordering::Acquire), 0);
    }

    #[actix_rt::test]
    async fn without_a_longest_wait_publishes_never_wait() {
        let hubs = Hubs::new(pacing(1, 0));
        let ledger = Ledger::new(&hubs);
        hand(&ledger, 2);
        ledger.handled(&event(Duration::from_secs(10), 0));
        assert!(hubs.fanout_lag() > Duration::from_secs(1));
        assert_eq!(hubs.pace().await, Duration::ZERO);
    }
}
