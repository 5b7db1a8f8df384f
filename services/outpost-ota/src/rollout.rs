//! A rollout's state machine: which devices get the artifact when, and when to stop.
//!
//! Devices are split into phases by cumulative percentage (e.g. 1 %, 10 %, 100 %: the first
//! 1 % of the devices, then up to 10 %, then the rest; every phase has at least one device).
//! Only the devices of open phases are offered the update. The next phase opens when the
//! devices of the open phases reached `success_percent` successes. The rollout pauses by
//! itself when failures since the last start or resume reach `failure_count`, or reach
//! `failure_percent` of the devices that started once at least `min_sample` started. A
//! paused rollout offers nothing new (devices already downloading or installing finish and
//! report); resume starts counting failures afresh; cancel ends it (devices that had not
//! finished are canceled; their late reports are still recorded).
//!
//! Pure logic: the service persists a rollout as its spec, its devices and their states,
//! and rebuilds it with [`Rollout::restore`].

use std::collections::HashMap;

pub use outpost_contracts::ota::{DeviceState, Policy, RolloutState, Window};

/// Whether a device in state `s` failed.
fn failed(s: DeviceState) -> bool {
    matches!(s, DeviceState::Failed | DeviceState::RolledBack)
}

/// Whether a device in state `s` began (downloading or beyond, canceled aside).
fn started(s: DeviceState) -> bool {
    matches!(
        s,
        DeviceState::Downloading
            | DeviceState::Installing
            | DeviceState::Succeeded
            | DeviceState::Failed
            | DeviceState::RolledBack
    )
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("device {0} is not part of this rollout")]
    UnknownDevice(String),
    #[error("device {0} has not been offered this update")]
    NotOffered(String),
    #[error("device {device} cannot go from {from:?} to {to:?}")]
    Transition {
        device: String,
        from: DeviceState,
        to: DeviceState,
    },
}

#[derive(Debug, Clone)]
pub struct Rollout {
    pub policy: Policy,
    /// Devices in rollout order with their phase.
    devices: Vec<(String, usize)>,
    states: HashMap<String, DeviceState>,
    /// Phases `0..=open` are open.
    open: usize,
    pub state: RolloutState,
    /// Failures counted before the last start or resume.
    failures_before: u32,
    started_before: u32,
}

/// The number of devices in phases `0..=i` of `n`.
fn upto(policy: &Policy, i: usize, n: usize) -> usize {
    let pct = policy.phases[i.min(policy.phases.len() - 1)];
    (((n as f64) * pct / 100.0).ceil() as usize).clamp(1, n)
}

impl Rollout {
    /// A rollout of `devices` in this order (the caller shuffles or sorts).
    pub fn new(policy: Policy, devices: Vec<String>) -> Result<Self, String> {
        policy.check()?;
        if devices.is_empty() {
            return Err("the rollout targets no device".into());
        }
        let n = devices.len();
        let mut phase_of = Vec::with_capacity(n);
        let mut phase = 0;
        for i in 0..n {
            while i >= upto(&policy, phase, n) {
                phase += 1;
            }
            phase_of.push(phase);
        }
        let devices: Vec<(String, usize)> = devices.into_iter().zip(phase_of).collect();
        let states = devices
            .iter()
            .map(|(d, p)| {
                let s = if *p == 0 {
                    DeviceState::Offered
                } else {
                    DeviceState::Waiting
                };
                (d.clone(), s)
            })
            .collect();
        Ok(Self {
            policy,
            devices,
            states,
            open: 0,
            state: RolloutState::Running,
            failures_before: 0,
            started_before: 0,
        })
    }

    /// Rebuilds a stored rollout.
    pub fn restore(
        policy: Policy,
        devices: Vec<(String, usize, DeviceState)>,
        open: usize,
        state: RolloutState,
        failures_before: u32,
        started_before: u32,
    ) -> Self {
        let states = devices.iter().map(|(d, _, s)| (d.clone(), *s)).collect();
        Self {
            policy,
            devices: devices.into_iter().map(|(d, p, _)| (d, p)).collect(),
            states,
            open,
            state,
            failures_before,
            started_before,
        }
    }

