//! The client port: accepts client connections and relays their requests to the event loop.
//!
//! One task per connection reads a frame, hands the request to the event loop through a bounded
//! channel together with a one-shot reply slot, and writes the answer back before reading the
//! next frame (one request in flight per connection, answers in order). Invariants: a frame error
//! closes that connection only (logged with the client address); the number of connections is
//! capped by `limits.max_client_connections`; a full event-loop queue is answered `Busy`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::{sleep, Instant};

use crate::deadline::timeout;
use tracing::Instrument;
use tracing::{debug, warn};

use crate::client::protocol::{
    ClientFrame, ClientRequest, ClientResponse, RefusedReason, ServerFrame,
};
use crate::metrics::{op_name, Metrics};
use crate::transport::frame::{encode_frame, read_frame, FrameError};
use tokio::io::AsyncWriteExt;

/// One client request on its way to the event loop.
#[derive(Debug)]
pub struct ClientCall {
    pub request: ClientRequest,
    pub reply: oneshot::Sender<ClientResponse>,
}

#[derive(Clone, Debug)]
pub struct ClientPortConfig {
    pub metrics: Arc<Metrics>,
    pub max_frame_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// Simulation only: BUGGIFY may refuse a connection.
    #[cfg(madsim)]
    pub sim: crate::sim_hooks::SimHooks,
}

pub async fn accept_clients(
    listener: TcpListener,
    config: ClientPortConfig,
    calls: mpsc::Sender<ClientCall>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "client accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // BUGGIFY: a connection closed as soon as it is accepted (the client must retry).
        if crate::buggify!(config.sim, "refuse-connection") {
            debug!(%addr, "buggify: client connection refused");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!(%addr, max_connections = config.max_connections, "too many client connections: refused");
            continue;
        };
        let config = config.clone();
        let calls = calls.clone();
        tokio::spawn(
            async move {
                match serve_client(stream, addr, &config, &calls).await {
                    Ok(()) => debug!(%addr, "client connection closed"),
                    Err(e) => warn!(%addr, error = %e, "client connection closed with error"),
                }
                drop(permit);
            }
            .in_current_span(),
        );
    }
}

async fn serve_client(
    stream: TcpStream,
    addr: SocketAddr,
    config: &ClientPortConfig,
    calls: &mpsc::Sender<ClientCall>,
) -> Result<(), FrameError> {
    let _ = stream.set_nodelay(true);
    let (read_half, mut writer) = tokio::io::split(stream);
    let mut reader = BufReader::new(read_half);
    loop {
        let frame = match timeout(
            config.idle_timeout,
            read_frame::<_, ClientFrame>(&mut reader, config.max_frame_bytes),
        )
        .await
        {
            Ok(frame) => frame?,
            Err(_) => {
                debug!(%addr, "idle client connection closed");
                return Ok(());
            }
        };
        let Some(ClientFrame { id, request }) = frame else {
            return Ok(());
        };
        let op = op_name(&request);
        let started = Instant::now();
        config.metrics.pending_requests.inc();
        let (reply, answer) = oneshot::channel();
        let response = match calls.try_send(ClientCall { request, reply }) {
            Ok(()) => answer
                .await
                .unwrap_or(ClientResponse::Refused(RefusedReason::ShuttingDown)),
            Err(mpsc::error::TrySendError::Full(call)) => {
                drop(call);
                ClientResponse::Refused(RefusedReason::Busy)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                ClientResponse::Refused(RefusedReason::ShuttingDown)
            }
        };
        config.metrics.pending_requests.dec();
        let seconds = started.elapsed().as_secs_f64();
        config.metrics.request_done(op, &response, seconds);
        let frame = match encode_frame(&ServerFrame { id, response }, config.max_frame_bytes) {
            Ok(bytes) => bytes,
            Err(FrameError::TooLarge { len_bytes, .. }) => {
                warn!(%addr, len_bytes, "response exceeds max_client_frame_bytes: refused");
                let response =
                    ClientResponse::Refused(RefusedReason::ResponseTooLarge { len_bytes });
                encode_frame(&ServerFrame { id, response }, config.max_frame_bytes)?
            }
            Err(e) => return Err(e),
        };
        writer.write_all(&frame).await?;
        writer.flush().await?;
    }
}
