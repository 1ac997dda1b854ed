//! The load generator: `C` workers, each with its own keep-alive HTTP/1.1 connection, sending
//! one request at a time (closed loop) until the scenario's time is up.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one worker sends, over and over.
#[derive(Debug, Clone)]
pub struct RequestTemplate {
    pub uri: Uri,
    pub headers: HeaderMap,
}

/// One scenario's measurement (the measured window only, warm-up excluded).
#[derive(Debug, Clone)]
pub struct Measured {
    /// Responses completed inside the measured window.
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    /// CPU time per request of the measured process: this whole process (gateway, load
    /// generator, upstream, in-process store clients) by default, or the proxy process given
    /// to [`run_measuring`]; `None` when its `/proc/…/stat` cannot be read.
    pub cpu_us_per_req: Option<f64>,
    /// Share of the machine's CPU time the hypervisor gave to others during the window
    /// (`steal` in `/proc/stat`), in percent: a noisy-neighbour indicator.
    pub steal_pct: Option<f64>,
}

/// Runs `templates.len()` workers against `addr` for `warmup + duration`.
/// Every response must be `200` with exactly `expected_body`; anything else is an error.
pub async fn run(
    addr: SocketAddr,
    templates: Vec<RequestTemplate>,
    expected_body: &'static str,
    warmup: Duration,
    duration: Duration,
) -> Result<Measured, String> {
    run_measuring(addr, templates, expected_body, warmup, duration, None).await
}

/// [`run`], with the CPU time of process `pid` (`None`: this process) in the measured window.
pub async fn run_measuring(
    addr: SocketAddr,
    templates: Vec<RequestTemplate>,
    expected_body: &'static str,
    warmup: Duration,
    duration: Duration,
    pid: Option<u32>,
) -> Result<Measured, String> {
    let measure_start = Instant::now() + warmup;
    let measure_end = measure_start + duration;
    let cpu = tokio::spawn(cpu_during(measure_start, measure_end, pid));
    let workers: Vec<_> = templates
        .into_iter()
        .map(|t| tokio::spawn(worker(addr, t, expected_body, measure_start, measure_end)))
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("worker panicked: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let (cpu, steal_pct) = cpu.await.ok().unwrap_or_default();
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    if requests == 0 {
        return Err("no request completed in the measured window".into());
    }
    Ok(Measured {
        requests,
        rps: requests as f64 / duration.as_secs_f64(),
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        cpu_us_per_req: cpu.map(|c| c.as_secs_f64() * 1e6 / requests as f64),
        steal_pct,
    })
}

/// Latencies (µs) of the requests that started and finished inside the measured window.
async fn worker(
    addr: SocketAddr,
    template: RequestTemplate,
    expected_body: &'static str,
    measure_start: Instant,
    measure_end: Instant,
) -> Result<Vec<u32>, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("nodelay: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake {addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let mut latencies = Vec::with_capacity(64 * 1024);
    loop {
        let start = Instant::now();
        if start >= measure_end {
            break;
        }
        sender
            .ready()
            .await
            .map_err(|e| format!("connection to {addr} closed: {e}"))?;
        let mut request = Request::new(Empty::new());
        *request.method_mut() = Method::GET;
        request.uri_mut().clone_from(&template.uri);
        request.headers_mut().clone_from(&template.headers);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request to {addr}{}: {e}", template.uri))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body from {addr}{}: {e}", template.uri))?
            .to_bytes();
        if status != StatusCode::OK || body != expected_body.as_bytes() {
            return Err(format!(
                "{addr}{} answered {status}: {:?}",
                template.uri,
                String::from_utf8_lossy(&body[..body.len().min(300)])
            ));
        }
        let done = Instant::now();
        if start >= measure_start && done <= measure_end {
            let us = done.duration_since(start).as_micros();
            latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }
    drop(sender);
    // The connection task ends once the sender is gone; do not wait on a slow close.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
    Ok(latencies)
}

