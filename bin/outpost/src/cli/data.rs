//! `outpost readings` and `outpost events tail`: what devices sent, from core-data and live
//! from the bus.

use std::path::Path;
use std::time::Duration;

use outpost_contracts::event::{
    MultiReadingsResponse, NumericMode, Reading, ReadingValue, RetentionRun, RetentionRunResponse,
    RetentionState, RetentionStatus, RetentionTrigger,
};

use outpost_contracts::metadata::{DeviceProfileResponse, DeviceResponse, MultiDevicesResponse};
use outpost_kit::edgex::did_you_mean;

use super::client::{Client, NotFound, decode, enc, ok_or_message};
use super::progress::{Progress, Unit};
use super::table::{print_json, show, span, table, time_of};
use crate::config::NodeConfig;

pub async fn readings(
    c: &Client,
    device: &str,
    resource: Option<&str>,
    since: Option<Duration>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/reading/device/name/{}", enc(device));
    if let Some(r) = resource {
        path.push_str(&format!("/resourceName/{}", enc(r)));
    }
    if let Some(since) = since {
        let now = outpost_contracts::now_nanos();
        let start = now.saturating_sub(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX));
        path.push_str(&format!("/start/{start}/end/{now}"));
    }
    path.push_str(&format!("?limit={limit}"));
    let v = c.get(outpost_core_data::SERVICE, &path).await?;
    if v["readings"].as_array().is_none_or(Vec::is_empty) {
        known(c, device, resource).await?;
    }
    show(v, json, |page: MultiReadingsResponse| {
        let readings = page
            .readings
            .into_iter()
            .map(decode)
            .collect::<anyhow::Result<Vec<Reading>>>()?;
        let rows: Vec<Vec<String>> = readings
            .iter()
            .map(|r| {
                vec![
                    time_of(r.origin),
                    r.resource_name.clone(),
                    r.value_type.as_str().to_string(),
                    reading_value(r),
                    r.units.clone(),
                ]
            })
            .collect();
        table(&["ORIGIN", "RESOURCE", "TYPE", "VALUE", "UNITS"], &rows);
        let total = page.page.total_count;
        if total as usize > readings.len() {
            eprintln!("({} of {total} readings; use --limit)", readings.len());
        }
        Ok(())
    })
}

/// Nothing stored for `device` (and `resource`): a not-found error with the nearest name
/// when the node does not know the name, rather than an empty table.
async fn known(c: &Client, device: &str, resource: Option<&str>) -> anyhow::Result<()> {
    const MD: &str = outpost_core_metadata::SERVICE;
    let d = match c.get(MD, &format!("/device/name/{}", enc(device))).await {
        Ok(v) => decode::<DeviceResponse>(v)?.device,
        Err(e) if e.is::<NotFound>() => {
            let all: MultiDevicesResponse = decode(c.get(MD, "/device/all?limit=-1").await?)?;
            let hint = did_you_mean(device, all.devices.iter().map(|d| d.name.as_str()));
            return Err(NotFound(format!("no device {device}{hint}")).into());
        }
        Err(e) => return Err(e),
    };
    let Some(resource) = resource else {
        return Ok(());
    };
    let path = format!("/deviceprofile/name/{}", enc(&d.profile_name));
    let profile = decode::<DeviceProfileResponse>(c.get(MD, &path).await?)?.profile;
    let names = || profile.device_resources.iter().map(|r| r.name.as_str());
    if names().any(|n| n == resource) {
        return Ok(());
    }
    Err(NotFound(format!(
        "device {device} (profile {}) has no resource {resource}{}",
        d.profile_name,
        did_you_mean(resource, names())
    ))
    .into())
}

pub async fn events_tail(
    cfg: &NodeConfig,
    data_dir: &Path,
    device: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let shutdown = outpost_kit::Shutdown::new();
    shutdown.listen_for_signals(false);
    let mut opts = outpost_bus::Options::plain(format!("cli-{}", std::process::id()));
    opts.create_credentials = false;
    let connect = outpost_bus::Bus::connect(&cfg.bus, data_dir, "cli", opts, &shutdown);
    let bus = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "cannot connect to the bus at {} (is the node up? run on the node, or pass its --data-dir)",
                cfg.bus.url
            )
        })??;
    let filter = format!("{}/events/#", cfg.bus.base_topic);
    let mut rx = bus.subscribe(&filter).await?;
    eprintln!("following {filter} on {} (Ctrl-C to stop)", cfg.bus.url);
    loop {
        let d = tokio::select! {
            () = shutdown.wait() => break,
            d = rx.recv() => d,
        };
        let Some(d) = d else { break };
        let Some(env) = bus.decode_event(&d) else {
            eprintln!(
                "{}: undecodable message ({} bytes)",
                d.topic,
                d.payload.len()
            );
            continue;
        };
        let ev = env.payload.event;
        if device.is_some_and(|want| want != ev.device_name) {
            continue;
        }
        if json {
            println!("{}", ev.to_json(NumericMode::Strings));
            continue;
        }
        let values: Vec<String> = ev
            .readings
            .iter()
            .map(|r| format!("{}={}", r.resource_name, reading_value(r)))
            .collect();
        println!(
            "{} {} {} {}",
            time_of(ev.origin),
            ev.device_name,
            ev.source_name,
            values.join(" ")
        );
    }
    bus.disconnect().await;
    Ok(())
}

