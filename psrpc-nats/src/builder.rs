//! Building a bus: every option first, then connecting (or taking a
//! connected client).

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, ServerAddr};
use psrpc::CompressionOptions;
use psrpc::drops::{DropReason, Drops};

use crate::NatsBus;
use crate::error::{Error, Result};
use crate::subject::DEFAULT_MAX_CONTROL_LINE;

/// The options of a [`NatsBus`], all set before it connects
/// ([`NatsBus::builder`]).
///
/// ```no_run
/// # async fn run() -> psrpc::Result<()> {
/// use psrpc::CompressionOptions;
/// let bus = psrpc_nats::NatsBus::builder()
///     .prefix("staging")
///     .compression(CompressionOptions::default().with_quality(6))
///     .connect("nats://127.0.0.1:4222")
///     .await?;
/// # let _ = bus; Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct NatsBusBuilder {
    pub(crate) prefix: String,
    pub(crate) compression: CompressionOptions,
    pub(crate) queue_hand_back: bool,
    pub(crate) max_control_line: usize,
    pub(crate) max_message_size: Option<usize>,
}

impl Default for NatsBusBuilder {
    fn default() -> Self {
        NatsBusBuilder {
            prefix: String::new(),
            compression: CompressionOptions::DEFAULT,
            queue_hand_back: true,
            max_control_line: DEFAULT_MAX_CONTROL_LINE,
            max_message_size: None,
        }
    }
}

impl NatsBusBuilder {
    /// Every subject prefixed: `<prefix>.SRV.<S>...` and `<prefix>.CLI.<S>...`,
    /// so that several deployments can share one NATS without hearing each
    /// other. Peers (Go or Rust) must use the same prefix to talk; an empty
    /// prefix (the default) is the Go wire. The prefix must be a valid
    /// subject (dot-separated tokens, no spaces or wildcards); a trailing
    /// dot is ignored.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        let p: String = prefix.into();
        self.prefix = p.trim_end_matches('.').to_owned();
        self
    }

    /// Publishing and reading with `compression`: gzip of large payloads
    /// when publishing (off by default), and the cap on decompressed
    /// payloads when reading. See the [crate documentation](crate#compression).
    pub fn compression(mut self, compression: CompressionOptions) -> Self {
        self.compression = compression;
        self
    }

    /// Whether the bus hands a queue request it has no local subscriber for
    /// back to its queue group (default true; false drops it, as Go does).
    /// See the [crate documentation](crate#deliberate-choices).
    pub fn queue_hand_back(mut self, on: bool) -> Self {
        self.queue_hand_back = on;
        self
    }

    /// For a nats-server whose `max_control_line` is `n` bytes (default
    /// [`DEFAULT_MAX_CONTROL_LINE`]): subjects longer than `n` less room for
    /// the rest of a protocol line are refused (see the
    /// [crate docs](crate#limits)).
    pub fn max_control_line(mut self, n: usize) -> Self {
        self.max_control_line = n;
        self
    }

    /// Refusing to send messages larger than `n` bytes (never more than the
    /// server's `max_payload`, which also bounds what it receives).
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = Some(n);
        self
    }

    /// Connects to the NATS server(s) at `url` (for example
    /// `nats://user:pass@127.0.0.1:4222`; several comma-separated URLs are
    /// allowed). Fails at once when no server can be reached or the
    /// credentials are refused.
    pub async fn connect(self, url: &str) -> Result<NatsBus> {
        self.connect_with_options(url, ConnectOptions::new()).await
    }

    /// Connects to any of the NATS servers at `urls` (each as accepted by
    /// [`connect`](Self::connect)); async-nats fails over between them.
    pub async fn connect_urls<S: AsRef<str>>(self, urls: &[S]) -> Result<NatsBus> {
        let addrs = parse_urls(urls.iter().map(AsRef::as_ref))?;
        self.connect_addrs(addrs, ConnectOptions::new()).await
    }

    /// As [`connect`](Self::connect), with async-nats options (credentials,
    /// TLS, name, reconnection, buffer sizes...). `url` may hold several
    /// comma-separated URLs. Setting `retry_on_initial_connect` makes
    /// construction wait for the server instead of failing. The options'
    /// event callback is replaced by one that counts async-nats' own drops
    /// (see the [crate docs](crate#deliberate-choices), "slow consumers").
    pub async fn connect_with_options(self, url: &str, options: ConnectOptions) -> Result<NatsBus> {
        let addrs = parse_urls(url.split(','))?;
        self.connect_addrs(addrs, options).await
    }

    /// Connects to any of `addrs` with `options`. Credentials in the
    /// addresses (`user:password@`, or `token@`), as async-nats' parser
    /// reads them, go into the options (those of the first address that
    /// has any, replacing credentials set in the options): async-nats
    /// itself does not send the credentials of a URL.
    pub async fn connect_addrs(
        self,
        addrs: Vec<ServerAddr>,
        options: ConnectOptions,
    ) -> Result<NatsBus> {
        if addrs.is_empty() {
            return Err(Error::NoServer);
        }
        let (plain, options) = credentials_into_options(addrs, options)?;
        let servers = plain
            .iter()
            .map(ServerAddr::as_url_str)
            .collect::<Vec<_>>()
            .join(",");
        let drops = Arc::new(Drops::default());
        // The bus checks every subject it publishes on itself, more
        // strictly (`subject::check_subject`): async-nats' own check would
        // scan each subject a second time per publish.
        let options = options.skip_subject_validation(true);
        let client = count_library_drops(options, drops.clone())
            .connect(plain)
            .await
            .map_err(|source| Error::Connect { servers, source })?;
        Ok(NatsBus::assemble(self, client, drops, true))
    }

    /// A bus over an already connected async-nats client. Such a bus cannot
    /// count async-nats' own drops (a subscription whose buffer in the
    /// client overflowed: async-nats reports them only to the event
    /// callback of the `ConnectOptions` the client was made with); use
    /// [`connect_with_options`](Self::connect_with_options) to have them
    /// counted. [`NatsBus::close`] leaves such a client connected (it
    /// unsubscribes only the bus's own subscriptions).
    pub fn from_client(self, client: Client) -> NatsBus {
        NatsBus::assemble(self, client, Arc::new(Drops::default()), false)
    }
}