fn percentile(sorted: &[u32], p: f64) -> u64 {
    let n = sorted.len();
    // Nearest rank: the smallest value with at least p·n values at or below it.
    let rank = ((p * n as f64).ceil() as usize).clamp(1, n);
    u64::from(sorted[rank - 1])
}

/// CPU time (user + system, all threads) of process `pid` (`None`: this one) spent between
/// `start` and `end`, and the machine's steal time in that window as a percentage of all CPU
/// time.
async fn cpu_during(
    start: Instant,
    end: Instant,
    pid: Option<u32>,
) -> (Option<Duration>, Option<f64>) {
    tokio::time::sleep_until(start.into()).await;
    let (p0, m0) = (process_cpu(pid), machine_cpu());
    tokio::time::sleep_until(end.into()).await;
    let (p1, m1) = (process_cpu(pid), machine_cpu());
    let process = p0.zip(p1).map(|(a, b)| b.saturating_sub(a));
    let steal = m0.zip(m1).and_then(|((t0, s0), (t1, s1))| {
        let total = t1.saturating_sub(t0);
        (total > 0).then(|| s1.saturating_sub(s0) as f64 * 100.0 / total as f64)
    });
    (process, steal)
}

/// (all CPU ticks, steal ticks) from the `cpu` line of `/proc/stat`.
fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user/nice.
    let v: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    Some((v.iter().sum(), *v.get(7)?))
}

/// utime + stime of process `pid` (`None`: this one), all threads.
pub fn process_cpu(pid: Option<u32>) -> Option<Duration> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks_per_sec();
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t: &u64| t > 0)
            .unwrap_or(100)
    })
}

/// Like [`run_measuring`], with `wrk` (a separate process, `-t1`, `concurrency` keep-alive
/// connections) as the load generator instead of this process: `wrk` sends `GET path` to
/// `addr` with `headers` for `warmup` (not measured; its own fresh connections), then again
/// for `duration`, measured. wrk's `-d` takes whole seconds: both are rounded up (500 ms
/// becomes 1 s), and `rps` is the request count over that whole-second window.
///
/// - `script`: a wrk Lua script file (`-s`), e.g. one written from [`wrk_cookie_script`].
/// - `pid`: the process whose CPU time is measured over the window (`None`: this one, not
///   wrk). `cpu_us_per_req` is in µs, `p50_us`/`p99_us` are wrk's latency percentiles in µs.
/// - `cpus`: run wrk under `taskset -c cpus`.
///
/// wrk does not read bodies; the caller checks what reached the upstream.
///
/// # Errors
/// A message when wrk cannot be started or exits non-zero (with its stderr), reports
/// non-2xx/3xx answers or socket errors, prints no request count or percentiles, or
/// completed no request.
#[allow(clippy::too_many_arguments)]
pub async fn run_wrk(
    wrk: &std::path::Path,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    script: Option<&std::path::Path>,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    pid: Option<u32>,
    cpus: Option<&str>,
) -> Result<Measured, String> {
    let run = |d: Duration| {
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = tokio::process::Command::new("taskset");
                cmd.arg("-c").arg(c).arg(wrk);
                cmd
            }
            None => tokio::process::Command::new(wrk),
        };
        cmd.arg("-t1")
            .arg(format!("-c{concurrency}"))
            .arg(format!("-d{}s", wrk_seconds(d)))
            .arg("--latency");
        for (name, value) in headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(script) = script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(format!("http://{addr}{path}"));
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        cmd
    };
    let failed = |out: &std::process::Output| {
        format!(
            "wrk failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !warmup.is_zero() {
        let out = run(warmup)
            .output()
            .await
            .map_err(|e| format!("{}: {e}", wrk.display()))?;
        if !out.status.success() {
            return Err(failed(&out));
        }
    }
    let start = Instant::now();
    let window = Duration::from_secs(wrk_seconds(duration));
    let cpu = tokio::spawn(cpu_during(start, start + window, pid));
    let out = run(duration)
        .output()
        .await
        .map_err(|e| format!("{}: {e}", wrk.display()))?;
    let (cpu, steal_pct) = cpu.await.ok().unwrap_or_default();
    if !out.status.success() {
        return Err(failed(&out));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for bad in ["Non-2xx or 3xx responses", "Socket errors"] {
        if let Some(line) = text.lines().find(|l| l.contains(bad)) {
            return Err(format!("wrk: {}", line.trim()));
        }
    }
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("wrk: no request count in {text}"))?;
    if requests == 0 {
        return Err("no request completed in the measured window".into());
    }
    let pct = |p: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .and_then(|v| parse_wrk_duration_us(v.trim()))
            .ok_or_else(|| format!("wrk: no {p} latency in {text}"))
    };
    Ok(Measured {
        requests,
        // wrk counts what completed within its own window: whole seconds.
        rps: requests as f64 / window.as_secs_f64(),
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
        cpu_us_per_req: cpu.map(|c| c.as_secs_f64() * 1e6 / requests as f64),
        steal_pct,
    })
}