/// A reading's value for people: floats as decimals (`22.25`, not EdgeX's `2.225e+01`,
/// which `--json` keeps), binary values by their media type.
pub(crate) fn reading_value(r: &Reading) -> String {
    match &r.value {
        ReadingValue::Simple(v) => human_value(r.value_type.as_str(), v),
        ReadingValue::Object(o) => o.to_string(),
        ReadingValue::Binary { media_type, .. } => format!("<{media_type} binary>"),
        ReadingValue::Null => String::new(),
    }
}

/// `value` of EdgeX type `value_type` as people write it: a Float32 or Float64 in EdgeX's
/// exponent form in the shortest decimal that reads back the same; anything else as is.
pub(crate) fn human_value(value_type: &str, value: &str) -> String {
    let decimal = match value_type {
        "Float32" => value.parse::<f32>().ok().map(|f| f.to_string()),
        "Float64" => value.parse::<f64>().ok().map(|f| f.to_string()),
        _ => None,
    };
    decimal.unwrap_or_else(|| value.to_string())
}

/// `outpost retention status`.
pub async fn retention_status(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.get(outpost_core_data::SERVICE, "/retention").await?;
    show(v, json, |s: RetentionStatus| {
        let bounds = match s.max_age_seconds {
            0 => String::new(),
            age => format!("; events older than {}", span(age.saturating_mul(1000))),
        };
        println!(
            "retention  {}",
            if s.enabled {
                format!("on, every {}", span(s.interval_ms))
            } else {
                "off (only runs asked for)".into()
            }
        );
        println!(
            "bounds     over {} readings, the oldest go until {} remain{bounds}",
            s.max_cap, s.min_cap
        );
        println!(
            "stored     {} readings in {} events",
            s.stored_readings, s.stored_events
        );
        match &s.run {
            None => println!("last run   none has removed anything since core-data started"),
            Some(r) => println!("last run   {}", run_line(r)),
        }
        Ok(())
    })
}

/// A run in one line: its state, how it began, what it removed.
fn run_line(r: &RetentionRun) -> String {
    let trigger = match r.trigger {
        RetentionTrigger::Interval => "periodic",
        RetentionTrigger::Request => "asked for",
    };
    let age = match r.max_age_seconds {
        0 => String::new(),
        a => format!(", older than {}", span(a.saturating_mul(1000))),
    };
    let took = r
        .finished
        .map(|f| {
            format!(
                " in {}",
                span(u64::try_from((f - r.started) / 1_000_000).unwrap_or(0))
            )
        })
        .unwrap_or_default();
    let removed = format!(
        "removed {} readings ({} events)",
        r.removed_readings, r.removed_events
    );
    match r.state {
        RetentionState::Running => format!(
            "running ({trigger}{age}, started {}): {removed} of {}",
            time_of(r.started),
            r.to_remove
        ),
        RetentionState::Done => {
            format!(
                "done ({trigger}{age}, {}): {removed}{took}",
                time_of(r.started)
            )
        }
        RetentionState::Failed => format!(
            "failed ({trigger}{age}, {}): {removed}{took}, then: {}",
            time_of(r.started),
            r.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// `outpost retention run`: starts a run (or finds the one under way) and, with `follow`,
/// shows its progress until it ends; a failed run is an error.
pub async fn retention_run(
    c: &Client,
    older_than: Option<Duration>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let body = match older_than {
        Some(d) => serde_json::json!({ "maxAgeSeconds": d.as_secs().max(1) }),
        None => serde_json::json!({}),
    };
    let (status, answer) = c
        .send_json(
            reqwest::Method::POST,
            outpost_core_data::SERVICE,
            "/retention/run",
            &body,
        )
        .await?;
    let started: RetentionRunResponse = match status {
        reqwest::StatusCode::ACCEPTED => decode(answer)?,
        reqwest::StatusCode::CONFLICT => {
            let r: RetentionRunResponse = decode(answer)?;
            eprintln!(
                "a retention run is already under way (started {}); following it instead",
                time_of(r.run.started)
            );
            r
        }
        _ => return ok_or_message(status, answer).map(drop),
    };
    if !follow {
        if json {
            print_json(&serde_json::to_value(&started)?);
        } else {
            println!("retention run {} started", started.run.id);
        }
        return Ok(());
    }
    let id = started.run.id;
    let mut bar =
        Progress::new("retention", Unit::Items("readings"), started.run.to_remove).lines();
    let end = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let v = c.get(outpost_core_data::SERVICE, "/retention").await?;
        let s: RetentionStatus = decode(v.clone())?;
        let Some(run) = s.run.filter(|r| r.id == id) else {
            anyhow::bail!("core-data no longer reports run {id} (did it restart?)");
        };
        bar.set(
            run.removed_readings,
            run.to_remove.max(run.removed_readings),
        );
        if run.state != RetentionState::Running {
            bar.done();
            break (v, run);
        }
    };
    let (v, run) = end;
    if json {
        print_json(&v);
    } else {
        println!("{}", run_line(&run));
    }
    if run.state == RetentionState::Failed {
        anyhow::bail!(
            "the retention run failed: {}",
            run.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::human_value;

    #[test]
    fn floats_are_shown_as_decimals_and_the_rest_as_sent() {
        assert_eq!(human_value("Float64", "2.225e+01"), "22.25");
        assert_eq!(human_value("Float32", "2.125e+01"), "21.25");
        assert_eq!(human_value("Float64", "-4e-03"), "-0.004");
        assert_eq!(human_value("Float64", "NaN"), "NaN");
        assert_eq!(human_value("Int16", "-7"), "-7");
        assert_eq!(human_value("String", "2.5e+01"), "2.5e+01");
        assert_eq!(human_value("Float64", "not a number"), "not a number");
    }
}
