//! `TokioSpawner` on current-thread and multi-thread runtimes: the constructors tell a
//! runtime without a timer from one with, a sleep ends when its runtime shuts down, and
//! none of it prints a panic message.
//!
//! Whether something printed is seen from a child process: the test re-runs this binary with
//! only itself selected and `CHILD` naming it; the child runs the body, the parent reads the
//! child's stderr.

#![cfg(feature = "tokio")]

use std::env;
use std::process::Command;
use std::time::{Duration, Instant};

use backpressure_pipeline::{Spawner, TokioSpawner};
use futures_util::poll;
use tokio::runtime::{Builder, Runtime};

/// Set in a child to the name of the test it runs.
const CHILD: &str = "BACKPRESSURE_PIPELINE_TOKIO_SPAWNER_CHILD";

/// Long enough never to elapse during a test.
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
enum Flavour {
    CurrentThread,
    MultiThread,
}

const FLAVOURS: [Flavour; 2] = [Flavour::CurrentThread, Flavour::MultiThread];

fn runtime(flavour: Flavour, timer: bool) -> Runtime {
    let mut builder = match flavour {
        Flavour::CurrentThread => Builder::new_current_thread(),
        Flavour::MultiThread => {
            let mut builder = Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    };
    if timer {
        builder.enable_time();
    }
    builder.build().unwrap()
}

/// In the parent, runs test `name` alone in a child process and asserts that it passed and
/// printed no panic message; in the child (`CHILD` is `name`), runs `body`.
fn assert_prints_no_panic(name: &str, body: impl FnOnce()) {
    if env::var_os(CHILD).is_some_and(|child| child == name) {
        body();
        return;
    }
    let output = Command::new(env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--include-ignored"])
        .env(CHILD, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // A name that matches no test runs nothing and passes: make sure the body ran.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "the child did not run `{name}`\n--- stdout\n{stdout}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the child printed a panic\n--- stderr\n{stderr}"
    );
}

fn assert_constructors_tell_timer_apart() {
    const NO_TIMER: &str =
        "cannot spawn a task: the tokio runtime has no timer; build it with `enable_time()`";
    for flavour in FLAVOURS {
        let rt = runtime(flavour, false);
        let err = TokioSpawner::new(rt.handle().clone()).unwrap_err();
        assert_eq!(err.to_string(), NO_TIMER, "{flavour:?}");
        let err = rt.block_on(async { TokioSpawner::current() }).unwrap_err();
        assert_eq!(err.to_string(), NO_TIMER, "{flavour:?}");

        let rt = runtime(flavour, true);
        assert!(
            TokioSpawner::new(rt.handle().clone()).is_ok(),
            "{flavour:?}"
        );
        let current = rt.block_on(async { TokioSpawner::current() });
        assert!(current.is_ok(), "{flavour:?}");
    }
    let err = TokioSpawner::current().unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot spawn a task: not inside a tokio runtime"
    );
}

#[test]
fn constructors_tell_a_runtime_without_timer_from_one_with() {
    assert_constructors_tell_timer_apart();
}

// tokio 1.x has no panic-free way to ask a runtime whether its timer is enabled (the query is
// proposed in tokio-rs/tokio#8361), so the constructors catch tokio's panic; the panic hook
// must not report that one.
#[test]
fn constructors_print_no_panic() {
    assert_prints_no_panic(
        "constructors_print_no_panic",
        assert_constructors_tell_timer_apart,
    );
}

/// After a probe, every other panic still reaches the panic hook, on the probing thread too.
#[test]
fn other_panics_are_still_reported() {
    if std::env::var_os(CHILD).is_some() {
        let rt = runtime(Flavour::CurrentThread, false);
        assert!(TokioSpawner::new(rt.handle().clone()).is_err());
        let caught = std::panic::catch_unwind(|| panic!("an unrelated panic"));
        assert!(caught.is_err());
        return;
    }
    let output = Command::new(env::current_exe().unwrap())
        .args(["other_panics_are_still_reported", "--exact", "--nocapture"])
        .env(CHILD, "other_panics_are_still_reported")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("an unrelated panic"), "{stderr}");
    assert!(!stderr.contains("timers are disabled"), "{stderr}");
}

/// A sleep first polled after its runtime was dropped ends at once, and prints nothing.
#[test]
fn sleep_after_its_runtime_is_dropped_ends_without_a_panic() {
    assert_prints_no_panic(
        "sleep_after_its_runtime_is_dropped_ends_without_a_panic",
        || {
            for flavour in FLAVOURS {
                let rt = runtime(flavour, true);
                let spawner = TokioSpawner::new(rt.handle().clone()).unwrap();
                drop(rt);
                smol::block_on(spawner.sleep(HOUR));
            }
        },
    );
}

/// A sleep waiting when its runtime is dropped ends at once, and prints nothing.
#[test]
fn sleep_waiting_when_its_runtime_is_dropped_ends_without_a_panic() {
    assert_prints_no_panic(
        "sleep_waiting_when_its_runtime_is_dropped_ends_without_a_panic",
        || {
            for flavour in FLAVOURS {
                let rt = runtime(flavour, true);
                let spawner = TokioSpawner::new(rt.handle().clone()).unwrap();
                let mut sleep = spawner.sleep(HOUR);
                rt.block_on(async {
                    assert!(poll!(&mut sleep).is_pending(), "{flavour:?}");
                    // Lets the runtime start the timer.
                    tokio::task::yield_now().await;
                    assert!(poll!(&mut sleep).is_pending(), "{flavour:?}");
                });
                drop(rt);
                smol::block_on(sleep);
            }
        },
    );
}

#[test]
fn sleep_waits_for_its_duration() {
    const NAP: Duration = Duration::from_millis(20);
    for flavour in FLAVOURS {
        let rt = runtime(flavour, true);
        let spawner = TokioSpawner::new(rt.handle().clone()).unwrap();
        let begun = Instant::now();
        rt.block_on(spawner.sleep(NAP));
        assert!(begun.elapsed() >= NAP, "{flavour:?}: {:?}", begun.elapsed());
        // Awaited from another executor, it is the runtime's timer that wakes it; only the
        // multi-thread runtime turns its timer while nobody is inside `block_on`.
        if let Flavour::MultiThread = flavour {
            let begun = Instant::now();
            smol::block_on(spawner.sleep(NAP));
            assert!(begun.elapsed() >= NAP, "{flavour:?}: {:?}", begun.elapsed());
        }
    }
}

/// A sleep dropped before its deadline leaves no task on the runtime. On the current-thread
/// runtime, where the test decides when the runtime's tasks run.
#[test]
fn dropped_sleep_leaves_no_task() {
    let rt = runtime(Flavour::CurrentThread, true);
    let spawner = TokioSpawner::new(rt.handle().clone()).unwrap();
    rt.block_on(async {
        let mut sleep = spawner.sleep(HOUR);
        assert!(poll!(&mut sleep).is_pending());
        tokio::task::yield_now().await;
        assert_eq!(rt.metrics().num_alive_tasks(), 1, "the timer task");
        drop(sleep);
        tokio::task::yield_now().await;
        assert_eq!(
            rt.metrics().num_alive_tasks(),
            0,
            "the timer task outlived its sleep"
        );
    });
}
