//! `quorumkv health`: asks one node's admin port whether it is ready (or only live).
//!
//! Needs nothing but the binary, so a `FROM scratch` image can use it as its healthcheck.

use std::time::Duration;

use clap::Args;
use node::addr::HostPort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

use crate::cli::{TlsArgs, EXIT_NO, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE};

/// Largest answer read (the health bodies are a few lines).
const ANSWER_BYTES_MAX: u64 = 64 * 1024;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The node's admin address (HOST:PORT).
    #[arg(long, env = "QUORUMKV_HEALTH_ADDR", default_value = "127.0.0.1:9379")]
    addr: HostPort,
    /// Only check that the process serves (`/health/live`), not that it is ready.
    #[arg(long)]
    live: bool,
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// HTTPS: --ca (and --cert/--key where the node requires client certificates).
    #[command(flatten)]
    tls: TlsArgs,
}

pub async fn run(args: HealthArgs) -> u8 {
    let path = if args.live {
        "/health/live"
    } else {
        "/health/ready"
    };
    let wait = Duration::from_millis(args.timeout_ms);
    let addr = match args.addr.resolve_within(Duration::ZERO).await {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: --addr: {e}");
            return EXIT_USAGE;
        }
    };
    let connector = match args.tls.connector() {
        Ok(connector) => connector,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_USAGE;
        }
    };
    let exchange = async {
        let mut stream = connector
            .connect(addr, None, wait)
            .await
            .map_err(std::io::Error::other)?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream
            .take(ANSWER_BYTES_MAX)
            .read_to_string(&mut answer)
            .await?;
        Ok::<String, std::io::Error>(answer)
    };
    let answer = match timeout(wait, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            eprintln!("unreachable: {addr}: {e}");
            return EXIT_UNREACHABLE;
        }
        Err(_) => {
            eprintln!(
                "unreachable: {addr} did not answer within {} ms",
                args.timeout_ms
            );
            return EXIT_UNREACHABLE;
        }
    };
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    if status == "200" {
        crate::output::write(format_args!("{body}"));
        EXIT_OK
    } else {
        eprint!("{addr}{path}: HTTP {status}\n{body}");
        EXIT_NO
    }
}
