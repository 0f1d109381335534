//! The hub: which local connections want which topic, one registry per
//! worker thread.
//!
//! Each thread that holds connections (the stream threads of
//! `http::front::streams`, and the HTTP workers for long polls and for
//! streams on reused keep-alive connections) has its own `Hub` actor and its
//! own topic map, so fan-out runs on every core without a shared lock.
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

pub mod interest;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// Removes connection `id` from `topics` on this thread's hub.
pub fn unregister(id: u64, topics: &[Topic]) {
    // A thread that is stopping drops its sessions while it destroys its
    // thread-locals: the registry may be gone already, and with it the entries.
    let _ = REGISTRY.try_with(|r| {
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

fn ensure_hub(hubs: &Hubs) {
    HUB.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_none() {
            let flags = Arc::new(HubFlags::default());
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
}

#[derive(Default)]
struct HubFlags {
    /// Set when the bus could not hand this hub an event.
    lost: AtomicBool,
    /// How long, in milliseconds, the last event a connection of this
    /// thread handled had waited since its commit, and when that was.
    lag_ms: AtomicU64,
    lag_at_ms: AtomicU64,
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
        REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            let Registry { topics, slow, .. } = &mut *r;
            let Some(members) = topics.get_mut(&msg.0.topic) else {
                return;
            };
            members.retain(|(id, member)| match member.deliver.try_send(msg.clone()) {
                Ok(()) => true,
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

/// Every worker's hub: where the bus hands this node's committed events.
#[derive(Default)]
pub struct Hubs {
    hubs: RwLock<Vec<(Addr<Hub>, Arc<HubFlags>)>>,
    /// The node's interest, when a cluster bus follows it.
    interest: Option<Arc<Interest>>,
}

impl Hubs {
    /// An empty set for a single node; hubs join as worker threads get
    /// their first connection.
    pub fn new() -> Arc<Hubs> {
        Arc::new(Hubs::default())
    }

    /// An empty set whose registries report which topics have local
    /// subscribers to `interest` (a cluster bus receives only those).
    pub fn with_interest(interest: Interest) -> Arc<Hubs> {
        Arc::new(Hubs {
            hubs: RwLock::default(),
            interest: Some(Arc::new(interest)),
        })
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
            if addr.try_send(Deliver(event.clone())).is_err() {
                crate::telemetry::metrics::hub_overflow();
                flags.lost.store(true, Ordering::Release);
            }
        }
    }
}

/// How recent a thread's lag measure must be to count, in milliseconds: a
/// thread working through a backlog measures one with every event.
const LAG_FRESH_MS: u64 = 20;

/// A connection of this thread handled `event` now: the thread's fan-out
/// lag is how long the event waited since its commit.
pub fn handled(event: &Encoded) {
    let _ = FLAGS.try_with(|f| {
        if let Some(flags) = f.borrow().as_ref() {
            let now = crate::event::now_ms();
            let lag = u64::try_from(now.saturating_sub(event.time_ms)).unwrap_or(0);
            flags.lag_ms.store(lag, Ordering::Relaxed);
            flags
                .lag_at_ms
                .store(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
        }
    });
}

impl Hubs {
    /// The largest fan-out lag of any thread that is still handling events
    /// (it measured one in the last [`LAG_FRESH_MS`]; a thread that has
    /// caught up, and so handles nothing more, has no lag).
    pub fn fanout_lag(&self) -> std::time::Duration {
        let now = u64::try_from(crate::event::now_ms()).unwrap_or(0);
        let lag = self
            .hubs
            .read()
            .iter()
            .filter(|(_, flags)| {
                now.saturating_sub(flags.lag_at_ms.load(Ordering::Relaxed)) < LAG_FRESH_MS
            })
            .map(|(_, flags)| flags.lag_ms.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        std::time::Duration::from_millis(lag)
    }

    /// Waits while fan-out lags more than `limit` behind commits, at most
    /// `longest`: publishers slow to the pace at which the node delivers,
    /// instead of outrunning it until every connection's queue overflows.
    /// Returns how long it waited.
    pub async fn until_caught_up(
        &self,
        limit: std::time::Duration,
        longest: std::time::Duration,
    ) -> std::time::Duration {
        let started = tokio::time::Instant::now();
        while self.fanout_lag() > limit && started.elapsed() < longest {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
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
