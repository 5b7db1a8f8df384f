//! Prototype load generator.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use mqtt5::{ConnectOptions, MqttClient, PublishOptions, QoS, SubscribeOptions};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Broker {
        #[arg(long)]
        port: u16,
    },
    Pub {
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 10)]
        readings: usize,
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    Sub {
        #[arg(long)]
        url: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        deferred: bool,
    },
}

fn payload(i: u64, readings: usize) -> Vec<u8> {
    let rs: Vec<_> = (0..readings)
        .map(|r| {
            serde_json::json!({"id":"7a1b2c3d-0000-4000-8000-000000000000","origin":1700000000000000000u64 + i,"deviceName":"dev-1","resourceName":format!("r{r}"),"profileName":"p","valueType":"Float64","value":format!("{}.5", i % 1000)})
        })
        .collect();
    let ev = serde_json::json!({"apiVersion":"v3","event":{"apiVersion":"v3","id":"7a1b2c3d-0000-4000-8000-000000000001","deviceName":"dev-1","profileName":"p","sourceName":"s","origin":1700000000000000000u64 + i,"readings":rs}});
    let env = serde_json::json!({"apiVersion":"v3","receivedTopic":"","correlationID":"x","requestID":"y","errorCode":0,"payload":ev,"contentType":"application/json"});
    serde_json::to_vec(&env).unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Broker { port } => {
            let mut b = mqtt5::broker::MqttBroker::bind(format!("127.0.0.1:{port}")).await?;
            b.run().await?;
        }
        Cmd::Pub {
            url,
            count,
            readings,
            window,
        } => {
            let client = MqttClient::with_options(ConnectOptions::new("pub"));
            client.connect(&url).await?;
            let client = Arc::new(client);
            let sem = Arc::new(tokio::sync::Semaphore::new(window));
            let start = Instant::now();
            let mut tasks = Vec::new();
            let pl = payload(0, readings);
            for _i in 0..count {
                let p = pl.clone();
                let permit = sem.clone().acquire_owned().await?;
                let c = client.clone();
                tasks.push(tokio::spawn(async move {
                    let r = c
                        .publish_with_options(
                            "edgex/events/device/svc/p/dev-1/s",
                            p,
                            PublishOptions {
                                qos: QoS::AtLeastOnce,
                                ..Default::default()
                            },
                        )
                        .await;
                    drop(permit);
                    r.is_ok()
                }));
            }
            let mut ok = 0;
            for t in tasks {
                if t.await? {
                    ok += 1;
                }
            }
            let el = start.elapsed();
            println!(
                "pub {ok}/{count} in {el:?}: {:.0} msg/s",
                count as f64 / el.as_secs_f64()
            );
        }
        Cmd::Sub {
            url,
            count,
            deferred,
        } => {
            let opts = ConnectOptions::new("sub")
                .with_deferred_ack(deferred)
                .with_clean_start(false)
                .with_resume_existing_session(true)
                .with_session_expiry_interval(3600)
                .with_receive_maximum(4096);
            let client = MqttClient::with_options(opts);
            client.connect(&url).await?;
            let n = Arc::new(AtomicU64::new(0));
            let first = Arc::new(std::sync::Mutex::new(None::<Instant>));
            let (n2, f2) = (n.clone(), first.clone());
            if deferred {
                client
                    .subscribe_with_ack(
                        "edgex/events/#",
                        SubscribeOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                        move |_p, tok| {
                            f2.lock().unwrap().get_or_insert_with(Instant::now);
                            n2.fetch_add(1, Ordering::Relaxed);
                            tok.ack();
                        },
                    )
                    .await?;
            } else {
                client
                    .subscribe_with_options(
                        "edgex/events/#",
                        SubscribeOptions {
                            qos: QoS::AtLeastOnce,
                            ..Default::default()
                        },
                        move |_p| {
                            f2.lock().unwrap().get_or_insert_with(Instant::now);
                            n2.fetch_add(1, Ordering::Relaxed);
                        },
                    )
                    .await?;
            }
            println!("ready");
            while n.load(Ordering::Relaxed) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let el = first.lock().unwrap().unwrap().elapsed();
            println!(
                "sub {count} in {el:?}: {:.0} msg/s",
                count as f64 / el.as_secs_f64()
            );
        }
    }
    Ok(())
}
