//! The circuit breaker of each app's web server: after `rest_hook_breaker_failures` failed
//! calls in a row it opens, and calls fail at once (no network wait) for
//! `rest_hook_breaker_cooldown`; then one call goes out as a probe: an answer closes the
//! breaker, a failure opens it again. State machine only: time comes in as an argument, so
//! it is tested without sockets or sleeps.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where an app's breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// The thresholds in force (from the settings).
#[derive(Debug, Clone, Copy)]
pub struct BreakerLimits {
    /// `0`: the breaker never opens.
    pub failures: u32,
    pub cooldown: Duration,
}

/// What the breaker says about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Make the call; `probe` when it is the one call of a half-open breaker.
    Call { probe: bool },
    /// Do not call: the breaker is open for this much longer (or a probe is out).
    Refuse { retry_in: Duration },
}

#[derive(Debug, Clone)]
struct Breaker {
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_out: bool,
    opens: u64,
    closes: u64,
    refused: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probe_out: false,
            opens: 0,
            closes: 0,
            refused: 0,
        }
    }
}

/// One app's breaker as `/rest-api/config` and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerView {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    /// While open: milliseconds until the next probe may go out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_in_ms: Option<u64>,
    /// Times it opened (from closed or after a failed probe).
    pub opens: u64,
    /// Times a probe closed it.
    pub closes: u64,
    /// Calls not made because it was open.
    pub refused: u64,
}

/// A state change, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub app: String,
    pub from: BreakerState,
    pub to: BreakerState,
    pub failures: u32,
}

/// The breakers of every app, behind one short lock (never held across a call).
#[derive(Default)]
pub struct Breakers {
    apps: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    /// Whether a call to `app`'s web server may go out now.
    pub fn pass(
        &self,
        app: &str,
        limits: BreakerLimits,
        now: Instant,
    ) -> (Pass, Option<Transition>) {
        if limits.failures == 0 {
            return (Pass::Call { probe: false }, None);
        }
        let mut apps = self.lock();
        let breaker = breaker_of(&mut apps, app);
        match breaker.state {
            BreakerState::Closed => (Pass::Call { probe: false }, None),
            BreakerState::Open => {
                let opened = breaker.opened_at.unwrap_or(now);
                let elapsed = now.saturating_duration_since(opened);
                if elapsed >= limits.cooldown {
                    breaker.state = BreakerState::HalfOpen;
                    breaker.probe_out = true;
                    let transition = Transition {
                        app: app.to_string(),
                        from: BreakerState::Open,
                        to: BreakerState::HalfOpen,
                        failures: breaker.consecutive_failures,
                    };
                    (Pass::Call { probe: true }, Some(transition))
                } else {
                    breaker.refused += 1;
                    (
                        Pass::Refuse {
                            retry_in: limits.cooldown - elapsed,
                        },
                        None,
                    )
                }
            }
            BreakerState::HalfOpen => {
                if breaker.probe_out {
                    breaker.refused += 1;
                    (
                        Pass::Refuse {
                            retry_in: Duration::ZERO,
                        },
                        None,
                    )
                } else {
                    breaker.probe_out = true;
                    (Pass::Call { probe: true }, None)
                }
            }
        }
    }

    /// Records how a call that [`pass`](Self::pass) let through went. `answered` is true when
    /// the web server gave an HTTP answer below 500.
    pub fn record(
        &self,
        app: &str,
        answered: bool,
        probe: bool,
        limits: BreakerLimits,
        now: Instant,
    ) -> Option<Transition> {
        if limits.failures == 0 {
            return None;
        }
        let mut apps = self.lock();
        let breaker = breaker_of(&mut apps, app);
        let from = breaker.state;
        if probe {
            breaker.probe_out = false;
        }
        if answered {
            breaker.consecutive_failures = 0;
            // A call made before the breaker opened may answer late; only a probe closes it.
            if from == BreakerState::HalfOpen && probe {
                breaker.state = BreakerState::Closed;
                breaker.opened_at = None;
                breaker.closes += 1;
            }
        } else {
            breaker.consecutive_failures = breaker.consecutive_failures.saturating_add(1);
            let opens = match from {
                BreakerState::Closed => breaker.consecutive_failures >= limits.failures,
                BreakerState::HalfOpen => probe,
                BreakerState::Open => false,
            };
            if opens {
                breaker.state = BreakerState::Open;
                breaker.opened_at = Some(now);
                breaker.opens += 1;
            }
        }
        (breaker.state != from).then(|| Transition {
            app: app.to_string(),
            from,
            to: breaker.state,
            failures: breaker.consecutive_failures,
        })
    }

    /// Hands back the probe of a call that ended with no outcome (its caller went away
    /// mid-call): the breaker stays half-open and the next call probes.
    pub fn abandon(&self, app: &str, probe: bool) {
        if probe {
            breaker_of(&mut self.lock(), app).probe_out = false;
        }
    }

    /// The guard of a call [`pass`](Self::pass) let through: it records the outcome once,
    /// or, dropped without one, [`abandon`](Self::abandon)s the call.
    pub fn guard<'a>(&'a self, app: &'a str, probe: bool, limits: BreakerLimits) -> CallGuard<'a> {
        CallGuard {
            breakers: self,
            app,
            probe,
            limits,
            recorded: false,
        }
    }

