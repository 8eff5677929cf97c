//! Task events for containerd, published in order by one thread so a slow containerd never
//! blocks a request and `/tasks/exit` can never overtake `/tasks/start`.

use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;
use containerd_shim_protos::protobuf::MessageDyn;

/// One queued event: topic and message.
type Queued = (&'static str, Box<dyn MessageDyn>);

/// The publishing queue.
pub struct Events {
    tx: Mutex<Option<Sender<Queued>>>,
}

impl Events {
    /// Starts the publisher thread. Without a publisher (tests), events are only logged.
    pub fn new(publisher: Option<RemotePublisher>, namespace: String) -> Events {
        let (tx, rx) = channel::<Queued>();
        let spawned = std::thread::Builder::new().name("events".into()).spawn(move || {
            for (topic, event) in rx {
                log::debug!("event {topic}");
                if let Some(p) = &publisher {
                    if let Err(e) = p.publish(Context::default(), topic, &namespace, event) {
                        log::warn!("publishing {topic} failed: {e}");
                    }
                }
            }
        });
        if let Err(e) = spawned {
            log::error!("cannot start the event publisher: {e}");
        }
        Events { tx: Mutex::new(Some(tx)) }
    }

    /// Queues an event.
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send((topic, event));
        }
    }
}
