//! A Rust service calling an API with a client-credentials token, using only this crate.
//!
//! ```sh
//! ISSUER=https://idp.example/realms/demo \
//! CLIENT_ID=orders-worker CLIENT_SECRET=... SCOPE=orders.read \
//! cargo run -p portcullis-token --example client_credentials -- https://orders.example/v1/orders
//! ```
//!
//! Environment: `ISSUER` (discovery) or `TOKEN_URL` (explicit token endpoint), `CLIENT_ID`,
//! `CLIENT_SECRET`, optional `SCOPE` and `RESOURCE`. The API URL is the first argument or
//! `API_URL`.

use std::sync::Arc;
use std::time::Duration;

use portcullis_token::{
    discover, ClientAuth, ClientCredentialsManager, OAuthClient, OAuthClientConfig, Secret,
    SharedClock, SystemClock, TokenClient, TokenParams, TokenSource,
};
use url::Url;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(name: &str) -> Result<String, Error> {
    env(name).ok_or_else(|| format!("set {name}").into())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let api_url: Url = std::env::args()
        .nth(1)
        .or_else(|| env("API_URL"))
        .ok_or("pass the API URL")?
        .parse()?;
    let client_id = required("CLIENT_ID")?;
    let auth = ClientAuth::ClientSecretBasic(Secret::new(required("CLIENT_SECRET")?));

    // Token endpoints: no redirects. API calls: a separate, ordinary pooled client.
    let token_http = OAuthClient::default_http_client()?;
    let config = match (env("TOKEN_URL"), env("ISSUER")) {
        (Some(token_url), _) => OAuthClientConfig::new(client_id, auth, token_url.parse()?),
        (None, Some(issuer)) => {
            let metadata = discover(&token_http, &issuer.parse()?, Duration::from_secs(10)).await?;
            OAuthClientConfig::from_metadata(client_id, auth, &metadata)
        }
        (None, None) => return Err("set ISSUER or TOKEN_URL".into()),
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let client = Arc::new(OAuthClient::new(config, token_http, clock.clone()));

    let defaults = TokenParams {
        scope: env("SCOPE"),
        resource: env("RESOURCE"),
        ..Default::default()
    };
    let mut manager = ClientCredentialsManager::new(clock, Duration::from_secs(60));
    manager.add_client("api", client, defaults);
    let manager = Arc::new(manager);

    let token = manager.get_token("api", &TokenParams::default()).await?;
    println!(
        "token {} expires_at={:?}",
        token.fingerprint(),
        token.expires_at()
    );

    let http = reqwest::Client::new();
    let api = TokenClient::new(
        http.clone(),
        TokenSource::Client {
            manager,
            name: "api".into(),
            params: TokenParams::default(),
        },
    );
    let response = api.send(http.get(api_url).build()?).await?;
    println!("status {}", response.status());
    Ok(())
}