    pub fn snapshot(&self, limits: BreakerLimits, now: Instant) -> BTreeMap<String, BreakerView> {
        self.lock()
            .iter()
            .map(|(app, b)| {
                let probe_in_ms = (b.state == BreakerState::Open).then(|| {
                    let elapsed = b
                        .opened_at
                        .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                    limits.cooldown.saturating_sub(elapsed).as_millis() as u64
                });
                (
                    app.clone(),
                    BreakerView {
                        state: b.state,
                        consecutive_failures: b.consecutive_failures,
                        probe_in_ms,
                        opens: b.opens,
                        closes: b.closes,
                        refused: b.refused,
                    },
                )
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Breaker>> {
        self.apps.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A call in flight, as its breaker sees it. See [`Breakers::guard`].
pub struct CallGuard<'a> {
    breakers: &'a Breakers,
    app: &'a str,
    probe: bool,
    limits: BreakerLimits,
    recorded: bool,
}

impl CallGuard<'_> {
    pub fn record(mut self, answered: bool, now: Instant) -> Option<Transition> {
        self.recorded = true;
        self.breakers
            .record(self.app, answered, self.probe, self.limits, now)
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breakers.abandon(self.app, self.probe);
        }
    }
}

/// The app's breaker, created on first use; the app name is copied only then (this runs on
/// every hook call).
fn breaker_of<'a>(apps: &'a mut HashMap<String, Breaker>, app: &str) -> &'a mut Breaker {
    if !apps.contains_key(app) {
        apps.insert(app.to_string(), Breaker::default());
    }
    apps.get_mut(app).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BreakerLimits = BreakerLimits {
        failures: 3,
        cooldown: Duration::from_secs(5),
    };

    fn call(b: &Breakers, now: Instant) -> Pass {
        b.pass("app", LIMITS, now).0
    }

    #[test]
    fn opens_after_n_failures_in_a_row_refuses_then_probes_and_closes() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(call(&b, t0), Pass::Call { probe: false });
            assert!(b.record("app", false, false, LIMITS, t0).is_none());
        }
        // A success in between resets the count.
        b.record("app", true, false, LIMITS, t0);
        for i in 0..3 {
            let transition = b.record("app", false, false, LIMITS, t0);
            assert_eq!(transition.is_some(), i == 2, "opens on the third failure");
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            call(&b, t1),
            Pass::Refuse {
                retry_in: Duration::from_secs(4)
            }
        );
        let t5 = t0 + Duration::from_secs(5);
        let (pass, transition) = b.pass("app", LIMITS, t5);
        assert_eq!(pass, Pass::Call { probe: true });
        assert_eq!(transition.unwrap().to, BreakerState::HalfOpen);
        assert!(
            matches!(call(&b, t5), Pass::Refuse { .. }),
            "one probe at a time"
        );
        let closed = b.record("app", true, true, LIMITS, t5).unwrap();
        assert_eq!(closed.to, BreakerState::Closed);
        assert_eq!(call(&b, t5), Pass::Call { probe: false });
        let view = &b.snapshot(LIMITS, t5)["app"];
        assert_eq!((view.opens, view.closes, view.refused), (1, 1, 2));
    }

    /// Opens the breaker with three failures at `t0`; returns when its probe is due.
    fn opened(b: &Breakers, t0: Instant) -> Instant {
        for _ in 0..3 {
            b.record("app", false, false, LIMITS, t0);
        }
        t0 + LIMITS.cooldown
    }

    #[test]
    fn a_failed_probe_opens_again_for_a_whole_cooldown() {
        let b = Breakers::default();
        let t5 = opened(&b, Instant::now());
        assert_eq!(call(&b, t5), Pass::Call { probe: true });
        let reopened = b.record("app", false, true, LIMITS, t5).unwrap();
        assert_eq!(reopened.to, BreakerState::Open);
        assert!(matches!(
            call(&b, t5 + Duration::from_secs(4)),
            Pass::Refuse { .. }
        ));
        assert_eq!(call(&b, t5 + LIMITS.cooldown), Pass::Call { probe: true });
    }

    #[test]
    fn a_probe_dropped_mid_call_hands_the_probe_back() {
        let b = Breakers::default();
        let t5 = opened(&b, Instant::now());
        assert_eq!(call(&b, t5), Pass::Call { probe: true });
        drop(b.guard("app", true, LIMITS));
        assert_eq!(
            call(&b, t5),
            Pass::Call { probe: true },
            "the next call probes: the dropped probe does not stay out forever"
        );
        let closed = b.guard("app", true, LIMITS).record(true, t5).unwrap();
        assert_eq!(closed.to, BreakerState::Closed);
    }

    #[test]
    fn a_late_answer_does_not_close_an_open_breaker_and_zero_turns_it_off() {
        let b = Breakers::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record("app", false, false, LIMITS, t0);
        }
        assert!(b.record("app", true, false, LIMITS, t0).is_none());
        assert!(matches!(call(&b, t0), Pass::Refuse { .. }));
        let off = BreakerLimits {
            failures: 0,
            ..LIMITS
        };
        for _ in 0..10 {
            b.record("other", false, false, off, t0);
        }
        assert_eq!(b.pass("other", off, t0).0, Pass::Call { probe: false });
    }
}
