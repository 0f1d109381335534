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
//! Each hub also keeps books of the events it handed to its members
//! ([`Books`]), from which publishers are paced ([`Hubs::pace`]): an event
//! stays on the books until enough of its members have written it to their
//! sockets (or dropped it), and a thread is behind while its oldest event
//! on the books was received longer ago than the limit, on this node's
//! monotonic clock. "Enough": all but fewer than [`STRAGGLERS`] members, or
//! a quarter of those it was handed to, so that one slow client (whose own
//! queue bounds it) never holds every publisher back, while a node that
//! cannot write to most of its clients in time does.

pub mod interest;

use std::cell::RefCell;
use std::collections::HashMap;
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

/// Members that may still hold an event (not yet written to their socket)
/// without keeping it on its thread's books, with fewer than a quarter of
/// those it was handed to: slow clients, not a slow node.
pub const STRAGGLERS: u32 = 8;

/// A committed event for a connection, with the connection's hold on it in
/// its thread's books: the connection keeps the ticket beside the frame
/// until its writer takes the frame for the socket, or drops it when it
/// sends nothing (a message never handled drops it too).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver {
    pub event: Arc<Encoded>,
    pub ticket: Ticket,
}

/// A committed event for a thread's hub, from the bus.
#[derive(Message)]
#[rtype(result = "()")]
struct Committed(Arc<Encoded>);

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
}

/// One member's hold on one event of its thread's books: dropped once the
/// member wrote the event to its socket, or will not. Events handed to
/// fewer than [`STRAGGLERS`] members are not booked (their tickets hold
/// nothing).
pub struct Ticket(Option<(Arc<HubFlags>, u64)>);

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some((flags, number)) = &self.0 {
            flags.done(*number);
        }
    }
}

/// A thread's books: the events its hub handed to members, oldest first,
/// from the oldest still held by enough of them.
struct Books {
    /// The number of `entries[0]`.
    first: u64,
    entries: std::collections::VecDeque<Entry>,
}

/// One event on the books.
struct Entry {
    received: std::time::Instant,
    handed: u32,
    left: u32,
}

impl Entry {
    /// Whether enough members still hold the event to keep it on the books.
    fn held(&self) -> bool {
        self.left >= STRAGGLERS && u64::from(self.left) * 4 >= u64::from(self.handed)
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
    lag_limit: Duration,
    longest: Duration,
    caught_up: tokio::sync::Notify,
    /// Where the books' clock starts.
    origin: std::time::Instant,
}

impl Pace {
    /// `at` in microseconds after the origin (0 before it).
    fn since_origin(&self, at: std::time::Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_micros()).unwrap_or(NONE - 1)
    }
}

/// One thread's hub, as the bus and publishers see it.
struct HubFlags {
    /// Set when the bus could not hand this hub an event (its mailbox was
    /// full).
    lost: AtomicBool,
    /// Set when the bus asks every connection to resync (after it missed
    /// events, or another node asked).
    resync: AtomicBool,
    /// The events on the books.
    books: parking_lot::Mutex<Books>,
    /// When the oldest event on the books was received, in microseconds
    /// after [`Pace::origin`]; [`NONE`] when the books are empty.
    oldest_us: AtomicU64,
    pace: Arc<Pace>,
}

/// `oldest_us` of empty books.
const NONE: u64 = u64::MAX;

impl HubFlags {
    fn new(pace: Arc<Pace>) -> HubFlags {
        HubFlags {
            lost: AtomicBool::new(false),
            resync: AtomicBool::new(false),
            books: parking_lot::Mutex::new(Books {
                first: 0,
                entries: std::collections::VecDeque::new(),
            }),
            oldest_us: AtomicU64::new(NONE),
            pace,
        }
    }

    /// Books an event about to be handed to `members` members, received at
    /// `received`: its number, for the members' tickets; `None` for fewer
    /// members than could ever hold it on the books.
    fn open(&self, received: std::time::Instant, members: usize) -> Option<u64> {
        let members = u32::try_from(members).unwrap_or(u32::MAX);
        if members < STRAGGLERS {
            return None;
        }
        let mut books = self.books.lock();
        let number = books.first + books.entries.len() as u64;
        books.entries.push_back(Entry {
            received,
            handed: members,
            left: members,
        });
        if books.entries.len() == 1 {
            self.oldest_us
                .store(self.pace.since_origin(received), Ordering::Release);
        }
        Some(number)
    }

