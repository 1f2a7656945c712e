//! A sleeper that records each wait it is asked for and returns at once, so a
//! test checks retries, backoffs and Retry-After without waiting for them.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use promptloop::clock::Sleeper;

#[derive(Clone, Default)]
pub struct Waits(Arc<Mutex<Vec<Duration>>>);

impl Waits {
    pub fn new() -> Waits {
        Waits::default()
    }

    /// Records the wait and returns at once.
    pub fn sleeper(&self) -> Sleeper {
        let log = self.0.clone();
        Sleeper::new(move |wait| {
            log.lock().unwrap().push(wait);
            std::future::ready(())
        })
    }

    /// Records a wait as the sleeper would.
    pub fn record(&self, wait: Duration) {
        self.0.lock().unwrap().push(wait);
    }

    /// Every wait asked for, in order.
    pub fn recorded(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}
