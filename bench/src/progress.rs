//! One progress line, rewritten in place on a terminal and printed line by
//! line elsewhere (CI logs, pipes).

use std::{
    io::{IsTerminal, Write},
    time::Instant,
};

pub struct Progress {
    started: Instant,
    step: usize,
    steps: usize,
    current: String,
    terminal: bool,
}

impl Progress {
    pub fn new(steps: usize) -> Self {
        Self {
            started: Instant::now(),
            step: 0,
            steps,
            current: String::new(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// A new stage (one mode at one scale).
    pub fn step(&mut self, name: &str) {
        self.step += 1;
        name.clone_into(&mut self.current);
        self.show("");
    }

    /// What the current stage is doing now.
    pub fn detail(&mut self, what: &str) {
        self.show(what);
    }

    fn show(&self, what: &str) {
        let line = format!(
            "[{:>4.0}s] {}/{} {}{}{}",
            self.started.elapsed().as_secs_f64(),
            self.step,
            self.steps,
            self.current,
            if what.is_empty() { "" } else { ": " },
            what
        );
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    pub fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
