//! The HTTP accept loop, on hyper directly rather than `axum::serve`, because `axum::serve`
//! installs no timer and so has no header-read timeout (slowloris). Here every connection
//! gets `header_read_timeout`, open connections are capped (`max_connections`; past it we
//! stop accepting and clients wait in the kernel backlog), one IP address may hold at most
//! `max_connections_per_ip` of them (past it: 429 and closed, so one client cannot take every
//! slot), and shutdown is graceful: stop accepting, let in-flight requests finish, close idle
//! keep-alive connections. Bodies are bounded in time by the router (`api::body`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;
use crate::telemetry::Metrics;

/// Serves `router` on `listener` until `closing` fires, then waits up to `drain` for open
/// connections to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    config: HttpConfig,
    metrics: Arc<Metrics>,
    closing: CancellationToken,
    drain: Duration,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let per_ip = Arc::new(PerIp::new(config.max_connections_per_ip));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = closing.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = closing.cancelled() => break,
        };
        let Some(share) = per_ip.enter(peer.ip()) else {
            metrics.http_connections_refused().inc();
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(refusal().as_bytes()),
                )
                .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Each request carries its connection's place, so an upgraded WebSocket (which
        // outlives the HTTP connection) keeps counting against its address.
        let share = ConnectionShare(Arc::new(share));
        let tagged = share.clone();
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(tagged.clone());
                request
            },
        ));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let closing = closing.clone();
        let metrics = metrics.clone();
        connections.spawn(async move {
            metrics.http_connections().inc();
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = closing.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "http connection ended with an error");
            }
            metrics.http_connections().dec();
            drop(share);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "http connections still open at the shutdown deadline"
        );
    }
}

/// The body of the answer to a connection past its address's share.
const REFUSAL_BODY: &str = r#"{"error":"too_many_connections","message":"too many open connections from this address; retry later"}"#;

/// The whole answer to a connection past its address's share (nothing of it was read).
fn refusal() -> String {
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{REFUSAL_BODY}",
        REFUSAL_BODY.len()
    )
}

/// Open connections per client address.
#[derive(Debug)]
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `ip`, or `None` when `ip` holds its share already.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Share> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Share {
            ip,
            table: self.clone(),
        })
    }
}

/// A connection's place among its address's, shared by the requests it carries (and by a
/// WebSocket it is upgraded to): freed when the last of them ends.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionShare(#[allow(dead_code)] Arc<Share>);

/// One counted connection; dropping it frees the place.
#[derive(Debug)]
struct Share {
    ip: IpAddr,
    table: Arc<PerIp>,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_one_well_formed_response() {
        let text = refusal();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
    }

    #[test]
    fn an_address_holds_at_most_its_share() {
        let table = Arc::new(PerIp::new(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let first = table.enter(a).unwrap();
        let _second = table.enter(a).unwrap();
        assert!(table.enter(a).is_none());
        assert!(table.enter(b).is_some());
        drop(first);
        assert!(table.enter(a).is_some());
    }
}
