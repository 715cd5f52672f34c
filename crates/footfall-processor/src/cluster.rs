//! Processors of a cluster sharing the log's partitions.
//!
//! Ownership is a lease per partition in the shared database (not a Kafka consumer
//! group): the database already holds each partition's checkpoint, and a checkpoint
//! commits only while its writer holds the partition's lease, so ownership and the
//! results it guards are decided in one place, by one clock, in one transaction. A
//! consumer group would decide ownership in the broker and leave a window in which two
//! processors both believe they own a partition and both write its rollups.
//!
//! Each processor heartbeats, renews its leases, and aims at `ceil(partitions / live
//! processors)` partitions: it takes free (or expired) partitions while it has fewer,
//! and hands back its highest-numbered ones, after a final checkpoint, while it has
//! more. A processor killed with -9 stops renewing; its leases expire after the lease
//! time and the others take its partitions, resuming from their last checkpoints.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use footfall_store::leases::Leases;

use crate::{ProcessorStats, Progress};

/// The figures of the partition processors a node runs, for its /metrics: each
/// partition's latest processor, running or not (a partition handed back keeps its
/// events in the total; taken again, the new processor's count adds on).
#[derive(Default)]
pub struct Board {
    slots: Mutex<BTreeMap<u32, Slot>>,
}

struct Slot {
    /// The statistics of one-partition processors (partition 0 is `partition`).
    stats: Arc<ProcessorStats>,
    /// Set when the processor is told to stop (handed back, lease lost, node stopping).
    stop: Arc<AtomicBool>,
    /// Events of the partition's earlier processors on this node.
    earlier: u64,
}

impl Board {
    /// Follows the processor just started for `partition` (its statistics and its stop
    /// flag), in place of any earlier one.
    pub fn track(&self, partition: u32, stats: Arc<ProcessorStats>, stop: Arc<AtomicBool>) {
        let mut slots = self.slots.lock().unwrap();
        let earlier = slots
            .get(&partition)
            .map(|s| s.earlier + s.stats.events())
            .unwrap_or(0);
        slots.insert(
            partition,
            Slot {
                stats,
                stop,
                earlier,
            },
        );
    }

    fn sum_running(&self, f: impl Fn(&ProcessorStats) -> u64) -> u64 {
        let slots = self.slots.lock().unwrap();
        slots
            .values()
            .filter(|s| !s.stop.load(Ordering::SeqCst))
            .map(|s| f(&s.stats))
            .sum()
    }
}

impl Progress for Board {
    fn events(&self) -> u64 {
        let slots = self.slots.lock().unwrap();
        slots.values().map(|s| s.earlier + s.stats.events()).sum()
    }
    fn open_visits(&self) -> u64 {
        self.sum_running(|s| s.open_visits())
    }
    fn checkpoint_bytes(&self) -> u64 {
        self.sum_running(|s| s.checkpoint_bytes())
    }
    fn last_received_at(&self) -> i64 {
        let slots = self.slots.lock().unwrap();
        slots
            .values()
            .map(|s| s.stats.last_received_at())
            .max()
            .unwrap_or(0)
    }
    fn positions(&self) -> Vec<(u32, footfall_log::Offset)> {
        let slots = self.slots.lock().unwrap();
        slots
            .iter()
            .filter(|(_, s)| !s.stop.load(Ordering::SeqCst))
            .map(|(p, s)| (*p, s.stats.offsets[0].load(Ordering::SeqCst)))
            .collect()
    }
}

/// What one processor should change this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub acquire: Vec<u32>,
    pub release: Vec<u32>,
}

/// The balancing rule (see the module's documentation).
pub fn plan(partitions: u32, me: &str, live: usize, holders: &[(u32, String)]) -> Plan {
    let live = live.max(1) as u32;
    let share = partitions.div_ceil(live) as usize;
    let held: BTreeMap<u32, &str> = holders
        .iter()
        .filter(|(p, _)| *p < partitions)
        .map(|(p, o)| (*p, o.as_str()))
        .collect();
    let mine: Vec<u32> = held
        .iter()
        .filter(|(_, o)| **o == me)
        .map(|(p, _)| *p)
        .collect();
    let mut out = Plan::default();
    if mine.len() > share {
        out.release = mine[share..].to_vec();
    } else {
        out.acquire = (0..partitions)
            .filter(|p| !held.contains_key(p))
            .take(share - mine.len())
            .collect();
    }
    out
}