    pub fn devices(&self) -> impl Iterator<Item = (&str, usize, DeviceState)> {
        self.devices.iter().map(|(d, p)| {
            (
                d.as_str(),
                *p,
                self.states.get(d).copied().unwrap_or(DeviceState::Waiting),
            )
        })
    }

    pub fn open_phase(&self) -> usize {
        self.open
    }

    pub fn phases(&self) -> usize {
        self.devices.last().map_or(0, |(_, p)| p + 1)
    }

    pub fn state_of(&self, device: &str) -> Option<DeviceState> {
        self.states.get(device).copied()
    }

    /// The baseline failure counters (persisted with the rollout).
    pub fn baseline(&self) -> (u32, u32) {
        (self.failures_before, self.started_before)
    }

    /// Whether `device` should be told to install now.
    pub fn offers(&self, device: &str) -> bool {
        self.offers_at(device, outpost_contracts::now_millis())
    }

    /// Whether `device` is offered the update at `now_ms`: a device yet to start only inside
    /// the maintenance window.
    pub fn offers_at(&self, device: &str, now_ms: i64) -> bool {
        match self.state_of(device) {
            Some(DeviceState::Offered) => {
                self.state == RolloutState::Running
                    && self
                        .policy
                        .window
                        .as_ref()
                        .is_none_or(|w| w.contains(now_ms))
            }
            // Already under way: keep telling it, even when paused, so it can finish.
            Some(DeviceState::Downloading | DeviceState::Installing) => !self.state.ended(),
            _ => false,
        }
    }

    fn count(&self, f: impl Fn(DeviceState) -> bool) -> u32 {
        self.states.values().filter(|s| f(**s)).count() as u32
    }

    /// A device's report; moves the rollout on (next phase, pause, finish).
    pub fn report(&mut self, device: &str, to: DeviceState) -> Result<(), ReportError> {
        let from = self
            .state_of(device)
            .ok_or_else(|| ReportError::UnknownDevice(device.to_string()))?;
        use DeviceState as S;
        let ok = match (from, to) {
            (S::Waiting, _) => return Err(ReportError::NotOffered(device.to_string())),
            (_, S::Waiting | S::Offered) => false,
            // A canceled device that still finishes is recorded as what it did.
            (S::Canceled, S::Succeeded | S::Failed | S::RolledBack) => true,
            (S::Canceled, _) => false,
            (f, t) if f.terminal() => f == t,
            (S::Offered, _) => self.state == RolloutState::Running || to.terminal(),
            (S::Downloading, S::Downloading | S::Installing) => true,
            (S::Installing, S::Installing) => true,
            (S::Downloading | S::Installing, t) => t.terminal(),
            _ => false,
        };
        if !ok {
            return Err(ReportError::Transition {
                device: device.to_string(),
                from,
                to,
            });
        }
        self.states.insert(device.to_string(), to);
        self.evaluate();
        Ok(())
    }

