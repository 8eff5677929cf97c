//! Where the time of a start (or a teardown) goes: each step of a sandbox's (or a joining
//! container's) create, or of a sandbox's destroy, is logged with its time since the whole
//! began and its own duration, and a summary line names every step once it is done, so a slow
//! pod start or stop can be read from the shim log.

use std::time::{Duration, Instant};

/// The steps of one create, in the order they ended.
#[derive(Debug)]
pub struct Timeline {
    what: String,
    /// The summary's verb: "created", "destroyed".
    done: &'static str,
    start: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Timeline {
    /// Starts timing `what` (e.g. "sandbox <id>").
    pub fn new(what: impl Into<String>) -> Timeline {
        Timeline::ending(what, "created")
    }

    /// Starts timing `what`, whose summary will say it was `done` (e.g. "destroyed").
    pub fn ending(what: impl Into<String>, done: &'static str) -> Timeline {
        let now = Instant::now();
        Timeline { what: what.into(), done, start: now, last: now, steps: Vec::new() }
    }

    /// Records that `step` ended now; its duration is the time since the previous step ended.
    pub fn step(&mut self, step: &'static str) {
        let now = Instant::now();
        self.record(step, now.duration_since(self.last));
        self.last = now;
    }

    /// Records `step` that took `took`, measured by the caller (a step that ran beside others).
    pub fn record(&mut self, step: &'static str, took: Duration) {
        log::info!("{}: {step} done after {} ms, at {} ms", self.what, took.as_millis(), self.start.elapsed().as_millis());
        self.steps.push((step, took));
    }

    /// The summary: every step with its duration, and the total.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self.steps.iter().map(|(s, d)| format!("{s} {} ms", d.as_millis())).collect();
        format!("{} {} in {} ms: {}", self.what, self.done, self.start.elapsed().as_millis(), steps.join(", "))
    }

    /// Logs the summary.
    pub fn finish(&self) {
        log::info!("{}", self.summary());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_each_step_with_its_duration() {
        let mut t = Timeline::new("sandbox x");
        std::thread::sleep(Duration::from_millis(20));
        t.step("image");
        t.record("boot", Duration::from_millis(1234));
        let s = t.summary();
        assert!(s.starts_with("sandbox x created in "), "{s}");
        let image: u64 = s.split("image ").nth(1).unwrap().split(" ms").next().unwrap().parse().unwrap();
        assert!(image >= 20, "{s}");
        assert!(s.ends_with("boot 1234 ms"), "{s}");
        let mut t = Timeline::ending("sandbox y", "destroyed");
        t.step("vm");
        assert!(t.summary().starts_with("sandbox y destroyed in "), "{}", t.summary());
    }
}
