//! The endpoint's listener over reloads: `lb.metrics_listen` changes without
//! a restart (central monitoring is set up on running fleets). The new
//! address is bound before the reload changes anything, so a taken port
//! refuses the reload and the old listener keeps serving.
//!
//! One case cannot be bound beforehand: the same port on an overlapping
//! address (`127.0.0.1:9110` -> `0.0.0.0:9110`), which the kernel refuses
//! while the old socket listens. That one is handed over after the reload
//! applied: the old listener closes, the new address is bound, and if that
//! fails the old address is bound again and the reload's reply says so.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::server::{self, Render};

/// A serving endpoint.
pub struct Endpoint {
    address: SocketAddr,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Serves `listener` (bound by [`server::bind`]).
    pub fn serve<R: Render>(listener: TcpListener, metrics: Arc<R>) -> Result<Endpoint> {
        let address = listener.local_addr()?;
        tracing::info!(%address, "serving the status page at / and Prometheus metrics at {}", server::METRICS_PATH);
        Ok(Endpoint { address, task: server::spawn(listener, metrics) })
    }

    /// Where it listens (the port the kernel chose for port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops serving and waits until the listening socket is closed.
    pub async fn stop(self) {
        self.task.abort();
        // The task owns the listener: it is closed once the task is dropped.
        let _ = self.task.await;
    }
}

/// What a reload does to the endpoint, decided before it applies anything.
pub enum Rebind {
    /// Same address (or off before and after).
    Unchanged,
    /// `"off"`: stop serving.
    Off,
    /// Already bound at the new address.
    Bound(TcpListener),
    /// The same port on an overlapping address: bound once the old closes.
    HandOver(SocketAddr),
}

/// Binds `wanted` unless the endpoint is already there; an error (the port
/// is taken) must refuse the reload.
pub async fn prepare(current: Option<&Endpoint>, wanted: Option<SocketAddr>) -> Result<Rebind> {
    let current = current.map(Endpoint::address);
    Ok(match (current, wanted) {
        (_, None) if current.is_none() => Rebind::Unchanged,
        (_, None) => Rebind::Off,
        (Some(old), Some(new)) if old == new => Rebind::Unchanged,
        (Some(old), Some(new)) if overlaps(old, new) => Rebind::HandOver(new),
        (_, Some(new)) => Rebind::Bound(server::bind(new).await?),
    })
}

/// Whether the kernel refuses `new` while `old` listens: same port, and
/// one of them is the wildcard of the other's family (or both the same).
fn overlaps(old: SocketAddr, new: SocketAddr) -> bool {
    old.port() == new.port() && old.is_ipv4() == new.is_ipv4() && (old.ip() == new.ip() || old.ip().is_unspecified() || new.ip().is_unspecified())
}

/// Applies a prepared rebind after the reload succeeded. Returns the
/// endpoint now serving, and a warning when a hand-over failed (the old
/// address serves again).
pub async fn commit<R: Render>(current: Option<Endpoint>, rebind: Rebind, metrics: Arc<R>) -> (Option<Endpoint>, Option<String>) {
    match rebind {
        Rebind::Unchanged => (current, None),
        Rebind::Off => {
            if let Some(old) = current {
                old.stop().await;
            }
            (None, None)
        }
        Rebind::Bound(listener) => {
            if let Some(old) = current {
                old.stop().await;
            }
            match Endpoint::serve(listener, metrics) {
                Ok(e) => (Some(e), None),
                Err(e) => (None, Some(format!("the metrics endpoint stopped: {e:#}"))),
            }
        }
        Rebind::HandOver(new) => {
            let old = current.as_ref().map(Endpoint::address);
            if let Some(endpoint) = current {
                endpoint.stop().await;
            }
            match server::bind(new).await {
                Ok(listener) => match Endpoint::serve(listener, metrics) {
                    Ok(e) => (Some(e), None),
                    Err(e) => (None, Some(format!("the metrics endpoint stopped: {e:#}"))),
                },
                Err(e) => {
                    let restored = match old {
                        Some(old) => server::bind(old).await.and_then(|l| Endpoint::serve(l, metrics)),
                        None => Err(e),
                    };
                    match restored {
                        Ok(endpoint) => {
                            let warning = format!("lb.metrics_listen = \"{new}\" could not be bound; still serving at {}", endpoint.address());
                            (Some(endpoint), Some(warning))
                        }
                        Err(e) => (None, Some(format!("the metrics endpoint stopped: {e:#}"))),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Render for Fixed {
        fn render(&self) -> Result<String> {
            Ok("lb_test 1\n".into())
        }
    }

    async fn get(address: SocketAddr) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(address).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[test]
    fn overlapping_addresses_are_the_same_port_with_a_wildcard() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:9110"), a("0.0.0.0:9110")));
        assert!(overlaps(a("0.0.0.0:9110"), a("127.0.0.1:9110")));
        assert!(!overlaps(a("127.0.0.1:9110"), a("127.0.0.2:9110")), "two addresses of one family can share a port");
        assert!(!overlaps(a("127.0.0.1:9110"), a("0.0.0.0:9111")));
        assert!(!overlaps(a("127.0.0.1:9110"), a("[::]:9110")), "families are apart (the v6 wildcard is v6-only here)");
    }

    #[tokio::test]
    async fn a_taken_port_refuses_and_the_old_listener_keeps_serving_a_free_one_moves_it() {
        let metrics = Arc::new(Fixed);
        let first = Endpoint::serve(server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap(), metrics.clone()).unwrap();
        let old = first.address();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let refused = prepare(Some(&first), Some(taken.local_addr().unwrap())).await;
        assert!(refused.is_err(), "a taken port refuses the reload");
        assert!(get(old).await.unwrap().contains("lb_test 1"), "the old listener still serves");

        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let rebind = prepare(Some(&first), Some(free)).await.unwrap();
        let (now, warning) = commit(Some(first), rebind, metrics.clone()).await;
        let now = now.expect("serving");
        assert_eq!((now.address(), warning), (free, None));
        assert!(get(free).await.unwrap().contains("lb_test 1"), "the new address serves");
        assert!(get(old).await.is_err(), "the old address is closed");

        // 127.0.0.1:P -> 0.0.0.0:P: handed over after the old one closed.
        let wildcard = SocketAddr::new("0.0.0.0".parse().unwrap(), free.port());
        let rebind = prepare(Some(&now), Some(wildcard)).await.unwrap();
        assert!(matches!(rebind, Rebind::HandOver(_)));
        let (now, warning) = commit(Some(now), rebind, metrics.clone()).await;
        assert_eq!((now.as_ref().map(Endpoint::address), warning), (Some(wildcard), None));

        let rebind = prepare(now.as_ref(), None).await.unwrap();
        let (now, _) = commit(now, rebind, metrics).await;
        assert!(now.is_none());
        assert!(get(free).await.is_err(), "\"off\" closes it");
    }
}