    /// A member's hold on event `number` (nothing for an unbooked event).
    fn ticket(self: &Arc<Self>, number: Option<u64>) -> Ticket {
        Ticket(number.map(|number| (self.clone(), number)))
    }

    /// A member no longer holds event `number`: the books move on past
    /// every event no longer held, and publishers waiting for this thread
    /// are woken when it is no longer behind.
    fn done(&self, number: u64) {
        let mut books = self.books.lock();
        let Some(index) = number.checked_sub(books.first) else {
            return;
        };
        let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| books.entries.get_mut(i))
        else {
            return;
        };
        entry.left = entry.left.saturating_sub(1);
        if index != 0 || entry.held() {
            return;
        }
        let was_behind = self.behind();
        while books.entries.front().is_some_and(|e| !e.held()) {
            books.entries.pop_front();
            books.first += 1;
        }
        if books.entries.is_empty() && books.entries.capacity() > 64 {
            books.entries = std::collections::VecDeque::new();
        }
        let oldest = books
            .entries
            .front()
            .map_or(NONE, |e| self.pace.since_origin(e.received));
        self.oldest_us.store(oldest, Ordering::Release);
        drop(books);
        if was_behind && !self.behind() {
            self.pace.caught_up.notify_waiters();
        }
    }

    /// How long ago the oldest event on the books was received.
    fn lag(&self) -> Duration {
        match self.oldest_us.load(Ordering::Acquire) {
            NONE => Duration::ZERO,
            oldest => Duration::from_micros(
                self.pace
                    .since_origin(std::time::Instant::now())
                    .saturating_sub(oldest),
            ),
        }
    }

    /// Whether publishers should wait for this thread.
    fn behind(&self) -> bool {
        self.lag() > self.pace.lag_limit
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
        let lost = self.flags.lost.swap(false, Ordering::AcqRel);
        let asked = self.flags.resync.swap(false, Ordering::AcqRel);
        if lost {
            tracing::warn!("hub mailbox overflowed; resyncing its connections from the store");
        } else if asked {
            // The bus logged why.
            tracing::debug!("resyncing this hub's connections from the store");
        } else {
            return;
        }
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

impl Handler<Committed> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        self.repair_if_lost();
        REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            let Registry { topics, slow, .. } = &mut *r;
            let Some(members) = topics.get_mut(&msg.0.topic) else {
                return;
            };
            let number = self.flags.open(msg.0.received, members.len());
            members.retain(|(id, member)| {
                let deliver = Deliver {
                    event: msg.0.clone(),
                    ticket: self.flags.ticket(number),
                };
                // Refused, the message and its ticket are dropped: not held.
                let Err(e) = member.deliver.try_send(deliver) else {
                    return true;
                };
                if let SendError::Full(_) = e
                    && !slow.contains(id)
                {
                    // Once per connection: it stops receiving and is closed.
                    slow.push(*id);
                    member.slow.do_send(SlowConsumer);
                }
                false
            });
            if members.is_empty() {
                r.forget(&msg.0.topic);
            }
        });
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
                lag_limit: pacing.lag_limit,
                longest: pacing.longest,
                caught_up: tokio::sync::Notify::new(),
                // Before any event this node will receive (a minute
                // earlier still, for receipts a test dates back).
                origin: std::time::Instant::now()
                    .checked_sub(Duration::from_secs(60))
                    .unwrap_or_else(std::time::Instant::now),
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
            flags.resync.store(true, Ordering::Release);
        }
    }
}

impl Hubs {
    /// Hands one committed event, encoded once, to every worker's hub.
    pub fn deliver(&self, event: Arc<Encoded>) {
        let _span = crate::telemetry::handing_over(&event).entered();
        for (addr, flags) in self.hubs.read().iter() {
            if addr.try_send(Committed(event.clone())).is_err() {
                crate::telemetry::metrics::hub_overflow();
                flags.lost.store(true, Ordering::Release);
            }
        }
    }
}

