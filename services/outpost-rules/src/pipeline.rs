//! A pipeline: which readings it takes, the steps that reduce them, and the conditions
//! that raise alerts. Pure state machines over (origin, value) streams, one per device and
//! resource; no I/O here.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One pipeline as configured (TOML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct PipelineSpec {
    pub name: String,
    /// Device names (a trailing `*` matches any suffix); empty = every device.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Profile names, same rules.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Resource names, same rules.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Applied in order to each device's resource.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Evaluated on every reading the filters take, before the steps.
    #[serde(default)]
    pub alerts: Vec<AlertRule>,
}

/// A reduction step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "type")]
pub enum Step {
    /// Passes a reading only when it differs from the last one passed by at least `delta`.
    Deadband { delta: f64 },
    /// Passes at most one reading per `every_ms`.
    Downsample { every_ms: u64 },
    /// Passes readings within [min, max].
    Range {
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    /// Aggregates over fixed windows of `size_ms` (aligned to the epoch); emits one
    /// reading per function when a window closes.
    Tumbling {
        size_ms: u64,
        #[serde(default = "default_functions")]
        functions: Vec<Function>,
    },
    /// Aggregates over the last `size_ms`, emitted every `every_ms`.
    Sliding {
        size_ms: u64,
        every_ms: u64,
        #[serde(default = "default_functions")]
        functions: Vec<Function>,
    },
}

fn default_functions() -> Vec<Function> {
    vec![
        Function::Min,
        Function::Max,
        Function::Mean,
        Function::Count,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Function {
    Min,
    Max,
    Mean,
    Count,
    Last,
    Sum,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Min => "min",
            Function::Max => "max",
            Function::Mean => "mean",
            Function::Count => "count",
            Function::Last => "last",
            Function::Sum => "sum",
        }
    }
}

/// When an alert fires: on the reading that makes the condition true after it was false
/// (or on the first reading), not on every reading while it stays true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub struct AlertRule {
    /// Value above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Value below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Absolute rate of change above this, per second (between consecutive readings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_above: Option<f64>,
    #[serde(default = "default_severity")]
    pub severity: String,
    #[serde(default)]
    pub message: String,
}

fn default_severity() -> String {
    "warning".into()
}

fn name_matches(patterns: &[String], name: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
}

impl PipelineSpec {
    pub fn check(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        {
            return Err("a pipeline name is 1 to 64 letters, digits, '-' or '_'".into());
        }
        if self.steps.is_empty() && self.alerts.is_empty() {
            return Err(format!("pipeline {n} has neither steps nor alerts"));
        }
        for s in &self.steps {
            match s {
                Step::Deadband { delta } if !(delta.is_finite() && *delta >= 0.0) => {
                    return Err(format!(
                        "pipeline {n}: deadband delta must be a number >= 0"
                    ));
                }
                Step::Downsample { every_ms: 0 } => {
                    return Err(format!("pipeline {n}: downsample every_ms must be > 0"));
                }
                Step::Tumbling { size_ms, functions } if *size_ms == 0 || functions.is_empty() => {
                    return Err(format!(
                        "pipeline {n}: a tumbling window needs size_ms > 0 and functions"
                    ));
                }
                Step::Sliding {
                    size_ms,
                    every_ms,
                    functions,
                } if *size_ms == 0
                    || *every_ms == 0
                    || every_ms > size_ms
                    || functions.is_empty() =>
                {
                    return Err(format!(
                        "pipeline {n}: a sliding window needs 0 < every_ms <= size_ms and functions"
                    ));
                }
                _ => {}
            }
        }
        let windows = self
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Tumbling { .. } | Step::Sliding { .. }))
            .count();
        let last_is_window = matches!(
            self.steps.last(),
            Some(Step::Tumbling { .. } | Step::Sliding { .. })
        );
        if windows > 1 || (windows == 1 && !last_is_window) {
            return Err(format!("pipeline {n}: a window may only be the last step"));
        }
        for a in &self.alerts {
            if a.above.is_none() && a.below.is_none() && a.rate_above.is_none() {
                return Err(format!(
                    "pipeline {n}: an alert needs above, below or rate_above"
                ));
            }
            if !matches!(a.severity.as_str(), "info" | "warning" | "critical") {
                return Err(format!(
                    "pipeline {n}: severity is info, warning or critical"
                ));
            }
        }
        Ok(())
    }

    pub fn takes(&self, device: &str, profile: &str, resource: &str) -> bool {
        name_matches(&self.devices, device)
            && name_matches(&self.profiles, profile)
            && name_matches(&self.resources, resource)
    }
}

/// A value on its way through the steps. Origins are nanoseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub origin: i64,
    /// `resource` for raw readings, `resource_fn` for aggregates.
    pub name: String,
    pub value: f64,
}

