//! One real headless Chromium run (Debian's chromium driven by playwright-core): the sample
//! SPA served by the gateway, login through the IdP's form, the user's name from
//! `/bff/user`, an API result, and logout. Also checks that none of the codes and tokens the
//! IdP issued reaches the page.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;

#[tokio::test]
async fn browser_logs_in_calls_the_api_and_logs_out() {
    let spa = repo_root().join("examples/spa");
    let stack = Stack::start_with(
        IdpOptions::default(),
        &format!("[spa]\ndir = \"{}\"\n", spa.display()),
    )
    .await;
    let gw = &stack.gw;
    let shot = gw.dir.join("failure.png");
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .current_dir(repo_root())
            .arg("testing/browser/e2e.mjs")
            .arg("--gateway")
            .arg(&gw.origin)
            .arg("--session-cookie")
            .arg("bff-auth")
            .arg("--screenshot")
            .arg(&shot)
            .arg("--idp")
            .arg(&stack.idp.issuer)
            .output(),
    )
    .await
    .expect("browser run finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "browser e2e failed (screenshot: {})",
        shot.display()
    );
    assert!(
        stdout.contains("ok - "),
        "the browser script reported its steps"
    );
    assert!(!stdout.contains("not ok"));
}