impl Hubs {
    /// The largest fan-out lag of any thread: how long ago the oldest event
    /// on its books was received (zero for empty books).
    #[cfg(test)]
    pub fn fanout_lag(&self) -> Duration {
        self.hubs
            .read()
            .iter()
            .map(|(_, flags)| flags.lag())
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn behind(&self) -> bool {
        self.hubs.read().iter().any(|(_, flags)| flags.behind())
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

    /// This thread's books.
    fn flags(hubs: &Hubs) -> Arc<HubFlags> {
        ensure_hub(hubs)
    }

    /// An event this node received `ago`, handed to `members` members, as
    /// the hub books it: one ticket per member.
    fn hand(flags: &Arc<HubFlags>, ago: Duration, members: usize) -> Vec<Ticket> {
        let received = Instant::now()
            .checked_sub(ago)
            .expect("the monotonic clock started long enough ago");
        let number = flags.open(received, members);
        (0..members).map(|_| flags.ticket(number)).collect()
    }

    #[actix_rt::test]
    async fn a_publish_waits_while_most_members_hold_an_old_event_and_wakes_as_they_write_it() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let flags = flags(&hubs);
        let mut old = hand(&flags, Duration::from_millis(200), 100);
        let fresh = hand(&flags, Duration::from_millis(1), 100);
        assert!(hubs.fanout_lag() >= Duration::from_millis(200));
        let hubs_for_publisher = hubs.clone();
        let publisher = actix_rt::spawn(async move { hubs_for_publisher.pace().await });
        // Let the publisher start waiting.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!publisher.is_finished(), "the thread is behind");
        // Three quarters written: still a quarter of the members hold it.
        old.truncate(25);
        assert!(hubs.fanout_lag() >= Duration::from_millis(200));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !publisher.is_finished(),
            "a quarter still hold the old event"
        );
        // One more written: fewer than a quarter hold it; the fresh one is
        // the oldest on the books now.
        old.truncate(24);
        let caught_up = Instant::now();
        let waited = tokio::time::timeout(Duration::from_secs(5), publisher)
            .await
            .expect("woken as the thread catches up, not at the longest wait")
            .expect("the publisher task runs to its end");
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        assert!(caught_up.elapsed() < Duration::from_secs(1));
        assert!(hubs.fanout_lag() < Duration::from_millis(50));
        drop(fresh);
        assert_eq!(
            hubs.fanout_lag(),
            Duration::ZERO,
            "nothing left on the books"
        );
        drop(old);
    }

    #[actix_rt::test]
    async fn a_few_slow_members_never_hold_publishers_back() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let flags = flags(&hubs);
        // An event to 5 members, one of which never writes it.
        let mut five = hand(&flags, Duration::from_secs(10), 5);
        five.truncate(1);
        // An event to 1,000 members, 7 of which never write it.
        let mut many = hand(&flags, Duration::from_secs(10), 1_000);
        many.truncate(7);
        assert_eq!(hubs.fanout_lag(), Duration::ZERO);
        assert_eq!(hubs.pace().await, Duration::ZERO);
        drop((five, many));
    }

    #[actix_rt::test]
    async fn another_nodes_clock_and_a_slow_commit_are_not_fan_out_lag() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let flags = flags(&hubs);
        // Committed "a minute ago" by another node's clock (or after a
        // minute-long commit), received just now: the books use the receipt.
        let held = hand(&flags, Duration::from_millis(2), 100);
        assert!(hubs.fanout_lag() < Duration::from_millis(50));
        assert_eq!(hubs.pace().await, Duration::ZERO);
        drop(held);
    }

    #[actix_rt::test]
    async fn a_member_that_ends_with_events_in_its_mailbox_gives_their_tickets_back() {
        let hubs = Hubs::new(pacing(50, 5_000));
        let flags = flags(&hubs);
        let event = Arc::new(Encoded::new(
            Topic::parse("pace").expect("a valid topic"),
            1,
            0,
            b"{}".to_vec(),
        ));
        // Ten deliveries in a mailbox, as the hub hands them.
        let mailbox: Vec<Deliver> = hand(&flags, Duration::from_millis(300), 10)
            .into_iter()
            .map(|ticket| Deliver {
                event: event.clone(),
                ticket,
            })
            .collect();
        assert!(hubs.fanout_lag() >= Duration::from_millis(300));
        // The member ends without handling them.
        drop(mailbox);
        assert_eq!(hubs.fanout_lag(), Duration::ZERO);
    }

    #[actix_rt::test]
    async fn without_a_longest_wait_publishes_never_wait() {
        let hubs = Hubs::new(pacing(1, 0));
        let flags = flags(&hubs);
        let held = hand(&flags, Duration::from_secs(10), 100);
        assert!(hubs.fanout_lag() > Duration::from_secs(1));
        assert_eq!(hubs.pace().await, Duration::ZERO);
        drop(held);
    }
}