/// Running aggregate.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Acc {
    min: f64,
    max: f64,
    sum: f64,
    count: u64,
    last: f64,
}

impl Acc {
    fn new() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            count: 0,
            last: f64::NAN,
        }
    }

    fn add(&mut self, v: f64) {
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.count += 1;
        self.last = v;
    }

    fn emit(&self, base: &str, origin: i64, functions: &[Function], out: &mut Vec<Sample>) {
        if self.count == 0 {
            return;
        }
        for f in functions {
            let value = match f {
                Function::Min => self.min,
                Function::Max => self.max,
                Function::Mean => self.sum / self.count as f64,
                Function::Count => self.count as f64,
                Function::Last => self.last,
                Function::Sum => self.sum,
            };
            out.push(Sample {
                origin,
                name: format!("{base}_{}", f.as_str()),
                value,
            });
        }
    }
}

/// The state of one step for one device resource.
#[derive(Debug, Serialize, Deserialize)]
enum StepState {
    Deadband {
        last: Option<f64>,
    },
    Downsample {
        next: i64,
    },
    Range,
    /// `closed`: windows starting before this were emitted.
    Tumbling {
        window: Option<(i64, Acc)>,
        closed: i64,
    },
    Sliding {
        buf: VecDeque<(i64, f64)>,
        next_emit: Option<i64>,
    },
}

const MS: i64 = 1_000_000;

fn window_start(origin: i64, size: i64) -> i64 {
    origin.div_euclid(size) * size
}

impl StepState {
    fn new(step: &Step) -> Self {
        match step {
            Step::Deadband { .. } => Self::Deadband { last: None },
            Step::Downsample { .. } => Self::Downsample { next: i64::MIN },
            Step::Range { .. } => Self::Range,
            Step::Tumbling { .. } => Self::Tumbling {
                window: None,
                closed: i64::MIN,
            },
            Step::Sliding { .. } => Self::Sliding {
                buf: VecDeque::new(),
                next_emit: None,
            },
        }
    }

    /// Feeds one sample; what it lets through goes to `out`. Returns samples that arrived
    /// too late for a window already emitted.
    fn push(&mut self, step: &Step, s: Sample, out: &mut Vec<Sample>) -> u64 {
        match (self, step) {
            (Self::Deadband { last }, Step::Deadband { delta }) => {
                if last.is_none_or(|l| (s.value - l).abs() >= *delta) {
                    *last = Some(s.value);
                    out.push(s);
                }
                0
            }
            (Self::Downsample { next }, Step::Downsample { every_ms }) => {
                if s.origin >= *next {
                    *next = s.origin + (*every_ms as i64) * MS;
                    out.push(s);
                }
                0
            }
            (Self::Range, Step::Range { min, max }) => {
                if min.is_none_or(|m| s.value >= m) && max.is_none_or(|m| s.value <= m) {
                    out.push(s);
                }
                0
            }
            (Self::Tumbling { window, closed }, Step::Tumbling { size_ms, functions }) => {
                let size = (*size_ms as i64) * MS;
                let start = window_start(s.origin, size);
                if start < *closed {
                    return 1;
                }
                match window {
                    Some((w, _)) if start < *w => return 1,
                    Some((w, acc)) if start > *w => {
                        acc.emit(&s.name, *w + size, functions, out);
                        *closed = *w + size;
                        *window = Some((start, Acc::new()));
                    }
                    None => *window = Some((start, Acc::new())),
                    _ => {}
                }
                if let Some((_, acc)) = window {
                    acc.add(s.value);
                }
                0
            }
            (
                Self::Sliding { buf, next_emit },
                Step::Sliding {
                    size_ms,
                    every_ms,
                    functions,
                },
            ) => {
                let (size, every) = ((*size_ms as i64) * MS, (*every_ms as i64) * MS);
                let emit_at = next_emit.get_or_insert(window_start(s.origin, every) + every);
                if s.origin < *emit_at - every {
                    return 1;
                }
                // Emit every boundary this sample passes.
                while s.origin >= *emit_at {
                    let end = *emit_at;
                    while buf.front().is_some_and(|(o, _)| *o < end - size) {
                        buf.pop_front();
                    }
                    let mut acc = Acc::new();
                    for (o, v) in buf.iter() {
                        if *o < end {
                            acc.add(*v);
                        }
                    }
                    acc.emit(&s.name, end, functions, out);
                    *emit_at += every;
                    if buf.is_empty() {
                        // Nothing for a while: jump to the sample's window.
                        *emit_at = (*emit_at).max(window_start(s.origin, every) + every);
                    }
                }
                buf.push_back((s.origin, s.value));
                0
            }
            _ => 0,
        }
    }