/// How often a processor below its share looks for partitions handed back.
pub const SHORT_ROUND: Duration = Duration::from_millis(200);

/// A partition's processor, running on its own thread.
pub struct Running {
    pub stop: Arc<AtomicBool>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Runs the ownership loop of one processor until `stop`: every `ttl / 4`, heartbeat,
/// renew, and follow [`plan`]; while it holds fewer than its share and a partition is
/// coming free, every [`SHORT_ROUND`] instead, so that a partition another processor
/// hands back is taken at once rather than up to a round later (its events wait
/// meanwhile). `owned(n)` is told how many partitions run here after each round.
/// `start(partition)` starts that partition's processor
/// (which must stop at its stop flag with a checkpoint); a processor that ends on its
/// own (an error) has its lease released so that the partition is taken again and
/// resumes from its checkpoint. On `stop`, every partition is checkpointed and
/// released, and the heartbeat withdrawn.
pub fn run(
    leases: Arc<dyn Leases>,
    partitions: u32,
    me: String,
    ttl: Duration,
    stop: Arc<AtomicBool>,
    start: impl Fn(u32) -> std::io::Result<Running>,
    owned: impl Fn(usize),
) {
    let mut running: BTreeMap<u32, Running> = BTreeMap::new();
    let full_round = ttl / 4;
    let give_back = |p: u32, r: Running| {
        r.stop.store(true, Ordering::SeqCst);
        let _ = r.thread.join();
        if let Err(e) = leases.release(p, &me) {
            tracing::warn!(partition = p, error = %e, "releasing a partition failed; it expires instead");
        }
    };
    while !stop.load(Ordering::SeqCst) {
        // Processors that ended on their own.
        let ended: Vec<u32> = running
            .iter()
            .filter(|(_, r)| r.thread.is_finished())
            .map(|(p, _)| *p)
            .collect();
        for p in ended {
            tracing::warn!(partition = p, "partition processor ended; handing it back");
            give_back(p, running.remove(&p).expect("listed above"));
        }
        let mut short = false;
        let round_result = (|| -> Result<(), String> {
            let live = leases.heartbeat(&me, ttl)?;
            // Renew what runs here; a lease lost (expired while this node stalled)
            // stops its processor, whose checkpoint could not commit anyway.
            let mine: Vec<u32> = running.keys().copied().collect();
            for p in mine {
                if !leases.acquire(p, &me, ttl)? {
                    tracing::warn!(partition = p, "lease lost; stopping its processor");
                    if let Some(r) = running.remove(&p) {
                        r.stop.store(true, Ordering::SeqCst);
                        let _ = r.thread.join();
                    }
                }
            }
            let holders = leases.holders()?;
            let plan = plan(partitions, &me, live, &holders);
            for p in plan.release {
                if let Some(r) = running.remove(&p) {
                    tracing::info!(
                        partition = p,
                        live,
                        "handing a partition to another processor"
                    );
                    give_back(p, r);
                } else {
                    leases.release(p, &me)?;
                }
            }
            for p in plan.acquire {
                if leases.acquire(p, &me, ttl)? {
                    match start(p) {
                        Ok(r) => {
                            tracing::info!(partition = p, live, "partition taken");
                            running.insert(p, r);
                        }
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "starting a partition processor failed");
                            leases.release(p, &me)?;
                        }
                    }
                }
            }
            // Short of its share while another holds more than its own (a hand-back is
            // coming) or a partition is free: look again soon. A spare processor (more
            // processors than partitions) is short too, but nothing is coming its way.
            let share = partitions.div_ceil(live.max(1) as u32) as usize;
            let mut held: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, owner) in &holders {
                *held.entry(owner.as_str()).or_default() += 1;
            }
            short = running.len() < share
                && (holders.len() < partitions as usize || held.values().any(|n| *n > share));
            Ok(())
        })();
        if let Err(e) = round_result {
            tracing::warn!(error = %e, "partition ownership round failed; retrying");
        }
        owned(running.len());
        let round = if short {
            full_round.min(SHORT_ROUND)
        } else {
            full_round
        };
        let mut slept = Duration::ZERO;
        while slept < round && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
            slept += Duration::from_millis(50);
        }
    }
    for (p, r) in std::mem::take(&mut running) {
        give_back(p, r);
    }
    owned(0);
    // Counted as alive no longer: the others take its share now, not after the ttl.
    if let Err(e) = leases.leave(&me) {
        tracing::warn!(error = %e, "forgetting this processor's heartbeat failed; it expires instead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Leases in memory, for the rule's tests.
    #[derive(Default)]
    struct Memory {
        leases: Mutex<BTreeMap<u32, (String, Instant)>>,
        alive: Mutex<BTreeMap<String, Instant>>,
    }

    impl Leases for Memory {
        fn heartbeat(&self, owner: &str, ttl: Duration) -> Result<usize, String> {
            let mut a = self.alive.lock().unwrap();
            let now = Instant::now();
            a.insert(owner.into(), now + ttl);
            Ok(a.values().filter(|t| **t > now).count())
        }
        fn leave(&self, owner: &str) -> Result<(), String> {
            self.alive.lock().unwrap().remove(owner);
            Ok(())
        }
        fn holders(&self) -> Result<Vec<(u32, String)>, String> {
            let now = Instant::now();
            Ok(self
                .leases
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, (_, t))| *t > now)
                .map(|(p, (o, _))| (*p, o.clone()))
                .collect())
        }
        fn acquire(&self, p: u32, owner: &str, ttl: Duration) -> Result<bool, String> {
            let mut l = self.leases.lock().unwrap();
            let now = Instant::now();
            match l.get(&p) {
                Some((o, t)) if o != owner && *t > now => Ok(false),
                _ => {
                    l.insert(p, (owner.into(), now + ttl));
                    Ok(true)
                }
            }
        }
        fn release(&self, p: u32, owner: &str) -> Result<(), String> {
            let mut l = self.leases.lock().unwrap();
            if l.get(&p).is_some_and(|(o, _)| o == owner) {
                l.remove(&p);
            }
            Ok(())
        }
    }

    #[test]
    fn memory_leases_keep_the_contract() {
        footfall_store::leases::contract::run(&Memory::default());
    }

    fn h(pairs: &[(u32, &str)]) -> Vec<(u32, String)> {
        pairs.iter().map(|(p, o)| (*p, o.to_string())).collect()
    }

    #[test]
    fn the_rule_balances_and_never_takes_a_held_partition() {
        // Alone: everything.
        assert_eq!(plan(4, "a", 1, &[]).acquire, vec![0, 1, 2, 3]);
        // A second processor arrives: the first hands back its highest two.
        let all_a = h(&[(0, "a"), (1, "a"), (2, "a"), (3, "a")]);
        assert_eq!(plan(4, "a", 2, &all_a).release, vec![2, 3]);
        assert_eq!(plan(4, "b", 2, &all_a), Plan::default(), "b waits");
        let half = h(&[(0, "a"), (1, "a")]);
        assert_eq!(plan(4, "b", 2, &half).acquire, vec![2, 3]);
        // Uneven: 3 partitions, 2 processors — 2 and 1.
        assert_eq!(plan(3, "b", 2, &h(&[(0, "a"), (1, "a")])).acquire, vec![2]);
        // More processors than partitions: the spare ones own nothing.
        assert_eq!(plan(2, "c", 3, &h(&[(0, "a"), (1, "b")])), Plan::default());
    }

    /// Simulated processors joining and dying: rounds until stable, then every
    /// partition has exactly one owner and the shares differ by at most one.
    #[test]
    fn rounds_converge_to_one_owner_per_partition() {
        let leases = Memory::default();
        let ttl = Duration::from_millis(300);
        let step = |nodes: &[&str]| {
            for _ in 0..6 {
                for n in nodes {
                    let live = leases.heartbeat(n, ttl).unwrap();
                    let mine: Vec<u32> = leases
                        .holders()
                        .unwrap()
                        .into_iter()
                        .filter(|(_, o)| o == n)
                        .map(|(p, _)| p)
                        .collect();
                    for p in mine {
                        leases.acquire(p, n, ttl).unwrap();
                    }
                    let pl = plan(8, n, live, &leases.holders().unwrap());
                    for p in pl.release {
                        leases.release(p, n).unwrap();
                    }
                    for p in pl.acquire {
                        leases.acquire(p, n, ttl).unwrap();
                    }
                }
            }
            let holders = leases.holders().unwrap();
            assert_eq!(holders.len(), 8, "every partition owned: {holders:?}");
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for (_, o) in holders {
                *counts.entry(o).or_default() += 1;
            }
            let (lo, hi) = (
                counts.values().min().copied().unwrap(),
                counts.values().max().copied().unwrap(),
            );
            assert!(hi - lo <= 1 || nodes.len() > 8, "balanced: {counts:?}");
            counts
        };
        assert_eq!(step(&["a"]).len(), 1);
        assert_eq!(step(&["a", "b"]).len(), 2);
        assert_eq!(step(&["a", "b", "c"]).len(), 3);
        // c dies: after its leases expire, a and b own everything again.
        std::thread::sleep(ttl + Duration::from_millis(100));
        let c = step(&["a", "b"]);
        assert_eq!(c.len(), 2);
        assert_eq!(c.values().sum::<usize>(), 8);
    }

    /// A partition handed back is taken by the processor short of its share within a
    /// short round, not a full one: the time its events wait for a processor.
    #[test]
    fn a_partition_handed_back_is_taken_within_a_short_round() {
        let leases: Arc<dyn Leases> = Arc::new(Memory::default());
        // Full rounds of 2 s: a hand-over waiting for one would take up to 2 s.
        let ttl = Duration::from_secs(8);
        let start = |_p: u32| -> std::io::Result<Running> {
            let stop = Arc::new(AtomicBool::new(false));
            let s = stop.clone();
            let thread = std::thread::spawn(move || {
                while !s.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
            Ok(Running { stop, thread })
        };
        let node = |name: &'static str, stop: Arc<AtomicBool>| {
            let leases = leases.clone();
            let seen: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
            let s = seen.clone();
            let thread = std::thread::spawn(move || {
                run(leases, 4, name.into(), ttl, stop, start, move |n| {
                    s.lock().unwrap().push((n, Instant::now()))
                })
            });
            (seen, thread)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (a_seen, a) = node("a", stop.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        while a_seen.lock().unwrap().last().map(|s| s.0) != Some(4) {
            assert!(Instant::now() < deadline, "a never took all four");
            std::thread::sleep(Duration::from_millis(20));
        }
        // b starts half a round after a's: a sees it a second later and hands back two
        // partitions; a full round of b's would come another second after that.
        std::thread::sleep(Duration::from_secs(1));
        let (b_seen, b) = node("b", stop.clone());
        let first = |seen: &Mutex<Vec<(usize, Instant)>>, n: usize| {
            seen.lock().unwrap().iter().find(|s| s.0 == n).map(|s| s.1)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let (released, taken) = loop {
            if let (Some(r), Some(t)) = (first(&a_seen, 2), first(&b_seen, 2)) {
                break (r, t);
            }
            assert!(Instant::now() < deadline, "never balanced");
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::SeqCst);
        a.join().unwrap();
        b.join().unwrap();
        let waited = taken.saturating_duration_since(released);
        assert!(
            waited < SHORT_ROUND * 3,
            "handed back, then taken {waited:?} later"
        );
    }

    /// The board counts the events of every processor a partition had on this node and
    /// reports positions only of the running ones.
    #[test]
    fn the_board_keeps_counting_across_hand_backs() {
        let board = Board::default();
        let processor = |events: u64, offset: u64| {
            let stats = Arc::new(ProcessorStats::new(1));
            stats.events_processed.store(events, Ordering::SeqCst);
            stats.offsets[0].store(offset, Ordering::SeqCst);
            stats.open_visits.store(2, Ordering::SeqCst);
            (stats, Arc::new(AtomicBool::new(false)))
        };
        let (a, stop_a) = processor(5, 100);
        board.track(0, a.clone(), stop_a.clone());
        let (b, stop_b) = processor(7, 200);
        board.track(1, b, stop_b);
        assert_eq!(board.events(), 12);
        assert_eq!(board.positions(), vec![(0, 100), (1, 200)]);
        assert_eq!(board.open_visits(), 4);
        // Partition 0 handed back: its events stay counted, its position is not ours.
        stop_a.store(true, Ordering::SeqCst);
        assert_eq!(board.events(), 12);
        assert_eq!(board.positions(), vec![(1, 200)]);
        assert_eq!(board.open_visits(), 2);
        // Taken again: the new processor's events add on.
        let (c, stop_c) = processor(3, 150);
        board.track(0, c, stop_c);
        assert_eq!(board.events(), 15);
        assert_eq!(board.positions(), vec![(0, 150), (1, 200)]);
    }
}
