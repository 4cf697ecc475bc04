//! A JetStream server for the tests: the one `NATS_URL` names (`.ci/run` starts it), or,
//! without it, a `nats-server` of the test's own on a free loopback port with its own
//! storage directory, stopped when the test ends.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};

pub struct Server {
    pub url: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Server {
    pub async fn start() -> Server {
        if let Ok(url) = std::env::var("NATS_URL") {
            return Server {
                url,
                child: None,
                dir: None,
            };
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("bp-nats-{}-{port}", std::process::id()));
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "these tests need a JetStream server: set NATS_URL, or install nats-server \
                 (Debian: apt-get install nats-server)",
            );
        let server = Server {
            url: format!("127.0.0.1:{port}"),
            child: Some(child),
            dir: Some(dir),
        };
        // Ready when it accepts a connection (bounded: 10 s); JetStream starts before the
        // listener.
        let start = Instant::now();
        loop {
            if let Ok(client) = async_nats::connect(&server.url).await {
                if client.flush().await.is_ok() {
                    return server;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.expect("connect"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh stream `name` on `name.>` (deleted first if a run left it).
pub async fn stream(js: &jetstream::Context, name: &str) -> stream::Stream {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .expect("create the stream")
}

/// A durable pull consumer with explicit acks.
pub async fn consumer(
    stream: &stream::Stream,
    name: &str,
    ack_wait: Duration,
) -> jetstream::consumer::PullConsumer {
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            ack_wait,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .expect("create the consumer")
}

/// Publishes `n` messages `0..n` (the payload is the id, 8 digits) on `subject(i)`, with
/// up to 1024 publish acks in flight.
pub async fn publish(js: &jetstream::Context, n: u64, subject: impl Fn(u64) -> String) {
    let mut acks = Vec::with_capacity(1024);
    for i in 0..n {
        let ack = js
            .publish(subject(i), format!("{i:08}").into())
            .await
            .expect("publish");
        acks.push(ack);
        if acks.len() == 1024 || i + 1 == n {
            for ack in acks.drain(..) {
                ack.await.expect("the stream stored it");
            }
        }
    }
}

/// The id a message carries.
pub fn id(msg: &async_nats::jetstream::Message) -> u64 {
    std::str::from_utf8(&msg.payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("a payload of 8 digits")
}

/// Polls `cond` every 10 ms until it holds (a condition on the broker or on files written
/// by other processes: nothing to be woken by), failing after `within`.
pub async fn until<F, Fut>(within: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