    fn evaluate(&mut self) {
        if self.state != RolloutState::Running {
            return;
        }
        let failures = self.count(failed).saturating_sub(self.failures_before);
        let started = self.count(started).saturating_sub(self.started_before);
        let p = &self.policy;
        if failures >= p.failure_count {
            self.state = RolloutState::Paused {
                reason: format!("{failures} devices failed (limit {})", p.failure_count),
                automatic: true,
            };
            return;
        }
        if started >= p.min_sample.max(1)
            && f64::from(failures) * 100.0 >= p.failure_percent * f64::from(started)
            && failures > 0
        {
            self.state = RolloutState::Paused {
                reason: format!(
                    "{failures} of {started} devices failed (limit {}%)",
                    p.failure_percent
                ),
                automatic: true,
            };
            return;
        }
        // Open the next phase(s) while the open ones did well enough.
        loop {
            let n_open = self
                .devices
                .iter()
                .filter(|(_, ph)| *ph <= self.open)
                .count();
            let ok = self
                .devices
                .iter()
                .filter(|(d, ph)| {
                    *ph <= self.open && self.states.get(d) == Some(&DeviceState::Succeeded)
                })
                .count();
            if (ok as f64) * 100.0 < self.policy.success_percent * n_open as f64 {
                break;
            }
            if self.open + 1 >= self.phases() {
                if self.states.values().all(|s| s.terminal()) {
                    self.finish();
                }
                break;
            }
            self.open += 1;
            for (d, ph) in &self.devices {
                if *ph == self.open && self.states.get(d) == Some(&DeviceState::Waiting) {
                    self.states.insert(d.clone(), DeviceState::Offered);
                }
            }
        }
        if self.open + 1 >= self.phases() && self.states.values().all(|s| s.terminal()) {
            self.finish();
        }
    }

    /// Every device is done: finished when enough succeeded, failed otherwise (a rollout
    /// whose every device rolled back did not finish well).
    fn finish(&mut self) {
        let total = self.devices.len();
        let ok = self
            .states
            .values()
            .filter(|s| **s == DeviceState::Succeeded)
            .count();
        self.state = if (ok as f64) * 100.0 < self.policy.success_percent * total as f64 {
            RolloutState::Failed {
                reason: format!(
                    "{ok} of {total} devices succeeded (the policy needs {}%)",
                    self.policy.success_percent
                ),
            }
        } else {
            RolloutState::Finished
        };
    }

    pub fn pause(&mut self) -> bool {
        if self.state != RolloutState::Running {
            return false;
        }
        self.state = RolloutState::Paused {
            reason: "paused by an operator".into(),
            automatic: false,
        };
        true
    }

    /// Resumes a paused rollout; failures so far no longer count towards the next pause.
    pub fn resume(&mut self) -> bool {
        if !matches!(self.state, RolloutState::Paused { .. }) {
            return false;
        }
        self.failures_before = self.count(failed);
        self.started_before = self.count(started);
        self.state = RolloutState::Running;
        self.evaluate();
        true
    }

    pub fn cancel(&mut self) -> bool {
        if self.state.ended() {
            return false;
        }
        for s in self.states.values_mut() {
            if !s.terminal() {
                *s = DeviceState::Canceled;
            }
        }
        self.state = RolloutState::Canceled;
        true
    }

    /// Devices per state, overall and per phase.
    pub fn counts(&self) -> (HashMap<DeviceState, u32>, Vec<HashMap<DeviceState, u32>>) {
        let mut all = HashMap::new();
        let mut per = vec![HashMap::new(); self.phases()];
        for (d, p) in &self.devices {
            let s = self.states.get(d).copied().unwrap_or(DeviceState::Waiting);
            *all.entry(s).or_insert(0) += 1;
            *per[*p].entry(s).or_insert(0) += 1;
        }
        (all, per)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maintenance_window_holds_back_devices_that_have_not_started() {
        let at = |h: i64, m: i64| 20_000 * 86_400_000 + (h * 60 + m) * 60_000;
        let night = Window {
            start: "22:00".into(),
            end: "04:30".into(),
        };
        assert!(night.contains(at(23, 0)) && night.contains(at(0, 0)) && night.contains(at(4, 29)));
        assert!(
            !night.contains(at(4, 30)) && !night.contains(at(12, 0)) && !night.contains(at(21, 59))
        );
        let day = Window {
            start: "09:00".into(),
            end: "17:00".into(),
        };
        assert!(day.contains(at(9, 0)) && !day.contains(at(17, 0)) && !day.contains(at(3, 0)));
        for (a, b) in [
            ("25:00", "01:00"),
            ("9:00", "10:00"),
            ("10:00", "10:00"),
            ("x", "y"),
        ] {
            let p = Policy {
                window: Some(Window {
                    start: a.into(),
                    end: b.into(),
                }),
                ..Policy::default()
            };
            assert!(p.check().is_err(), "{a}-{b}");
        }
        let policy = Policy {
            phases: vec![100.0],
            window: Some(day),
            ..Policy::default()
        };
        let mut r = Rollout::new(policy, vec!["d0".into(), "d1".into()]).unwrap();
        assert!(!r.offers_at("d0", at(3, 0)), "outside the window");
        assert!(r.offers_at("d0", at(10, 0)));
        r.report("d0", DeviceState::Downloading).unwrap();
        assert!(r.offers_at("d0", at(20, 0)), "a started device finishes");
        assert!(!r.offers_at("d1", at(20, 0)));
    }
    use DeviceState as S;

    fn devices(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i:02}")).collect()
    }