    /// Closes windows that ended before `now` (no sample will move them on); emits them.
    fn flush(&mut self, step: &Step, base: &str, now: i64, out: &mut Vec<Sample>) {
        match (self, step) {
            (Self::Tumbling { window, closed }, Step::Tumbling { size_ms, functions }) => {
                let size = (*size_ms as i64) * MS;
                if let Some((w, acc)) = window
                    && *w + size <= now
                {
                    acc.emit(base, *w + size, functions, out);
                    *closed = *w + size;
                    *window = None;
                }
            }
            (
                Self::Sliding { buf, next_emit },
                Step::Sliding {
                    size_ms,
                    every_ms,
                    functions,
                },
            ) => {
                let (size, every) = ((*size_ms as i64) * MS, (*every_ms as i64) * MS);
                while let Some(end) = *next_emit {
                    if end > now || buf.is_empty() {
                        break;
                    }
                    while buf.front().is_some_and(|(o, _)| *o < end - size) {
                        buf.pop_front();
                    }
                    let mut acc = Acc::new();
                    for (_, v) in buf.iter().filter(|(o, _)| *o < end) {
                        acc.add(*v);
                    }
                    acc.emit(base, end, functions, out);
                    *next_emit = Some(end + every);
                }
            }
            _ => {}
        }
    }
}

/// What raised an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub rule: usize,
    pub condition: String,
    pub value: f64,
    pub origin: i64,
}

/// One device resource through one pipeline. Its state is kept across restarts and
/// instances as CBOR (which holds the infinities and NaN of an empty aggregate).
#[derive(Debug, Serialize, Deserialize)]
pub struct Chain {
    resource: String,
    states: Vec<StepState>,
    alert_active: Vec<bool>,
    last: Option<(i64, f64)>,
    pub late: u64,
}

impl Chain {
    pub fn new(spec: &PipelineSpec, resource: &str) -> Self {
        Self {
            resource: resource.to_string(),
            states: spec.steps.iter().map(StepState::new).collect(),
            alert_active: vec![false; spec.alerts.len()],
            last: None,
            late: 0,
        }
    }

    /// Feeds a raw reading: returns what leaves the last step, and alerts that fired.
    pub fn push(
        &mut self,
        spec: &PipelineSpec,
        origin: i64,
        value: f64,
        fired: &mut Vec<Fired>,
    ) -> Vec<Sample> {
        let rate = self.last.and_then(|(o, v)| {
            let dt = (origin - o) as f64 / 1e9;
            (dt > 0.0).then(|| (value - v).abs() / dt)
        });
        for (i, rule) in spec.alerts.iter().enumerate() {
            let mut cond = None;
            if let Some(a) = rule.above
                && value > a
            {
                cond = Some(format!("{} > {a}", self.resource));
            }
            if let Some(b) = rule.below
                && value < b
            {
                cond = Some(format!("{} < {b}", self.resource));
            }
            if let (Some(limit), Some(r)) = (rule.rate_above, rate)
                && r > limit
            {
                cond = Some(format!("|d{}/dt| = {r:.3}/s > {limit}/s", self.resource));
            }
            match cond {
                Some(c) if !self.alert_active[i] => {
                    self.alert_active[i] = true;
                    fired.push(Fired {
                        rule: i,
                        condition: c,
                        value,
                        origin,
                    });
                }
                Some(_) => {}
                None => self.alert_active[i] = false,
            }
        }
        self.last = Some((origin, value));
        let mut current = vec![Sample {
            origin,
            name: self.resource.clone(),
            value,
        }];
        for (state, step) in self.states.iter_mut().zip(&spec.steps) {
            let mut next = Vec::new();
            for s in current {
                self.late += state.push(step, s, &mut next);
            }
            current = next;
            if current.is_empty() {
                break;
            }
        }
        current
    }

