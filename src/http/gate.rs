//! Admission at arrival, for HTTP/1.1 connections: `--max-in-flight` counts a request from
//! the moment its first bytes arrive, not from the moment a runtime worker gets to it.
//!
//! Handlers are short and CPU-bound: one finishes within a single poll, so counting requests
//! when their handler starts never sees more than one a worker, and the excess waits unseen,
//! unread in its socket while its connection's task waits for a worker. So the connection's
//! reads register the [`Gate`] as their waker: when the socket becomes readable, the waker
//! runs (on whichever thread drives the I/O, before the task is queued) and judges the
//! arrival there and then: admitted while fewer than `--max-in-flight` are admitted, else
//! refused. The refused request is answered 503 with `Retry-After` the moment it is read,
//! without being looked at; an admitted one keeps its place until its answer is made. A
//! request that arrives with no wake-up (its bytes were already there) is judged when it
//! starts. HTTP/2 connections multiplex many requests over one socket, so their requests
//! are counted when they start, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::Wake;

use futures::task::AtomicWaker;

use crate::http::AppState;

const IDLE: u8 = 0;
const ADMITTED: u8 = 1;
const REFUSED: u8 = 2;

/// One connection's admission state and the waker of its task.
#[derive(Debug)]
pub struct Gate {
    state: Arc<AppState>,
    verdict: AtomicU8,
    task: AtomicWaker,
    enabled: AtomicBool,
}

/// How a request reached the handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Admitted at arrival: already counted in progress.
    Counted,
    /// Refused at arrival: answer 503 at once.
    Refused,
    /// Not judged (HTTP/2): counted when the handler starts.
    Count,
}

impl Gate {
    /// A gate for a connection of the service with `state` (off until [`Gate::enable`]).
    pub fn new(state: Arc<AppState>) -> Arc<Gate> {
        Arc::new(Gate {
            state,
            verdict: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
            enabled: AtomicBool::new(false),
        })
    }

    /// Turns judging on (the connection speaks HTTP/1.1 and its reads wake through the
    /// gate).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Registers the connection task's waker (called by every read).
    pub fn register(&self, waker: &std::task::Waker) {
        self.task.register(waker);
    }

    /// Judges the current arrival once: admitted (counted in progress) or refused.
    fn judge(&self) -> u8 {
        let seen = self.verdict.load(Ordering::Acquire);
        if seen != IDLE {
            return seen;
        }
        let counter = &self.state.in_flight;
        let before = counter.fetch_add(1, Ordering::AcqRel);
        let verdict = if before < self.state.limits.max_in_flight {
            ADMITTED
        } else {
            counter.fetch_sub(1, Ordering::AcqRel);
            REFUSED
        };
        match self
            .verdict
            .compare_exchange(IDLE, verdict, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => verdict,
            Err(other) => {
                // Judged at the same moment elsewhere: that verdict stands.
                if verdict == ADMITTED {
                    counter.fetch_sub(1, Ordering::AcqRel);
                }
                other
            }
        }
    }

    /// A request starts on this connection: how it was admitted.
    pub fn start(&self) -> Admission {
        if !self.enabled.load(Ordering::Acquire) {
            return Admission::Count;
        }
        match self.judge() {
            ADMITTED => Admission::Counted,
            _ => Admission::Refused,
        }
    }

    /// The request has its answer: its place is free and the next arrival is judged anew.
    pub fn finish(&self) {
        if self.verdict.swap(IDLE, Ordering::AcqRel) == ADMITTED {
            self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.enabled.load(Ordering::Acquire) {
            self.judge();
        }
        self.task.wake();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.finish();
    }
}
