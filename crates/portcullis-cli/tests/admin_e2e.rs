//! Session administration: the admin listener (bearer token, list and end a user's
//! sessions, metrics) and the `portcullis sessions` subcommand.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

#[tokio::test]
async fn operators_list_and_end_a_users_sessions() {
    let admin_port = free_port();
    let stack = Stack::start_with(
        IdpOptions::default(),
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{ADMIN_TOKEN}\"\n"),
    )
    .await;
    let gw = &stack.gw;
    let (alice1, alice2, bob) = (Browser::new(), Browser::new(), Browser::new());
    alice1.login(gw, "alice").await;
    alice2.login(gw, "alice").await;
    bob.login(gw, "bob").await;
    let admin = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{admin_port}{p}");

    // The admin listener is not the public one, and it needs the token.
    let public = alice1.get(&gw.url("/sessions?sub=alice")).await;
    assert!(
        !public.status().is_success(),
        "admin endpoints are not on the public listener"
    );
    for auth in [None, Some("Bearer wrong-token"), Some(ADMIN_TOKEN)] {
        let mut req = admin.get(url("/sessions?sub=alice"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED,
            "{auth:?}"
        );
    }
    let r = admin
        .get(url("/sessions"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::BAD_REQUEST,
        "a selector is required"
    );

    let r = admin
        .get(url("/sessions?sub=alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(!text.contains("eyJ"), "no token in the listing");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2);

    // End one by key, then all of alice's.
    let key = v["sessions"][0]["key"].as_str().unwrap().to_owned();
    let r = admin
        .delete(url(&format!("/sessions/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = admin
        .delete(url(&format!("/sessions/{key}")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = admin
        .delete(url("/sessions?sub=alice"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ended"], 1);
    assert!(alice1.user(gw).await.is_none() && alice2.user(gw).await.is_none());
    assert!(bob.user(gw).await.is_some(), "other users untouched");
    assert_eq!(
        stack.idp.active_refresh_tokens("alice").await,
        0,
        "refresh tokens revoked"
    );

    let r = admin
        .get(url("/metrics"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = r.text().await.unwrap();
    assert!(metrics.contains("portcullis_"), "{metrics}");

    // The CLI reaches the same store (SQLite, concurrently with the running gateway).
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(gateway_binary())
            .args(["sessions"])
            .args(args)
            .arg("--config")
            .arg(&gw.config_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let listed = cli(&["list", "--sub", "bob"]);
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 1);
    let ended = cli(&["end", "--sub", "bob"]);
    assert_eq!(ended["ended"], 1);
    assert!(bob.user(gw).await.is_none(), "ended through the CLI");
}