/// The servers `url` names (several may be comma-separated) and `options`
/// with the URL's credentials (`user:password@` or `token@`, of the first
/// server that has any), as async-nats' parser reads them: what a raw
/// async-nats connection needs to connect as a [`NatsBus`] would, since
/// async-nats itself does not send a URL's credentials.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (servers, options) = psrpc_nats::servers_and_options(
///     "nats://user:secret@127.0.0.1:4222",
///     psrpc_nats::async_nats::ConnectOptions::new(),
/// )?;
/// let client = options.connect(servers).await?;
/// # let _ = client; Ok(())
/// # }
/// ```
pub fn servers_and_options(
    url: &str,
    options: ConnectOptions,
) -> Result<(Vec<ServerAddr>, ConnectOptions)> {
    credentials_into_options(parse_urls(url.split(','))?, options)
}

/// Parses server URLs with async-nats' own parser (`host:port` alone means
/// `nats://host:port`); empty entries are skipped. A URL it refuses is not
/// repeated in the error (it may hold a password).
fn parse_urls<'a>(urls: impl Iterator<Item = &'a str>) -> Result<Vec<ServerAddr>> {
    let addrs = urls
        .map(str::trim)
        .enumerate()
        .filter(|(_, u)| !u.is_empty())
        .map(|(index, u)| {
            u.parse::<ServerAddr>()
                .map_err(|source| Error::InvalidUrl { index, source })
        })
        .collect::<Result<Vec<_>>>()?;
    if addrs.is_empty() {
        return Err(Error::NoServer);
    }
    Ok(addrs)
}

/// Moves the credentials of `addrs` (the first address that has any) into
/// `options`, returning the addresses without credentials.
fn credentials_into_options(
    addrs: Vec<ServerAddr>,
    mut options: ConnectOptions,
) -> Result<(Vec<ServerAddr>, ConnectOptions)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut creds = None;
    let mut plain = Vec::with_capacity(addrs.len());
    for (index, a) in addrs.into_iter().enumerate() {
        if let Some(user) = a.username() {
            creds.get_or_insert_with(|| (decode(user), a.password().map(decode)));
        }
        let mut url = a.into_inner();
        // Cannot fail on a URL that has a host (every ServerAddr has one).
        let _ = url.set_username("");
        let _ = url.set_password(None);
        plain
            .push(ServerAddr::from_url(url).map_err(|source| Error::InvalidUrl { index, source })?);
    }
    if let Some((user, pass)) = creds {
        options = match pass {
            Some(pass) => options.user_and_password(user, pass),
            None => options.token(user),
        };
    }
    Ok((plain, options))
}

/// `options` with an event callback that counts async-nats' own drops
/// (a subscription whose buffer in the client was full) in `drops`.
fn count_library_drops(options: ConnectOptions, drops: Arc<Drops>) -> ConnectOptions {
    options.event_callback(move |event| {
        if let async_nats::Event::SlowConsumer(sid) = event {
            drops.record(
                DropReason::Broker,
                &format!("(nats subscription {sid})"),
                &"async-nats subscription buffer full",
            );
        }
        std::future::ready(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_go_into_the_options_not_the_addresses() {
        let addrs = parse_urls("nats://u:p%40ss@h:1, tls://h2:2".split(',')).unwrap();
        let (plain, _) = credentials_into_options(addrs, ConnectOptions::new()).unwrap();
        let shown: Vec<_> = plain.iter().map(ServerAddr::as_url_str).collect();
        assert_eq!(shown, ["nats://h:1", "tls://h2:2"]);
    }

    #[test]
    fn refused_urls_are_not_repeated() {
        for bad in [
            "u:secret@h:99999",
            "nats://u:secret@h:x",
            "http://u:secret@h",
        ] {
            let e = parse_urls(std::iter::once(bad)).unwrap_err();
            assert!(!e.to_string().contains("secret"), "{e}");
            assert_eq!(e.code(), psrpc::ErrorCode::InvalidArgument);
        }
        assert!(matches!(parse_urls(" , ".split(',')), Err(Error::NoServer)));
    }
}
