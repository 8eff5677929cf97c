//! Task events for containerd, published in order by one thread so a slow containerd never
//! blocks a request and `/tasks/exit` can never overtake `/tasks/start`.
//!
//! The queue is bounded: at most [`QUEUE_MAX`] events wait, and OOM events (which a guest can
//! cause at will) only while fewer than half of that do, so lifecycle events keep their room.
//! An event that finds no room is dropped with an error in the log. An event containerd did
//! not take (containerd restarting) stays at the head of the queue: the publisher reconnects
//! to containerd's address with a growing pause ([`RETRY_MIN`] to [`RETRY_MAX`]) and sends it
//! again, so a containerd restart loses nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::protos::events::task::TaskOOM;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::{MessageDyn, MessageFull};

/// Most events waiting to be published.
pub const QUEUE_MAX: usize = 1024;
/// First pause before reconnecting to containerd.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between reconnection attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long one publish may take before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where events go.
pub trait Publish: Send {
    /// Publishes one event; an error means containerd did not take it (it is sent again).
    fn publish(&mut self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) -> Result<(), String>;
}

/// containerd's event service at its ttrpc address (`TTRPC_ADDRESS`), connected on first use
/// and again after every failure.
pub struct Containerd {
    address: String,
    client: Option<RemotePublisher>,
}

impl Containerd {
    /// A publisher to `address`; connects when the first event is sent.
    pub fn new(address: &str) -> Self {
        Containerd { address: address.to_string(), client: None }
    }
}

impl Publish for Containerd {
    fn publish(&mut self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        let client = match self.client.take() {
            Some(c) => c,
            None => RemotePublisher::new(&self.address).map_err(|e| format!("connecting to containerd at {}: {e}", self.address))?,
        };
        let ctx = containerd_shim::protos::ttrpc::context::with_timeout(PUBLISH_TIMEOUT.as_nanos() as i64);
        client.publish(ctx, topic, namespace, event).map_err(|e| e.to_string())?;
        // Keep the connection only while it works.
        self.client = Some(client);
        Ok(())
    }
}

/// One queued event: topic and message.
type Queued = (&'static str, Box<dyn MessageDyn>);

#[derive(Default)]
struct Queue {
    events: VecDeque<Queued>,
    dropped: u64,
    /// The [`Events`] was dropped: the publisher ends once the queue is empty, or at the
    /// first failure.
    closed: bool,
}

/// The publishing queue.
pub struct Events {
    queue: Arc<(Mutex<Queue>, Condvar)>,
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    q.lock().unwrap_or_else(|p| p.into_inner())
}

impl Events {
    /// Starts the publisher thread. Without a publisher (tests), events are only logged.
    pub fn new(publisher: Option<Box<dyn Publish>>, namespace: String) -> Events {
        let queue: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let q = queue.clone();
        let spawned = std::thread::Builder::new().name("events".into()).spawn(move || publish_loop(&q, publisher, &namespace));
        if let Err(e) = spawned {
            log::error!("cannot start the event publisher: {e}");
        }
        Events { queue }
    }

    /// Queues an event; false if the queue had no room for it (then it is dropped).
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) -> bool {
        let (m, cond) = &*self.queue;
        let mut q = lock(m);
        let room = if event.descriptor_dyn().full_name() == TaskOOM::descriptor().full_name() { QUEUE_MAX / 2 } else { QUEUE_MAX };
        if q.events.len() >= room {
            q.dropped += 1;
            // Once per power of two, so a flood does not flood the log too.
            if q.dropped.is_power_of_two() {
                log::error!("event queue full ({} waiting): dropped {topic} ({} dropped so far)", q.events.len(), q.dropped);
            }
            return false;
        }
        q.events.push_back((topic, event));
        cond.notify_all();
        true
    }

    /// Events waiting (the one being published included).
    pub fn len(&self) -> usize {
        lock(&self.queue.0).events.len()
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits up to `timeout` for every queued event to be published (before the shim exits).
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, cond) = &*self.queue;
        let mut q = lock(m);
        while !q.events.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            q = cond.wait_timeout(q, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let (m, cond) = &*self.queue;
        lock(m).closed = true;
        cond.notify_all();
    }
}