    fn policy(phases: &[f64]) -> Policy {
        Policy {
            phases: phases.to_vec(),
            ..Policy::default()
        }
    }

    #[test]
    fn phases_split_by_cumulative_percentage_and_open_on_success() {
        let mut r = Rollout::new(policy(&[10.0, 50.0, 100.0]), devices(20)).expect("rollout");
        let phases: Vec<usize> = r.devices().map(|(_, p, _)| p).collect();
        assert_eq!(phases.iter().filter(|p| **p == 0).count(), 2);
        assert_eq!(phases.iter().filter(|p| **p == 1).count(), 8);
        assert_eq!(phases.iter().filter(|p| **p == 2).count(), 10);
        assert!(r.offers("d00") && r.offers("d01") && !r.offers("d02"));
        r.report("d00", S::Downloading).expect("report");
        r.report("d00", S::Succeeded).expect("report");
        assert_eq!(r.open_phase(), 0);
        r.report("d01", S::Succeeded).expect("report");
        assert_eq!(r.open_phase(), 1);
        assert!(r.offers("d02"));
        for i in 2..20 {
            let d = format!("d{i:02}");
            if r.state_of(&d) == Some(S::Waiting) {
                assert_eq!(
                    r.report(&d, S::Downloading),
                    Err(ReportError::NotOffered(d.clone()))
                );
                continue;
            }
            r.report(&d, S::Succeeded).expect("report");
        }
        for i in 10..20 {
            r.report(&format!("d{i:02}"), S::Succeeded).expect("report");
        }
        assert_eq!(r.state, RolloutState::Finished);
        assert!(!r.offers("d05"));
    }

    #[test]
    fn a_rollout_whose_devices_ended_below_the_success_threshold_failed() {
        // One device (below the failure count and the minimum sample, so no pause); it
        // rolls back: every device is done, none succeeded.
        let mut r = Rollout::new(policy(&[100.0]), devices(1)).expect("rollout");
        r.report("d00", S::Downloading).expect("report");
        r.report("d00", S::RolledBack).expect("report");
        assert_eq!(
            r.state,
            RolloutState::Failed {
                reason: "0 of 1 devices succeeded (the policy needs 100%)".into()
            }
        );
        assert!(!r.cancel(), "an ended rollout cannot be canceled");
        // Enough successes finish it.
        let mut p = policy(&[100.0]);
        p.success_percent = 50.0;
        let mut r = Rollout::new(p, devices(2)).expect("rollout");
        r.report("d00", S::Succeeded).expect("report");
        r.report("d01", S::Failed).expect("report");
        assert_eq!(r.state, RolloutState::Finished);
    }