    /// Closes windows that ended before `now` and runs what they emit through the steps
    /// after them.
    pub fn flush(&mut self, spec: &PipelineSpec, now: i64) -> Vec<Sample> {
        let mut out = Vec::new();
        for i in 0..self.states.len() {
            let mut emitted = Vec::new();
            self.states[i].flush(&spec.steps[i], &self.resource, now, &mut emitted);
            // What a window emits goes on through the later steps.
            let mut current = emitted;
            for (state, step) in self.states[i + 1..].iter_mut().zip(&spec.steps[i + 1..]) {
                let mut next = Vec::new();
                for s in current {
                    self.late += state.push(step, s, &mut next);
                }
                current = next;
            }
            out.extend(current);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(steps: Vec<Step>, alerts: Vec<AlertRule>) -> PipelineSpec {
        PipelineSpec {
            name: "p".into(),
            devices: vec![],
            profiles: vec![],
            resources: vec![],
            steps,
            alerts,
        }
    }

    const S: i64 = 1_000_000_000;

    #[test]
    fn one_hertz_becomes_one_aggregate_set_per_minute() {
        let p = spec(
            vec![Step::Tumbling {
                size_ms: 60_000,
                functions: vec![
                    Function::Min,
                    Function::Max,
                    Function::Mean,
                    Function::Count,
                ],
            }],
            vec![],
        );
        let mut c = Chain::new(&p, "t");
        let mut out = Vec::new();
        let mut fired = Vec::new();
        for i in 0..180 {
            out.extend(c.push(&p, i * S, i as f64, &mut fired));
        }
        // Two windows closed by later samples; the third by the clock.
        assert_eq!(out.len(), 8);
        assert_eq!(
            out[0],
            Sample {
                origin: 60 * S,
                name: "t_min".into(),
                value: 0.0
            }
        );
        assert_eq!(out[1].value, 59.0);
        assert_eq!(out[2].value, 29.5);
        assert_eq!(out[3].value, 60.0);
        assert_eq!(out[4].value, 60.0);
        let flushed = c.flush(&p, 200 * S);
        assert_eq!(flushed.len(), 4);
        assert_eq!(
            flushed[3],
            Sample {
                origin: 180 * S,
                name: "t_count".into(),
                value: 60.0
            }
        );
        // A sample for a closed window is late.
        c.push(&p, 10 * S, 1.0, &mut fired);
        assert_eq!(c.late, 1);
    }

    #[test]
    fn deadband_and_downsample_pass_only_changes_and_intervals() {
        let p = spec(
            vec![
                Step::Deadband { delta: 1.0 },
                Step::Downsample { every_ms: 2000 },
            ],
            vec![],
        );
        let mut c = Chain::new(&p, "t");
        let mut fired = Vec::new();
        let vals = [10.0, 10.5, 11.0, 11.2, 13.0, 20.0, 20.1];
        let out: Vec<_> = vals
            .iter()
            .enumerate()
            .flat_map(|(i, v)| c.push(&p, i as i64 * S, *v, &mut fired))
            .map(|s| s.value)
            .collect();
        // The deadband passes 10 (t0), 11 (t2), 13 (t4), 20 (t5); the downsample (2 s) drops
        // 20, which comes 1 s after 13.
        assert_eq!(out, vec![10.0, 11.0, 13.0]);
    }

    #[test]
    fn alerts_fire_on_the_edge_not_while_the_condition_holds() {
        let p = spec(
            vec![],
            vec![AlertRule {
                above: Some(80.0),
                below: None,
                rate_above: None,
                severity: "critical".into(),
                message: String::new(),
            }],
        );
        let mut c = Chain::new(&p, "t");
        let mut fired = Vec::new();
        for (i, v) in [50.0, 81.0, 90.0, 85.0, 70.0, 95.0].iter().enumerate() {
            c.push(&p, i as i64 * S, *v, &mut fired);
        }
        assert_eq!(
            fired.iter().map(|f| f.value).collect::<Vec<_>>(),
            vec![81.0, 95.0]
        );
        let rate = spec(
            vec![],
            vec![AlertRule {
                above: None,
                below: None,
                rate_above: Some(5.0),
                severity: "warning".into(),
                message: String::new(),
            }],
        );
        let mut c = Chain::new(&rate, "t");
        let mut fired = Vec::new();
        for (i, v) in [0.0, 1.0, 2.0, 20.0, 21.0].iter().enumerate() {
            c.push(&rate, i as i64 * S, *v, &mut fired);
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].value, 20.0);
    }

    #[test]
    fn sliding_windows_overlap() {
        let p = spec(
            vec![Step::Sliding {
                size_ms: 10_000,
                every_ms: 5000,
                functions: vec![Function::Count],
            }],
            vec![],
        );
        let mut c = Chain::new(&p, "t");
        let mut fired = Vec::new();
        let mut out = Vec::new();
        for i in 0..30 {
            out.extend(c.push(&p, i * S, 1.0, &mut fired));
        }
        // Emitted at 5 s, 10 s, ..., 25 s; each counts up to the last 10 s.
        let counts: Vec<_> = out.iter().map(|s| (s.origin / S, s.value)).collect();
        assert_eq!(
            counts,
            vec![(5, 5.0), (10, 10.0), (15, 10.0), (20, 10.0), (25, 10.0)]
        );
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec(vec![], vec![]).check().is_err());
        assert!(
            spec(vec![Step::Downsample { every_ms: 0 }], vec![])
                .check()
                .is_err()
        );
        assert!(
            spec(vec![Step::Deadband { delta: 0.5 }], vec![])
                .check()
                .is_ok()
        );
        let mut s = spec(vec![Step::Deadband { delta: 0.5 }], vec![]);
        s.name = "bad name".into();
        assert!(s.check().is_err());
    }
}
