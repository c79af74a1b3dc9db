//! The local SMTP sink: accepts every message and writes it to a directory as an `.eml` file
//! (`ls .run/mail` after `scripts/up`), so a developer can read what fans would receive. Tests
//! run it in-process on an ephemeral port.
//!
//! The SMTP protocol itself (command parsing, the state machine, dot-unstuffing) is the `mailin`
//! crate's; this module only does the I/O on tokio, so the sink stops cleanly on shutdown. It
//! never relays anything. Optionally (`SMTP_SINK_REJECT_DOMAIN`) it refuses recipients of one
//! domain with `550`, to see how the notifier handles bounces.
//!
//! A file is written under a temporary name and renamed once complete, so a reader of the
//! directory never sees half a message; it starts with `Return-Path` and one `Delivered-To` per
//! recipient (the SMTP envelope), then the message as received.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::config::{ConfigError, env_or, env_string};
use mailin::{Action, Handler, Response, SessionBuilder, response};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

/// Default listen address (DESIGN.md "Processes").
pub const DEFAULT_LISTEN: &str = "127.0.0.1:2525";
/// Default directory of the stored messages.
pub const DEFAULT_DIR: &str = ".run/mail";
/// Largest message accepted (SMTP `552` beyond).
pub const MAX_MESSAGE_BYTES: usize = 25 * 1024 * 1024;
/// Longest command or data line read (RFC 5321 allows 1000; generous for sloppy clients).
const MAX_LINE_BYTES: u64 = 64 * 1024;
/// A silent client is dropped after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long open sessions may take to finish once shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of the sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// `SMTP_SINK_LISTEN`.
    pub listen: SocketAddr,
    /// `SMTP_SINK_DIR`: created if missing.
    pub dir: PathBuf,
    /// `SMTP_SINK_REJECT_DOMAIN`: recipients `@<domain>` are refused with `550` (unset: none).
    pub reject_domain: Option<String>,
}

impl SinkConfig {
    /// Reads the settings from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let reject = env_string("SMTP_SINK_REJECT_DOMAIN", "");
        Ok(Self {
            listen: env_or("SMTP_SINK_LISTEN", DEFAULT_LISTEN.parse().expect("a valid address"))?,
            dir: PathBuf::from(env_string("SMTP_SINK_DIR", DEFAULT_DIR)),
            reject_domain: (!reject.trim().is_empty()).then(|| reject.trim().to_ascii_lowercase()),
        })
    }
}

/// A message received, with its envelope.
#[derive(Debug, Clone)]
struct Received {
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

/// The `mailin` handler of one connection: collects messages for the I/O loop to store.
struct Collector {
    reject_domain: Option<String>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    too_big: bool,
    done: Arc<Mutex<Vec<Received>>>,
}

impl Handler for Collector {
    fn rcpt(&mut self, to: &str) -> Response {
        let refused = self
            .reject_domain
            .as_deref()
            .is_some_and(|domain| to.to_ascii_lowercase().ends_with(&format!("@{domain}")));
        if refused { response::NO_MAILBOX } else { response::OK }
    }

    fn data_start(&mut self, _domain: &str, from: &str, _is8bit: bool, to: &[String]) -> Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        self.too_big = false;
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.data.len() + buf.len() > MAX_MESSAGE_BYTES {
            self.too_big = true;
        } else {
            self.data.extend_from_slice(buf);
        }
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        if self.too_big {
            self.data.clear();
            return response::NO_STORAGE;
        }
        let message = Received {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: std::mem::take(&mut self.data),
        };
        self.done
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(message);
        response::OK
    }
}

/// A bound sink.
pub struct SmtpSink {
    listener: TcpListener,
    config: SinkConfig,
}

impl SmtpSink {
    /// Binds the listen address and creates the directory.
    pub async fn bind(config: SinkConfig) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&config.dir).await?;
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self { listener, config })
    }

    /// The address it listens on (tests bind port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`, then gives open sessions a few seconds to finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let Self { listener, config } = self;
        tracing::info!(listen = %listener.local_addr()?, dir = %config.dir.display(), "SMTP sink accepting mail");
        let config = Arc::new(config);
        let mut sessions = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let config = Arc::clone(&config);
                        sessions.spawn(async move {
                            if let Err(err) = session(stream, peer.ip(), &config).await {
                                tracing::debug!(%peer, error = %err, "SMTP session ended with an error");
                            }
                        });
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %err, "cannot accept an SMTP connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(listener);
        let drained =
            tokio::time::timeout(DRAIN_TIMEOUT, async { while sessions.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            sessions.abort_all();
        }
        tracing::info!("SMTP sink stopped");
        Ok(())
    }
}