/// The source of a wrk Lua script (for a file given to `-s`) that sends each request with
/// the next of `cookies` as its `Cookie` header (round robin), so the load spreads over as
/// many sessions as the in-process load generator's. Each value is a Lua long string
/// (`[==[…]==]`), so any header value is taken literally; `None` when `cookies` is empty or a
/// value contains `]==]`.
pub fn wrk_cookie_script(cookies: &[http::HeaderValue]) -> Option<String> {
    if cookies.is_empty() {
        return None;
    }
    let mut s = String::from("local cookies = {\n");
    for c in cookies {
        let value = String::from_utf8_lossy(c.as_bytes());
        if value.contains("]==]") {
            return None;
        }
        s.push_str(&format!("  [==[{value}]==],\n"));
    }
    s.push_str(
        "}\nlocal i = 0\nrequest = function()\n  i = i % #cookies + 1\n  wrk.headers[\"Cookie\"] = cookies[i]\n  return wrk.format()\nend\n",
    );
    Some(s)
}

/// wrk's `-d` takes whole seconds: `d` rounded up, at least 1.
fn wrk_seconds(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// `"612.00us"`, `"1.23ms"`, `"2.00s"` → microseconds.
fn parse_wrk_duration_us(v: &str) -> Option<u64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60e6)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        return None;
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .map(|n| (n * scale).round() as u64)
}

#[cfg(test)]
mod wrk_tests {
    use super::parse_wrk_duration_us;

    #[test]
    fn wrk_script_sends_every_sessions_cookie_in_turn() {
        let cookies = [
            http::HeaderValue::from_static("__Host-bff=a1"),
            http::HeaderValue::from_static("__Host-bff=b2"),
        ];
        let script = super::wrk_cookie_script(&cookies).unwrap_or_default();
        assert!(script.contains("  [==[__Host-bff=a1]==],\n  [==[__Host-bff=b2]==],\n"));
        assert!(script.contains("i = i % #cookies + 1"));
        assert!(script.contains("wrk.headers[\"Cookie\"] = cookies[i]"));
        // A quoted cookie value (RFC 6265 allows DQUOTEs) stays one literal string.
        let quoted = [http::HeaderValue::from_static("a=\"b\\c\"")];
        assert!(super::wrk_cookie_script(&quoted)
            .unwrap_or_default()
            .contains("[==[a=\"b\\c\"]==]"));
        assert!(super::wrk_cookie_script(&[]).is_none());
    }

    #[test]
    fn wrk_latency_units_are_read_as_microseconds() {
        assert_eq!(parse_wrk_duration_us("612.00us"), Some(612));
        assert_eq!(parse_wrk_duration_us("1.23ms"), Some(1230));
        assert_eq!(parse_wrk_duration_us("2.00s"), Some(2_000_000));
        assert_eq!(parse_wrk_duration_us("1.50m"), Some(90_000_000));
        assert_eq!(parse_wrk_duration_us("fast"), None);
    }
}
