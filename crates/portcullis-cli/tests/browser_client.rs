//! The browser client `@portcullis/bff-client` in one real headless Chromium session against
//! the real gateway and IdP (testing/browser/client-e2e.mjs): the module as the gateway serves
//! it at `/bff/client.js`, anonymous start, a 401 leading to exactly one login navigation and
//! back, the claims, other origins never getting the anti-forgery header, polling that lets
//! the idle timeout end the session (with `sessionExpiring` first), silent login true and
//! false, and a second-tab logout and a back-channel logout each noticed within two poll
//! intervals. The pure parts are unit-tested with node's test runner (clients/js/test/).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;

/// The session's idle timeout in this test: short, so the page's polling can be seen not to
/// extend it, and long enough for a login through the IdP's form on a busy machine.
const IDLE_SECS: u64 = 6;
/// The test page's poll interval (testing/browser/client-page/page.js).
const POLL_MS: u64 = 1000;

#[tokio::test]
async fn browser_client_tracks_the_session_and_never_extends_it() {
    let page = repo_root().join("testing/browser/client-page");
    let stack = Stack::start_edited(IdpOptions::default(), |config| {
        format!(
            "{}\n[spa]\ndir = \"{}\"\n",
            config.replace(
                "idle_timeout = \"1h\"",
                &format!("idle_timeout = \"{IDLE_SECS}s\"")
            ),
            page.display()
        )
    })
    .await;
    let gw = &stack.gw;
    let shot = gw.dir.join("failure.png");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(150),
        tokio::process::Command::new("node")
            .current_dir(repo_root())
            .arg("testing/browser/client-e2e.mjs")
            .arg("--gateway")
            .arg(&gw.origin)
            .arg("--idp")
            .arg(&stack.idp.issuer)
            .arg("--poll-ms")
            .arg(POLL_MS.to_string())
            .arg("--idle-s")
            .arg(IDLE_SECS.to_string())
            .arg("--screenshot")
            .arg(&shot)
            .output(),
    )
    .await
    .expect("browser run finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "browser client e2e failed (screenshot: {})",
        shot.display()
    );
    assert!(!stdout.contains("not ok"));
    assert_eq!(
        stdout.matches("ok - ").count(),
        12,
        "every step of the browser script ran"
    );
}
