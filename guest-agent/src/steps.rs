//! Where the time of a multi-step action goes (the agent's start, a container's create), for
//! one log line: a slow pod start is read from the guest's console.

use std::time::{Duration, Instant};

/// The steps done so far, each with its duration.
pub struct Steps {
    start: Instant,
    last: Instant,
    done: Vec<(&'static str, Duration)>,
}

impl Default for Steps {
    fn default() -> Steps {
        Steps::since(Instant::now())
    }
}

impl Steps {
    /// Steps of something that began at `start`.
    pub fn since(start: Instant) -> Steps {
        Steps { start, last: start, done: Vec::new() }
    }

    /// `step` ended now: its duration is the time since the previous one ended.
    pub fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        self.done.push((step, now.duration_since(self.last)));
        self.last = now;
    }

    /// "N ms: step A ms, step B ms".
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self.done.iter().map(|(s, d)| format!("{s} {} ms", d.as_millis())).collect();
        format!("{} ms: {}", self.start.elapsed().as_millis(), steps.join(", "))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_has_each_step_in_order_and_the_total() {
        let mut s = Steps::default();
        std::thread::sleep(Duration::from_millis(15));
        s.mark("first");
        s.mark("second");
        let text = s.summary();
        let (total, steps) = text.split_once(" ms: ").unwrap();
        assert!(total.parse::<u64>().unwrap() >= 15, "{text}");
        let first: u64 = steps.strip_prefix("first ").unwrap().split(" ms").next().unwrap().parse().unwrap();
        assert!(first >= 15, "{text}");
        assert!(steps.contains(", second "), "{text}");
    }
}