fn publish_loop(queue: &(Mutex<Queue>, Condvar), mut publisher: Option<Box<dyn Publish>>, namespace: &str) {
    let (m, cond) = queue;
    let mut pause = RETRY_MIN;
    let mut failures = 0u64;
    loop {
        let (topic, event) = {
            let mut q = lock(m);
            while q.events.is_empty() {
                if q.closed {
                    return;
                }
                q = cond.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let (topic, event) = &q.events[0];
            (*topic, event.clone_box())
        };
        log::debug!("event {topic}");
        let result = match publisher.as_mut() {
            Some(p) => p.publish(topic, namespace, event),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                if failures > 0 {
                    log::info!("published {topic} after {failures} failed attempt(s)");
                }
                let mut q = lock(m);
                q.events.pop_front();
                cond.notify_all();
                pause = RETRY_MIN;
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    log::warn!("publishing {topic} failed ({failures} attempts so far, next in {pause:?}): {e}");
                }
                if lock(m).closed {
                    log::error!("giving up on {} unpublished event(s): {e}", lock(m).events.len());
                    return;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use containerd_shim::protos::events::task::TaskExit;
    use containerd_shim_protos::protobuf::Message;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Refuses while `down` is set, records what it takes.
    struct Flaky {
        down: Arc<Mutex<bool>>,
        seen: Arc<Mutex<Vec<String>>>,
        attempts: Arc<AtomicUsize>,
    }

    impl Publish for Flaky {
        fn publish(&mut self, topic: &str, _: &str, event: Box<dyn MessageDyn>) -> Result<(), String> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            if *self.down.lock().unwrap() {
                return Err("connection refused".into());
            }
            let any = containerd_shim::util::convert_to_any(event).unwrap();
            let exit = TaskExit::parse_from_bytes(&any.value).map(|e| e.id).unwrap_or_default();
            self.seen.lock().unwrap().push(format!("{topic} {exit}"));
            Ok(())
        }
    }

    fn exit(id: &str) -> Box<dyn MessageDyn> {
        Box::new(TaskExit { id: id.into(), ..Default::default() })
    }

    #[test]
    fn events_wait_for_containerd_to_come_back_in_order() {
        let (down, seen, attempts) = (Arc::new(Mutex::new(true)), Arc::default(), Arc::new(AtomicUsize::new(0)));
        let flaky = Flaky { down: down.clone(), seen: Arc::clone(&seen), attempts: attempts.clone() };
        let events = Events::new(Some(Box::new(flaky)), "ns".into());
        for i in 0..5 {
            assert!(events.send("/tasks/exit", exit(&format!("e{i}"))));
        }
        let t0 = Instant::now();
        while attempts.load(Ordering::SeqCst) < 3 {
            assert!(t0.elapsed() < Duration::from_secs(10), "the publisher did not retry");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(events.len(), 5, "nothing is lost while containerd is away");
        *down.lock().unwrap() = false;
        assert!(events.flush(Duration::from_secs(20)), "not flushed after containerd came back");
        let got = seen.lock().unwrap().clone();
        assert_eq!(got, (0..5).map(|i| format!("/tasks/exit e{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn the_queue_is_bounded_and_oom_events_leave_room_for_the_rest() {
        let flaky = Flaky { down: Arc::new(Mutex::new(true)), seen: Arc::default(), attempts: Arc::default() };
        let events = Events::new(Some(Box::new(flaky)), "ns".into());
        let mut oom_taken = 0;
        for _ in 0..5000 {
            oom_taken += usize::from(events.send("/tasks/oom", Box::new(TaskOOM { container_id: "c".into(), ..Default::default() })));
        }
        assert_eq!(oom_taken, QUEUE_MAX / 2);
        let mut exits_taken = 0;
        for i in 0..5000 {
            exits_taken += usize::from(events.send("/tasks/exit", exit(&i.to_string())));
        }
        assert_eq!(exits_taken, QUEUE_MAX / 2, "lifecycle events fill the rest");
        assert_eq!(events.len(), QUEUE_MAX);
        assert!(!events.flush(Duration::from_millis(50)));
    }
}
