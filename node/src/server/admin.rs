//! The HTTP admin port: `/metrics` (Prometheus), `/health/live` and `/health/ready`.
//!
//! A deliberately small HTTP/1.1 responder on the node's own runtime: one request per
//! connection (`Connection: close`), GET or HEAD only, the request head capped at
//! `REQUEST_HEAD_BYTES_MAX` and read within `REQUEST_TIMEOUT_MS`, at most
//! `ADMIN_CONNECTIONS_MAX` connections at once. Anything else gets a 4xx and the port keeps
//! serving. With TLS the port speaks HTTPS only; a plaintext request is answered 400 saying
//! so. Liveness answers 200 while the event loop runs (its task publishes readiness; a
//! stopped loop closes the port with the node).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
#[cfg(test)]
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout};
use tracing::{debug, warn, Instrument};

use super::telemetry::Health;
use crate::metrics::Metrics;
use crate::transport::stream::{Accepted, Acceptor, Stream};

pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
pub const ADMIN_CONNECTIONS_MAX: usize = 32;
/// After answering, unread request bytes discarded at most (and for at most this long).
const DRAIN_BYTES_MAX: u64 = 1024 * 1024;
const DRAIN_TIMEOUT_MS: u64 = 500;

#[derive(Clone)]
pub(super) struct AdminState {
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: watch::Receiver<Health>,
    /// Plaintext (HTTP) or TLS (HTTPS).
    pub(super) acceptor: Acceptor,
}

pub(super) async fn accept_admin(listener: TcpListener, state: AdminState) {
    let permits = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "admin accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%addr, "too many admin connections: refused");
            continue;
        };
        let state = state.clone();
        tokio::spawn(
            async move {
                match state.acceptor.accept(stream, REQUEST_TIMEOUT_MS).await {
                    Ok(Accepted::Ready { stream, .. }) => {
                        if let Err(e) = serve(stream, addr, &state).await {
                            debug!(%addr, error = %e, "admin connection failed");
                        }
                    }
                    Ok(Accepted::Plaintext(stream)) => refuse_plaintext(stream).await,
                    Err(e) => debug!(%addr, error = %e, "admin connection refused"),
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

/// Answers an HTTP request on the HTTPS port with 400 and the reason.
async fn refuse_plaintext(mut stream: Stream) {
    let response = Response::text(
        400,
        "Bad Request",
        "this port serves HTTPS only (TLS is configured): use https:// and the cluster's CA\n",
    );
    let answer = async {
        stream.write_all(&response.encode(false)).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = timeout(Duration::from_millis(REQUEST_TIMEOUT_MS), answer).await;
}

async fn serve(mut stream: Stream, addr: SocketAddr, state: &AdminState) -> std::io::Result<()> {
    let head = match timeout(
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        read_head(&mut stream),
    )
    .await
    {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match head {
        Some(head) => respond(&head, state),
        None => Response::text(
            431,
            "Request Header Fields Too Large",
            "request head too large\n",
        ),
    };
    debug!(%addr, status = response.status, "admin request");
    stream
        .write_all(&response.encode(response.head_only))
        .await?;
    stream.flush().await?;
    stream.shutdown().await?;
    // Closing with unread request bytes would reset the connection and could destroy the
    // answer before the client reads it: discard what is left, within bounds.
    let mut rest = (&mut stream).take(DRAIN_BYTES_MAX);
    let _ = timeout(
        Duration::from_millis(DRAIN_TIMEOUT_MS),
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
    Ok(())
}

/// Reads up to the blank line ending the request head; `None` if it exceeds the cap.
async fn read_head(stream: &mut Stream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            return Ok(Some(String::from_utf8_lossy(&buf[..end]).into_owned()));
        }
        if buf.len() > REQUEST_HEAD_BYTES_MAX {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            head_only: false,
        }
    }

    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if !head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The answer to one request head (pure, for tests).
fn respond(head: &str, state: &AdminState) -> Response {
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Response::text(400, "Bad Request", "malformed request line\n");
    };
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "Method Not Allowed", "only GET and HEAD\n");
    }
    let path = target.split('?').next().unwrap_or(target);
    let mut response = match path {
        "/metrics" => Response {
            status: 200,
            reason: "OK",
            content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body: state.metrics.encode(),
            head_only: false,
        },
        "/health/live" => Response::text(200, "OK", "live\n"),
        "/health/ready" => {
            let health = state.health.borrow().clone();
            if health.ready {
                Response::text(200, "OK", "ready\n")
            } else {
                let mut body = String::from("not ready\n");
                for problem in &health.problems {
                    body.push_str(problem);
                    body.push('\n');
                }
                Response::text(503, "Service Unavailable", &body)
            }
        }
        _ => Response::text(
            404,
            "Not Found",
            "try /metrics, /health/live, /health/ready\n",
        ),
    };
    response.head_only = method == "HEAD";
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(health: Health) -> AdminState {
        let (_tx, rx) = watch::channel(health);
        AdminState {
            metrics: Metrics::new(1),
            health: rx,
            acceptor: Acceptor::plaintext(),
        }
    }

    #[test]
    fn routes_and_status_codes() {
        let not_ready = state(Health {
            ready: false,
            problems: vec!["no known leader: group 3".into()],
        });
        let r = respond("GET /health/ready HTTP/1.1\r\nHost: x", &not_ready);
        assert_eq!(r.status, 503);
        assert!(r.body.contains("group 3"));
        assert_eq!(respond("GET /health/live HTTP/1.1", &not_ready).status, 200);
        let ready = state(Health {
            ready: true,
            problems: vec![],
        });
        assert_eq!(respond("GET /health/ready HTTP/1.1", &ready).status, 200);
        let metrics = respond("GET /metrics?x=1 HTTP/1.1", &ready);
        assert_eq!(metrics.status, 200);
        assert!(metrics.body.contains("quorumkv_ready"));
        assert_eq!(respond("POST /metrics HTTP/1.1", &ready).status, 405);
        assert_eq!(respond("GET /nope HTTP/1.1", &ready).status, 404);
        assert_eq!(respond("garbage", &ready).status, 400);
        let head = respond("HEAD /metrics HTTP/1.1", &ready);
        let bytes = head.encode(head.head_only);
        assert!(String::from_utf8(bytes).unwrap().ends_with("\r\n\r\n"));
    }

    /// A real socket: a request gets its answer; an oversized head gets 431 and the port
    /// keeps serving.
    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(accept_admin(
            listener,
            state(Health {
                ready: true,
                problems: vec![],
            }),
        ));
        let oversized = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        let answer = get(addr, &oversized).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
        let answer = get(addr, "GET /health/ready HTTP/1.1\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        task.abort();
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(request.as_bytes()).await;
        let mut out = String::new();
        let _ = timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await;
        out
    }
}
