//! `outpost notify ...` (support-notifications) and `outpost schedule ...`
//! (support-scheduler).

use anyhow::bail;
use clap::{Args, Subcommand};
use outpost_support_notifications::model as n;
use outpost_support_scheduler::model as j;
use serde_json::{Value, json};

use super::client::{Client, decode, enc, multi_status_entry, ok_or_message};
use super::table::{show_table, time_of};

const NOTIFICATIONS: &str = outpost_support_notifications::SERVICE;
const SCHEDULER: &str = outpost_support_scheduler::SERVICE;

#[derive(Subcommand)]
pub enum NotifyCmd {
    /// Raise a notification: every subscription to its category (and labels) receives it.
    Send {
        /// The category subscriptions match (e.g. alarm).
        #[arg(long)]
        category: Option<String>,
        /// A label subscriptions match (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// MINOR, NORMAL or CRITICAL (CRITICAL ones are escalated when nobody takes them).
        #[arg(long, default_value = "NORMAL", value_parser = ["MINOR", "NORMAL", "CRITICAL"])]
        severity: String,
        /// Who raises it.
        #[arg(long, default_value = "operator")]
        sender: String,
        /// The text sent.
        content: String,
    },
    /// Notifications, newest first (of one category with --category).
    List {
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// Most to show (-1: the service's maximum).
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        limit: i64,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Subscribe a receiver to categories and labels, over one channel (admin).
    Subscribe(Subscribe),
    /// The subscriptions.
    Subscriptions {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a subscription (admin).
    Unsubscribe {
        /// The subscription.
        name: String,
    },
    /// Deliveries and their attempts, newest first.
    Transmissions {
        /// SENT, FAILED, RESENDING, ESCALATED or ACKNOWLEDGED.
        #[arg(long, value_parser = ["SENT", "FAILED", "RESENDING", "ESCALATED", "ACKNOWLEDGED"])]
        status: Option<String>,
        /// Most to show (-1: the service's maximum).
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        limit: i64,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// A name given positionally or by its older flag (clap requires one of them).
fn given<'a>(positional: &'a Option<String>, flag: &'a Option<String>) -> &'a str {
    positional
        .as_deref()
        .or(flag.as_deref())
        .unwrap_or_default()
}

#[derive(Args)]
pub struct Subscribe {
    /// The subscription's name.
    #[arg(required_unless_present = "name_flag")]
    name: Option<String>,
    /// The subscription's name (as `--name NAME`, the older form).
    #[arg(long = "name", hide = true, conflicts_with = "name")]
    name_flag: Option<String>,
    /// A category it receives (repeatable).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// A label it receives (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Who receives (a name).
    #[arg(long, default_value = "operator")]
    receiver: String,
    /// A webhook: notifications are POSTed there (http:// or https://).
    #[arg(long, conflicts_with_all = ["email", "mqtt"])]
    webhook: Option<String>,
    /// E-mail recipients (the node's SMTP server: support_notifications.smtp).
    #[arg(long)]
    email: Vec<String>,
    /// An MQTT broker and topic: mqtt://host:port/topic (mqtts:// for TLS).
    #[arg(long, conflicts_with = "email")]
    mqtt: Option<String>,
    /// Resends of a failed delivery (default: the service's).
    #[arg(long)]
    resend_limit: Option<i64>,
    /// Time between resends, e.g. 30s (default: the service's).
    #[arg(long)]
    resend_interval: Option<String>,
}

/// `scheme://host:port/rest` split; the port from `default_port` when absent.
fn split_url(url: &str, default_port: u16) -> anyhow::Result<(String, String, u16, String)> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{url} is not a URL (scheme://host[:port]/path)");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| anyhow::anyhow!("{url}: port {p} is not a number"))?;
            (h.trim_matches(['[', ']']).to_string(), port)
        }
        _ => (authority.trim_matches(['[', ']']).to_string(), default_port),
    };
    Ok((scheme.to_ascii_lowercase(), host, port, path.to_string()))
}

impl Subscribe {
    fn name(&self) -> &str {
        given(&self.name, &self.name_flag)
    }

    fn channel(&self) -> anyhow::Result<Value> {
        if let Some(url) = &self.webhook {
            let tls = url.to_ascii_lowercase().starts_with("https://");
            let (scheme, host, port, path) = split_url(url, if tls { 443 } else { 80 })?;
            return Ok(
                json!({"type": "REST", "scheme": scheme, "host": host, "port": port,
                "path": if path.is_empty() { "/".to_string() } else { path }, "httpMethod": "POST"}),
            );
        }
        if !self.email.is_empty() {
            return Ok(json!({"type": "EMAIL", "recipients": self.email}));
        }
        if let Some(url) = &self.mqtt {
            let tls = url.to_ascii_lowercase().starts_with("mqtts://");
            let (scheme, host, port, path) = split_url(url, if tls { 8883 } else { 1883 })?;
            let topic = path.trim_start_matches('/');
            if topic.is_empty() {
                bail!("{url} names no topic (mqtt://host:port/topic)");
            }
            return Ok(
                json!({"type": "MQTT", "scheme": scheme, "host": host, "port": port,
                "publisher": format!("outpost-notify-{}", self.name()), "topic": topic, "qos": 1}),
            );
        }
        bail!("give a channel: --webhook URL, --email ADDRESS or --mqtt mqtt://host:port/topic")
    }
}

/// Posts one item of a batch route; its id, or the item's error.
async fn add_one(
    c: &Client,
    svc: &str,
    path: &str,
    item: Value,
    what: &str,
) -> anyhow::Result<String> {
    let (status, resp) = c
        .send_json(reqwest::Method::POST, svc, path, &[item])
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(e) => Ok(e.id),
        Err((code, msg)) => bail!("cannot add {what}: {code} {msg}"),
    }
}

pub async fn notify(c: &Client, cmd: NotifyCmd) -> anyhow::Result<()> {
    match cmd {
        NotifyCmd::Send {
            category,
            labels,
            severity,
            sender,
            content,
        } => {
            let mut note = json!({"labels": labels, "severity": severity, "sender": sender,
                "content": content, "contentType": "text/plain"});
            if let Some(cat) = category {
                note["category"] = cat.into();
            }
            let item = json!({"apiVersion": "v3", "notification": note});
            let id = add_one(c, NOTIFICATIONS, "/notification", item, "the notification").await?;
            println!("notification {id} accepted");
        }
        NotifyCmd::List {
            category,
            limit,
            json,
        } => {
            let path = match category {
                Some(cat) => format!("/notification/category/{}?limit={limit}", enc(&cat)),
                None => format!("/notification/start/0/end/{}?limit={limit}", i64::MAX),
            };
            let v = c.get(NOTIFICATIONS, &path).await?;
            show_table(
                v,
                json,
                &[
                    "CREATED", "SEVERITY", "CATEGORY", "STATUS", "ACK", "CONTENT",
                ],
                |page: Value| {
                    items::<n::Notification>(&page, "notifications")
                        .iter()
                        .map(|x| {
                            vec![
                                time_of(x.created.saturating_mul(1_000_000)),
                                x.severity.clone(),
                                x.category.clone(),
                                x.status.clone(),
                                x.acknowledged.to_string(),
                                x.content.chars().take(60).collect(),
                            ]
                        })
                        .collect()
                },
            )?;
        }
        NotifyCmd::Subscribe(s) => {
            let mut sub = json!({"name": s.name(), "channels": [s.channel()?], "receiver": s.receiver,
                "categories": s.categories, "labels": s.labels, "adminState": "UNLOCKED"});
            if let Some(l) = s.resend_limit {
                sub["resendLimit"] = l.into();
            }
            if let Some(i) = &s.resend_interval {
                sub["resendInterval"] = i.clone().into();
            }
            let item = json!({"apiVersion": "v3", "subscription": sub});
            add_one(c, NOTIFICATIONS, "/subscription", item, "the subscription").await?;
            println!("subscription {} added", s.name());
        }
        NotifyCmd::Subscriptions { json } => {
            let v = c.get(NOTIFICATIONS, "/subscription/all?limit=-1").await?;
            show_table(
                v,
                json,
                &["NAME", "CATEGORIES", "LABELS", "CHANNELS", "STATE"],
                |page: Value| {
                    items::<n::Subscription>(&page, "subscriptions")
                        .iter()
                        .map(|x| {
                            vec![
                                x.name.clone(),
                                x.categories.join(","),
                                x.labels.join(","),
                                x.channels
                                    .iter()
                                    .map(|ch| ch.kind.clone())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                x.admin_state.clone(),
                            ]
                        })
                        .collect()
                },
            )?;
        }
        NotifyCmd::Unsubscribe { name } => {
            c.delete(NOTIFICATIONS, &format!("/subscription/name/{}", enc(&name)))
                .await?;
            println!("subscription {name} removed");
        }
        NotifyCmd::Transmissions {
            status,
            limit,
            json,
        } => {
            let path = match status {
                Some(s) => format!("/transmission/status/{}?limit={limit}", enc(&s)),
                None => format!("/transmission/all?limit={limit}"),
            };
            let v = c.get(NOTIFICATIONS, &path).await?;
            show_table(
                v,
                json,
                &[
                    "CREATED",
                    "SUBSCRIPTION",
                    "CHANNEL",
                    "STATUS",
                    "RESENDS",
                    "LAST RESPONSE",
                ],
                |page: Value| {
                    items::<n::Transmission>(&page, "transmissions")
                        .iter()
                        .map(|t| {
                            vec![
                                time_of(t.created.saturating_mul(1_000_000)),
                                t.subscription_name.clone(),
                                t.channel.kind.clone(),
                                t.status.clone(),
                                t.resend_count.to_string(),
                                t.records
                                    .last()
                                    .map(|r| r.response.chars().take(60).collect())
                                    .unwrap_or_default(),
                            ]
                        })
                        .collect()
                },
            )?;
        }
    }
    Ok(())
}

/// The items of a list answer's `field`, as `T` (those that do not read as `T` left out).
fn items<T: serde::de::DeserializeOwned>(page: &Value, field: &str) -> Vec<T> {
    decode::<Vec<Value>>(page[field].clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| decode(v).ok())
        .collect()
}

#[derive(Subcommand)]
pub enum ScheduleCmd {
    /// Add a job (admin): when (--every or --cron) and what (--rest, --publish or
    /// --device).
    Add(AddJob),
    /// The jobs.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job as stored.
    Show {
        /// The job.
        name: String,
    },
    /// Run a job now (admin).
    Trigger {
        /// The job.
        name: String,
    },
    /// Stop a job from running on its schedule (admin).
    Lock {
        /// The job.
        name: String,
    },
    /// Let a locked job run again (admin).
    Unlock {
        /// The job.
        name: String,
    },
    /// Remove a job (admin); its records stay.
    Rm {
        /// The job.
        name: String,
    },
    /// Records of the jobs' runs, newest first.
    Records {
        /// Only this job's records.
        #[arg(long)]
        job: Option<String>,
        /// SUCCEEDED, FAILED or MISSED.
        #[arg(long, value_parser = ["SUCCEEDED", "FAILED", "MISSED"])]
        status: Option<String>,
        /// Most to show (-1: the service's maximum).
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        limit: i64,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct AddJob {
    /// The job's name.
    #[arg(required_unless_present = "name_flag")]
    name: Option<String>,
    /// The job's name (as `--name NAME`, the older form).
    #[arg(long = "name", hide = true, conflicts_with = "name")]
    name_flag: Option<String>,
    /// Run every DURATION (e.g. 30s, 1h).
    #[arg(long, conflicts_with = "cron", required_unless_present = "cron")]
    every: Option<String>,
    /// Run on a crontab, UTC (5 fields, or 6 with seconds first; @daily, @every 5m).
    #[arg(long)]
    cron: Option<String>,
    /// Call METHOD URL (a service of the node by name: http://core-data/api/v3/...).
    #[arg(long, num_args = 2, value_names = ["METHOD", "URL"])]
    rest: Vec<String>,
    /// Publish the payload on this bus topic.
    #[arg(long, conflicts_with = "rest")]
    publish: Option<String>,
    /// Write DEVICE's resource or command SOURCE with the payload (a JSON object).
    #[arg(long, num_args = 2, value_names = ["DEVICE", "SOURCE"], conflicts_with_all = ["rest", "publish"])]
    device: Vec<String>,
    /// The body, message or values sent (JSON or text).
    #[arg(long)]
    payload: Option<String>,
    /// Added locked: it runs only when triggered until unlocked.
    #[arg(long)]
    locked: bool,
}

impl AddJob {
    fn name(&self) -> &str {
        given(&self.name, &self.name_flag)
    }

    fn body(&self) -> anyhow::Result<Value> {
        let definition = match (&self.every, &self.cron) {
            (Some(e), _) => json!({"type": j::INTERVAL, "interval": e}),
            (None, Some(c)) => json!({"type": j::CRON, "crontab": c}),
            (None, None) => bail!("give --every DURATION or --cron CRONTAB"),
        };
        let payload = self.payload.clone().unwrap_or_default();
        let action = match (&self.rest[..], &self.publish, &self.device[..]) {
            ([method, url], _, _) => {
                json!({"type": j::action::REST, "method": method.to_ascii_uppercase(),
                "address": url, "payload": payload})
            }
            (_, Some(topic), _) => {
                json!({"type": j::action::MESSAGE_BUS, "topic": topic, "payload": payload})
            }
            (_, _, [device, source]) => {
                json!({"type": j::action::DEVICE_CONTROL, "deviceName": device,
                "sourceName": source, "payload": payload})
            }
            _ => bail!(
                "give what the job does: --rest METHOD URL, --publish TOPIC or --device DEVICE SOURCE"
            ),
        };
        let state = if self.locked { j::LOCKED } else { j::UNLOCKED };
        Ok(
            json!({"apiVersion": "v3", "scheduleJob": {"name": self.name(), "definition": definition,
            "actions": [action], "adminState": state}}),
        )
    }
}

async fn set_state(c: &Client, name: &str, state: &str) -> anyhow::Result<()> {
    let body = [json!({"apiVersion": "v3", "scheduleJob": {"name": name, "adminState": state}})];
    let (status, resp) = c
        .send_json(reqwest::Method::PATCH, SCHEDULER, "/job", &body)
        .await?;
    match multi_status_entry(status, &resp) {
        Ok(_) => Ok(()),
        Err((code, msg)) => bail!("cannot change job {name}: {code} {msg}"),
    }
}

pub async fn schedule(c: &Client, cmd: ScheduleCmd) -> anyhow::Result<()> {
    match cmd {
        ScheduleCmd::Add(a) => {
            add_one(
                c,
                SCHEDULER,
                "/job",
                a.body()?,
                &format!("job {}", a.name()),
            )
            .await?;
            println!("job {} added", a.name());
        }
        ScheduleCmd::List { json } => {
            let v = c.get(SCHEDULER, "/job/all?limit=-1").await?;
            show_table(
                v,
                json,
                &["NAME", "WHEN", "ACTIONS", "STATE"],
                |page: Value| {
                    items::<j::ScheduleJob>(&page, "scheduleJobs")
                        .iter()
                        .map(|x| {
                            let when = match x.definition.kind.as_str() {
                                j::INTERVAL => format!("every {}", x.definition.interval),
                                _ => format!("cron {}", x.definition.crontab),
                            };
                            let actions =
                                x.actions.iter().map(|a| a.kind.clone()).collect::<Vec<_>>();
                            vec![
                                x.name.clone(),
                                when,
                                actions.join(","),
                                x.admin_state.clone(),
                            ]
                        })
                        .collect()
                },
            )?;
        }
        ScheduleCmd::Show { name } => {
            let v = c
                .get(SCHEDULER, &format!("/job/name/{}", enc(&name)))
                .await?;
            super::table::print_json(&v["scheduleJob"]);
        }
        ScheduleCmd::Trigger { name } => {
            let (status, body) = c
                .send_json(
                    reqwest::Method::POST,
                    SCHEDULER,
                    &format!("/job/trigger/name/{}", enc(&name)),
                    &Value::Null,
                )
                .await?;
            ok_or_message(status, body)?;
            println!("job {name} ran (see `outpost schedule records --job {name}`)");
        }
        ScheduleCmd::Lock { name } => {
            set_state(c, &name, j::LOCKED).await?;
            println!("job {name} locked");
        }
        ScheduleCmd::Unlock { name } => {
            set_state(c, &name, j::UNLOCKED).await?;
            println!("job {name} unlocked");
        }
        ScheduleCmd::Rm { name } => {
            c.delete(SCHEDULER, &format!("/job/name/{}", enc(&name)))
                .await?;
            println!("job {name} removed");
        }
        ScheduleCmd::Records {
            job,
            status,
            limit,
            json,
        } => {
            let path = match (job, status) {
                (Some(jn), Some(s)) => format!(
                    "/scheduleactionrecord/job/name/{}/status/{}",
                    enc(&jn),
                    enc(&s)
                ),
                (Some(jn), None) => format!("/scheduleactionrecord/job/name/{}", enc(&jn)),
                (None, Some(s)) => format!("/scheduleactionrecord/status/{}", enc(&s)),
                (None, None) => "/scheduleactionrecord/all".to_string(),
            };
            let v = c.get(SCHEDULER, &format!("{path}?limit={limit}")).await?;
            show_table(
                v,
                json,
                &["SCHEDULED", "JOB", "ACTION", "STATUS"],
                |page: Value| {
                    items::<j::ScheduleActionRecord>(&page, "scheduleActionRecords")
                        .iter()
                        .map(|r| {
                            vec![
                                time_of(r.scheduled_at.saturating_mul(1_000_000)),
                                r.job_name.clone(),
                                r.action.kind.clone(),
                                r.status.clone(),
                            ]
                        })
                        .collect()
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_and_path() {
        assert_eq!(
            split_url("https://hooks.example.com/alerts", 443).unwrap(),
            (
                "https".into(),
                "hooks.example.com".into(),
                443,
                "/alerts".into()
            )
        );
        assert_eq!(
            split_url("mqtt://[::1]:1884/site/alerts", 1883).unwrap(),
            ("mqtt".into(), "::1".into(), 1884, "/site/alerts".into())
        );
        assert!(split_url("hooks.example.com", 80).is_err());
        assert!(split_url("http://h:x/", 80).is_err());
    }
}
