//! What is known of the connection: up or down, reconnections, logged and
//! followed by a task.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Client;
use psrpc::CancellationToken;

/// How often the connection state is looked at for the warn log and
/// [`NatsBus::watch_connected`](crate::NatsBus::watch_connected).
const STATE_POLL: Duration = Duration::from_millis(100);

/// The connection state, shared by a bus's clones; the task that watches
/// it ends when the last clone goes or the bus is closed.
pub(crate) struct Conn {
    client: Client,
    connected: tokio::sync::watch::Sender<bool>,
    /// `Statistics::connects` when the bus was made.
    connects_at_start: u64,
    stop: CancellationToken,
}

impl Conn {
    /// The state of `client`'s connection, followed from now on (in a
    /// runtime; outside one only the warn log and the watch go without).
    pub(crate) fn start(client: &Client) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            client: client.clone(),
            connected: tokio::sync::watch::Sender::new(is_up(client)),
            connects_at_start: client.statistics().connects.load(Ordering::Relaxed),
            stop: CancellationToken::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(Conn::watch(Arc::downgrade(&conn), conn.stop.clone()));
        }
        conn
    }

    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::Relaxed)
    }

    /// How many times the connection was re-established since the start.
    pub(crate) fn reconnects(&self) -> u64 {
        self.connects().saturating_sub(self.connects_at_start)
    }

    /// Follows whether the connection is up.
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Stops following the connection (the watchers see the last state).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Follows the connection state: logs losing and regaining it at warn
    /// level and publishes it to the watchers.
    async fn watch(conn: std::sync::Weak<Conn>, stop: CancellationToken) {
        let mut seen_connects = match conn.upgrade() {
            Some(c) => c.connects(),
            None => return,
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(STATE_POLL) => {}
                _ = stop.cancelled() => return,
            }
            let Some(c) = conn.upgrade() else { return };
            let up = is_up(&c.client);
            let connects = c.connects();
            let was_up = *c.connected.borrow();
            if was_up && !up {
                tracing::warn!("nats bus: connection lost, reconnecting");
            } else if up && (!was_up || connects != seen_connects) {
                let info = c.client.server_info();
                tracing::warn!(
                    server = %format_args!("{}:{}", info.host, info.port),
                    reconnects = connects.saturating_sub(c.connects_at_start),
                    "nats bus: reconnected"
                );
            }
            seen_connects = connects;
            c.connected
                .send_if_modified(|v| std::mem::replace(v, up) != up);
        }
    }
}

/// Whether `client`'s connection is up now.
pub(crate) fn is_up(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