async fn session(stream: TcpStream, peer: IpAddr, config: &SinkConfig) -> std::io::Result<()> {
    let done = Arc::new(Mutex::new(Vec::new()));
    let collector = Collector {
        reject_domain: config.reject_domain.clone(),
        from: String::new(),
        to: Vec::new(),
        data: Vec::new(),
        too_big: false,
        done: Arc::clone(&done),
    };
    let mut session = SessionBuilder::new("floodgate-smtp-sink").build(peer, collector);
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    writer.write_all(&session.greeting().buffer()?).await?;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        let read = tokio::time::timeout(
            IDLE_TIMEOUT,
            (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client idle"))??;
        if read == 0 {
            return Ok(());
        }
        let mut reply = session.process(&line);
        let received: Vec<Received> =
            std::mem::take(&mut *done.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for message in received {
            // Only a stored message is acknowledged with 250.
            if let Err(err) = store(&config.dir, &message).await {
                tracing::error!(error = %err, "cannot store a message");
                reply = response::INTERNAL_ERROR;
            } else {
                tracing::info!(from = %message.from, to = ?message.to, bytes = message.data.len(), "message stored");
            }
        }
        match reply.action {
            Action::Reply => writer.write_all(&reply.buffer()?).await?,
            Action::Close | Action::UpgradeTls => {
                // STARTTLS is never offered, so an upgrade request only closes.
                writer.write_all(&reply.buffer()?).await?;
                return Ok(());
            }
            Action::NoReply => {}
        }
    }
}

/// Writes one message as `<unix nanos>-<uuid>.eml`, atomically.
async fn store(dir: &std::path::Path, message: &Received) -> std::io::Result<PathBuf> {
    let mut file = format!("Return-Path: <{}>\r\n", message.from).into_bytes();
    for to in &message.to {
        file.extend_from_slice(format!("Delivered-To: {to}\r\n").as_bytes());
    }
    file.extend_from_slice(&message.data);
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let name = format!("{stamp}-{}.eml", uuid::Uuid::now_v7().simple());
    let temporary = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&temporary, &file).await?;
    let path = dir.join(name);
    tokio::fs::rename(&temporary, &path).await?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn converse(stream: &mut BufReader<TcpStream>, send: &str) -> String {
        if !send.is_empty() {
            stream.get_mut().write_all(send.as_bytes()).await.unwrap();
        }
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            reply.push_str(&line);
            // Multi-line replies continue with "250-"; the last line has a space.
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return reply;
            }
        }
    }

    #[tokio::test]
    async fn a_message_is_stored_unstuffed_and_a_rejected_domain_gets_550() {
        let dir = std::env::temp_dir().join(format!("sink-test-{}", uuid::Uuid::now_v7().simple()));
        let sink = SmtpSink::bind(SinkConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            dir: dir.clone(),
            reject_domain: Some("bounce.test".into()),
        })
        .await
        .unwrap();
        let addr = sink.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(sink.run_until_stopped(shutdown.clone()));
        let mut client = BufReader::new(TcpStream::connect(addr).await.unwrap());
        assert!(converse(&mut client, "").await.starts_with("220"));
        assert!(converse(&mut client, "EHLO test\r\n").await.starts_with("250"));
        assert!(
            converse(&mut client, "MAIL FROM:<a@x.test>\r\n")
                .await
                .starts_with("250")
        );
        assert!(
            converse(&mut client, "RCPT TO:<nobody@bounce.test>\r\n")
                .await
                .starts_with("550")
        );
        assert!(
            converse(&mut client, "RCPT TO:<fan@x.test>\r\n")
                .await
                .starts_with("250")
        );
        assert!(converse(&mut client, "DATA\r\n").await.starts_with("354"));
        let reply = converse(&mut client, "Subject: hi\r\n\r\n..dotted line\r\nbody\r\n.\r\n").await;
        assert!(reply.starts_with("250"), "{reply}");
        assert!(converse(&mut client, "QUIT\r\n").await.starts_with("221"));
        let mut files = std::fs::read_dir(&dir).unwrap();
        let file = files.next().unwrap().unwrap().path();
        assert!(files.next().is_none(), "one message, one file, no temporary left");
        assert_eq!(file.extension().unwrap(), "eml");
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text,
            "Return-Path: <a@x.test>\r\nDelivered-To: fan@x.test\r\nSubject: hi\r\n\r\n.dotted line\r\nbody\r\n"
        );
        shutdown.cancel();
        server.await.unwrap().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