    #[test]
    fn failures_in_the_first_phase_pause_before_the_next_opens() {
        let mut r = Rollout::new(policy(&[25.0, 50.0, 100.0]), devices(20)).expect("rollout");
        // Phase 0 is 5 devices; three fail.
        for d in ["d00", "d01"] {
            r.report(d, S::Downloading).expect("report");
            r.report(d, S::Installing).expect("report");
            r.report(d, S::Succeeded).expect("report");
        }
        r.report("d02", S::RolledBack).expect("report");
        r.report("d03", S::Failed).expect("report");
        assert_eq!(r.state, RolloutState::Running);
        r.report("d04", S::RolledBack).expect("report");
        assert!(
            matches!(
                r.state,
                RolloutState::Paused {
                    automatic: true,
                    ..
                }
            ),
            "{:?}",
            r.state
        );
        assert_eq!(r.open_phase(), 0);
        assert!(!r.offers("d05"));
        let (all, per) = r.counts();
        assert_eq!(all[&S::Succeeded], 2);
        assert_eq!(all[&S::RolledBack], 2);
        assert_eq!(all[&S::Failed], 1);
        assert_eq!(all[&S::Waiting], 15);
        assert_eq!(per[0].values().sum::<u32>(), 5);
        // With a success threshold of 100 % the next phase never opens; cancel ends it.
        assert!(r.resume());
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.open_phase(), 0);
        assert!(r.cancel());
        let (all, _) = r.counts();
        assert_eq!(all[&S::Canceled], 15);
        assert_eq!(all[&S::Succeeded], 2);
        assert!(!r.offers("d10"));
    }

    #[test]
    fn resume_counts_failures_afresh_and_a_lower_threshold_opens_the_next_phase() {
        let mut p = policy(&[50.0, 100.0]);
        p.success_percent = 40.0;
        p.failure_count = 2;
        p.failure_percent = 100.0;
        let mut r = Rollout::new(p, devices(10)).expect("rollout");
        r.report("d00", S::Failed).expect("report");
        r.report("d01", S::Failed).expect("report");
        assert!(matches!(
            r.state,
            RolloutState::Paused {
                automatic: true,
                ..
            }
        ));
        assert!(!r.offers("d02"), "nothing new is offered while paused");
        assert!(r.resume());
        assert_eq!(r.state, RolloutState::Running);
        assert_eq!(r.open_phase(), 0);
        r.report("d02", S::Succeeded).expect("report");
        r.report("d03", S::Succeeded).expect("report");
        assert_eq!(r.open_phase(), 1, "2 of 5 = 40 % opens the next phase");
        assert!(r.offers("d05"));
        r.report("d05", S::Failed).expect("report");
        assert_eq!(
            r.state,
            RolloutState::Running,
            "one failure since the resume"
        );
        r.report("d06", S::RolledBack).expect("report");
        assert!(matches!(r.state, RolloutState::Paused { .. }));
        assert!(!r.pause() && r.resume());
        assert!(r.pause());
        assert!(matches!(
            r.state,
            RolloutState::Paused {
                automatic: false,
                ..
            }
        ));
    }

    #[test]
    fn device_states_have_their_api_names_both_ways() {
        let names: Vec<String> = DeviceState::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "waiting",
                "offered",
                "downloading",
                "installing",
                "succeeded",
                "failed",
                "rolledBack",
                "canceled"
            ]
        );
        for s in DeviceState::ALL {
            assert_eq!(DeviceState::from_name(&s.name()), Some(s));
        }
        assert_eq!(DeviceState::from_name("exploded"), None);
    }

    #[test]
    fn reports_are_checked() {
        let mut r = Rollout::new(policy(&[50.0, 100.0]), devices(4)).expect("rollout");
        assert_eq!(
            r.report("nobody", S::Succeeded),
            Err(ReportError::UnknownDevice("nobody".into()))
        );
        r.report("d00", S::Succeeded).expect("report");
        assert!(matches!(
            r.report("d00", S::Downloading),
            Err(ReportError::Transition { .. })
        ));
        assert!(
            r.report("d00", S::Succeeded).is_ok(),
            "a repeated report is harmless"
        );
        assert!(Rollout::new(policy(&[50.0, 40.0]), devices(4)).is_err());
        assert!(Rollout::new(policy(&[50.0]), devices(4)).is_err());
        assert!(Rollout::new(Policy::default(), vec![]).is_err());
    }
}
